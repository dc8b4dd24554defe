"""The items one model version serves: the exported catalogue plus the changes made while serving.

A snapshot is immutable and swapped by reference, so a request that took it sees one consistent
catalogue from its first id lookup to its search, without a lock. The exported part (FAISS index,
ids, vectors, titles) is never copied or modified: items added while serving live in a small exact
"delta" index beside it, and deleted or replaced items are hidden rows. So an update costs memory
and time in proportion to the items changed since the export, not to the catalogue, and it works
the same over every index type (HNSW cannot remove vectors; a hidden row needs no removal).

Rows: 0..n-1 are the exported items, n..n+m-1 the delta; a row is only meaningful within the
snapshot it came from (a delete shifts nothing, but a new snapshot may renumber the delta).
Deleted items are never recommended, but stay valid in histories (a user's past still counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.indexes import ItemIndex


@dataclass(frozen=True)
class ExportedItems:
    index: ItemIndex  # over `vectors`, id = row
    ids: list[str]
    rows: dict[str, int]
    vectors: np.ndarray  # float32 [n, dim]
    titles: list[str]
    exact: Callable[[np.ndarray], ItemIndex]  # the backend's exact index, for items added while serving


@dataclass(frozen=True)
class Catalogue:
    base: ExportedItems
    delta_ids: list[str] = field(default_factory=list)
    delta_rows: dict[str, int] = field(default_factory=dict)  # id -> position in the delta
    delta_vectors: np.ndarray | None = None
    delta_titles: list[str] = field(default_factory=list)
    delta_index: ItemIndex | None = None
    hidden: frozenset[int] = frozenset()  # rows never returned: deleted, or exported rows superseded
    deleted: frozenset[str] = frozenset()

    @classmethod
    def exported(cls, index: ItemIndex, ids: Sequence[str], vectors: np.ndarray, titles: Sequence[str],
                 exact: Callable[[np.ndarray], ItemIndex]) -> Catalogue:
        ids = list(ids)
        return cls(ExportedItems(index, ids, {x: i for i, x in enumerate(ids)}, vectors, list(titles), exact))

    # ---- lookups ----
    @property
    def dim(self) -> int:
        return int(self.base.vectors.shape[1])

    @property
    def num_items(self) -> int:
        """Items that can be recommended now."""
        return len(self.base.ids) + len(self.delta_ids) - len(self.hidden)

    def row(self, item_id: str) -> int | None:
        """The current row of an item (deleted items included: they stay valid in histories)."""
        d = self.delta_rows.get(item_id)
        if d is not None:
            return len(self.base.ids) + d
        return self.base.rows.get(item_id)

    def item_id(self, row: int) -> str:
        n = len(self.base.ids)
        return self.base.ids[row] if row < n else self.delta_ids[row - n]

    def title(self, row: int) -> str:
        n = len(self.base.ids)
        return self.base.titles[row] if row < n else self.delta_titles[row - n]

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        n = len(self.base.ids)
        if all(r < n for r in rows):
            return self.base.vectors[np.asarray(rows, dtype=np.int64)]
        assert self.delta_vectors is not None
        return np.stack([self.base.vectors[r] if r < n else self.delta_vectors[r - n] for r in rows])

    # ---- search ----
    def search(self, query: np.ndarray, k: int, excluded: set[int]) -> list[tuple[int, float]]:
        """Top-k (row, score) over live items not in `excluded`, best first, ties by row."""
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        n = len(self.base.ids)
        hits = _search_filtered(self.base.index, q, k, n, 0, excluded, self.hidden)
        if self.delta_ids:
            hits += _search_filtered(self.delta_index, q, k, len(self.delta_ids), n, excluded, self.hidden)
            hits.sort(key=lambda h: (-h[1], h[0]))
        return hits[:k]

    # ---- changes: each returns a new snapshot ----
    def changed(self, upserts: Sequence[tuple[str, np.ndarray, str]] = (), deletes: Iterable[str] = ()
                ) -> tuple[Catalogue, int, int]:
        """(new snapshot, added, replaced) after upserting (item_id, vector, title) and deleting ids.

        An upsert of a deleted item brings it back; a delete of an unknown id is a no-op.
        """
        n = len(self.base.ids)
        ids, rows, titles = list(self.delta_ids), dict(self.delta_rows), list(self.delta_titles)
        vecs = [] if self.delta_vectors is None else list(self.delta_vectors)
        hidden, deleted = set(self.hidden), set(self.deleted)
        added = replaced = 0
        for item_id, vec, title in upserts:
            vec = np.asarray(vec, dtype=np.float32).reshape(-1)
            if vec.shape != (self.dim,):
                raise ValueError(f"item {item_id!r}: vector of shape {vec.shape}, expected ({self.dim},)")
            pos = rows.get(item_id)
            base_row = self.base.rows.get(item_id)
            if pos is not None:
                replaced += 1
                vecs[pos] = vec
                titles[pos] = title or titles[pos]
                hidden.discard(n + pos)
            else:
                if base_row is not None:
                    replaced += 1
                    hidden.add(base_row)  # superseded by the delta row
                    title = title or self.base.titles[base_row]
                else:
                    added += 1
                rows[item_id] = len(ids)
                ids.append(item_id)
                titles.append(title)
                vecs.append(vec)
            deleted.discard(item_id)
        for item_id in deletes:
            row = rows[item_id] + n if item_id in rows else self.base.rows.get(item_id)
            if row is not None:
                hidden.add(row)
                deleted.add(item_id)
        delta_vectors, delta_index = None, None
        if ids:
            delta_vectors = np.ascontiguousarray(np.stack(vecs), dtype=np.float32)
            delta_index = self.base.exact(delta_vectors)
        return Catalogue(self.base, ids, rows, delta_vectors, titles, delta_index, frozenset(hidden),
                         frozenset(deleted)), added, replaced


def _search_filtered(index: ItemIndex, q: np.ndarray, k: int, size: int, offset: int, excluded: set[int],
                     hidden: frozenset[int]) -> list[tuple[int, float]]:
    """Searches deeper until k rows survive the filters or the index is exhausted."""
    if size == 0:
        return []
    kk = min(k + len(excluded) + len(hidden), size)
    # Filtered with numpy, not per row in Python: thousands of excluded ids per request made this loop the
    # largest cost of a big RecommendBatch, holding the GIL that every other request needs.
    banned = np.fromiter(excluded | hidden, dtype=np.int64, count=len(excluded | hidden)) if excluded or hidden \
        else None
    while True:
        scores, ids = index.search(q, kk)
        rows = ids[0].astype(np.int64)
        keep = rows >= 0
        rows += offset
        if banned is not None:
            keep &= ~np.isin(rows, banned)
        out = list(zip(rows[keep][:k].tolist(), scores[0][keep][:k].tolist(), strict=True))
        if len(out) >= k or kk >= size:
            return out
        kk = min(2 * kk, size)
