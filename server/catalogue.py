"""The items one model version serves: the exported catalogue plus the changes made while serving.

A snapshot is immutable and swapped by reference, so a request that took it sees one consistent
catalogue from its first id lookup to its search, without a lock. The exported part (FAISS index,
ids, vectors, titles) is never copied or modified: items added while serving live in a small exact
"delta" beside it, and deleted or replaced items are hidden rows. So an update costs memory
and time in proportion to the items changed since the export, not to the catalogue, and it works
the same over every index type (HNSW cannot remove vectors; a hidden row needs no removal).

Rows: 0..n-1 are the exported items, n..n+m-1 the delta; a row is only meaningful within the
snapshot it came from. A replaced item gets a new delta row and its old row is hidden (superseded).
Deleted items are never recommended, but stay valid in histories (a user's past still counts).

Why the delta is a list of segments and not one index: rebuilding one exact index over every delta
item at each change made a change cost in proportion to every item added since the export. A change adds a small segment; segments of
similar size are merged (a binary counter), so each delta item is re-indexed O(log m) times in all
and a search visits O(log m) segments. Segments are immutable, so older snapshots keep searching theirs.

Why hidden rows are a boolean mask and the search depth scales with the live fraction: asking the
index for k + every hidden row made each query's cost grow with every deletion ever made (`llmrec bench
journal` measures both searches after 30k deletions: benchmarks/results/bench_journal.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from repository.journal import ItemState
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
class Segment:
    """Delta rows start..start+len(vectors)-1 under one exact index."""

    start: int
    vectors: np.ndarray
    index: ItemIndex

    @property
    def size(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True)
class Catalogue:
    base: ExportedItems
    delta_ids: list[str] = field(default_factory=list)  # delta position -> id (superseded positions included)
    delta_rows: dict[str, int] = field(default_factory=dict)  # id -> its current position in the delta
    delta_titles: list[str] = field(default_factory=list)
    segments: tuple[Segment, ...] = ()
    mask: np.ndarray | None = None  # bool [n + m]: rows never returned (deleted, or superseded); None = none
    deleted: frozenset[str] = frozenset()
    hidden_count: int = 0  # rows set in `mask`, counted once per snapshot (every search reads it)

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
        return len(self.base.ids) + len(self.delta_ids) - self.hidden_count

    def row(self, item_id: str) -> int | None:
        """The current row of an item (deleted items included: they stay valid in histories)."""
        d = self.delta_rows.get(item_id)
        if d is not None:
            return len(self.base.ids) + d
        return self.base.rows.get(item_id)

    def current_rows(self, rows: Iterable[int]) -> list[int]:
        """Exported rows (a known user's seen items) -> the rows their items have now: an item whose text
        was replaced moves to a delta row, and excluding only its old row would recommend it again."""
        rows = [int(r) for r in rows]
        if not self.delta_rows:
            return rows
        n = len(self.base.ids)
        return [n + self.delta_rows[x] if r < n and (x := self.base.ids[r]) in self.delta_rows else r for r in rows]

    def item_id(self, row: int) -> str:
        n = len(self.base.ids)
        return self.base.ids[row] if row < n else self.delta_ids[row - n]

    def title(self, row: int) -> str:
        n = len(self.base.ids)
        return self.base.titles[row] if row < n else self.delta_titles[row - n]

    def hidden(self, row: int) -> bool:
        return self.mask is not None and bool(self.mask[row])

    def _delta_vector(self, pos: int) -> np.ndarray:
        starts = [s.start for s in self.segments]
        seg = self.segments[int(np.searchsorted(starts, pos, side="right")) - 1]
        return seg.vectors[pos - seg.start]

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        n = len(self.base.ids)
        if all(r < n for r in rows):
            return self.base.vectors[np.asarray(rows, dtype=np.int64)]
        return np.stack([self.base.vectors[r] if r < n else self._delta_vector(r - n) for r in rows])

    # ---- search ----
    def search(self, query: np.ndarray, k: int, excluded: set[int]) -> list[tuple[int, float]]:
        """Top-k (row, score) over live items not in `excluded`, best first, ties by row."""
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        n = len(self.base.ids)
        total = n + len(self.delta_ids)
        live = max(1, total - self.hidden_count)
        ex = np.fromiter(excluded, dtype=np.int64, count=len(excluded)) if excluded else None
        hits = _search_filtered(self.base.index, q, k, n, 0, ex, self.mask, total / live)
        for seg in self.segments:
            hits += _search_filtered(seg.index, q, k, seg.size, n + seg.start, ex, self.mask, total / live)
        if self.segments:
            hits.sort(key=lambda h: (-h[1], h[0]))
        return hits[:k]

    # ---- changes: each returns a new snapshot ----
    def changed(self, upserts: Sequence[tuple[str, np.ndarray, str]] = (), deletes: Iterable[str] = ()
                ) -> tuple[Catalogue, int, int]:
        """(new snapshot, added, replaced) after upserting (item_id, vector, title) and deleting ids.

        An upsert of a deleted item brings it back; a delete of an unknown id is a no-op.
        """
        states = {item_id: ItemState(item_id, 0, False, "", title, 1) for item_id, _, title in upserts}
        for x in deletes:
            prev = states.get(x)
            states[x] = ItemState(x, 0, True, "", prev.title if prev else "", prev.upsert_seq if prev else 0)
        cat, added, replaced, _ = self.applied(list(states.values()), {item_id: vec for item_id, vec, _ in upserts})
        return cat, added, replaced

    def applied(self, states: Sequence[ItemState], vectors: Mapping[str, np.ndarray]
                ) -> tuple[Catalogue, int, int, int]:
        """(new snapshot, added, replaced, deleted) with each item brought to its journal state: an item with
        a vector in `vectors` gets it (a new delta row), then it is hidden if its state is deleted and shown
        otherwise. Applying the same states again changes nothing visible, whatever was applied before."""
        n = len(self.base.ids)
        ids, rows, titles = list(self.delta_ids), dict(self.delta_rows), list(self.delta_titles)
        deleted = set(self.deleted)
        hide: list[int] = []
        show: list[int] = []
        new_vecs: list[np.ndarray] = []
        added = replaced = 0
        for st in states:
            vec = vectors.get(st.item_id)
            if vec is not None:
                vec = np.asarray(vec, dtype=np.float32).reshape(-1)
                if vec.shape != (self.dim,):
                    raise ValueError(f"item {st.item_id!r}: vector of shape {vec.shape}, expected ({self.dim},)")
                pos = rows.get(st.item_id)
                base_row = self.base.rows.get(st.item_id)
                if pos is not None:
                    replaced += 1
                    hide.append(n + pos)  # superseded by the new delta row
                    title = st.title or titles[pos]
                elif base_row is not None:
                    replaced += 1
                    hide.append(base_row)
                    title = st.title or self.base.titles[base_row]
                else:
                    added += 1
                    title = st.title
                rows[st.item_id] = len(ids)
                ids.append(st.item_id)
                titles.append(title)
                new_vecs.append(vec)
            pos = rows.get(st.item_id)
            row = n + pos if pos is not None else self.base.rows.get(st.item_id)
            if row is None:
                continue  # a delete of an item this version never had
            if st.deleted:
                hide.append(row)
                deleted.add(st.item_id)
            elif st.item_id in deleted:
                show.append(row)
                deleted.discard(st.item_id)
        segments = self.segments
        if new_vecs:
            segments = _merged((*segments, _segment(len(self.delta_ids), np.stack(new_vecs), self.base.exact)),
                               self.base.exact)
        mask = self.mask
        if hide or show or len(ids) != len(self.delta_ids):
            mask = np.zeros(n + len(ids), dtype=bool)
            if self.mask is not None:
                mask[:len(self.mask)] = self.mask
            mask[hide] = True
            mask[show] = False
        cat = Catalogue(self.base, ids, rows, titles, segments, mask, frozenset(deleted),
                        0 if mask is None else int(mask.sum()))
        return cat, added, replaced, len(cat.deleted - self.deleted)


def _segment(start: int, vectors: np.ndarray, exact: Callable[[np.ndarray], ItemIndex]) -> Segment:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return Segment(start, vectors, exact(vectors))


def _merged(segments: tuple[Segment, ...], exact: Callable[[np.ndarray], ItemIndex]) -> tuple[Segment, ...]:
    """Merges the newest segments while the older one is at most twice the newer (a binary counter)."""
    segs = list(segments)
    while len(segs) >= 2 and segs[-2].size <= 2 * segs[-1].size:
        b, a = segs.pop(), segs.pop()
        segs.append(_segment(a.start, np.concatenate([a.vectors, b.vectors]), exact))
    return tuple(segs)


def _search_filtered(index: ItemIndex, q: np.ndarray, k: int, size: int, offset: int, excluded: np.ndarray | None,
                     mask: np.ndarray | None, spread: float) -> list[tuple[int, float]]:
    """Searches deeper until k rows survive the filters or the index is exhausted. The first depth is
    k + excluded, scaled by total/live rows (`spread`), so hidden rows cost in proportion to the share
    they take of the catalogue, not to their number."""
    if size == 0:
        return []
    n_ex = 0 if excluded is None else len(excluded)
    kk = min(size, math.ceil((k + n_ex) * spread) + (8 if spread > 1 else 0))
    while True:
        scores, ids = index.search(q, kk)
        rows = ids[0].astype(np.int64)
        keep = rows >= 0
        rows += offset
        if mask is not None:
            keep[keep] &= ~mask[rows[keep]]
        # Filtered with numpy, not per row in Python: thousands of excluded ids per request made this loop the
        # largest cost of a big RecommendBatch, holding the GIL that every other request needs.
        if excluded is not None:
            keep &= ~np.isin(rows, excluded)
        out = list(zip(rows[keep][:k].tolist(), scores[0][keep][:k].tolist(), strict=True))
        if len(out) >= k or kk >= size:
            return out
        kk = min(2 * kk, size)
