"""The in-memory form every loader produces and every trainer reads.

Interactions are kept as parallel arrays of contiguous indices; the external string ids live
in two IdMaps that are saved with every checkpoint, so a served model answers in the ids the
user's own data uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class IdMap:
    """External string id <-> contiguous index (in first-seen order unless built sorted)."""

    ids: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {s: i for i, s in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            seen: set[str] = set()
            dup = next(s for s in self.ids if s in seen or seen.add(s))  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate id {dup!r} in IdMap")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, ext: str) -> bool:
        return ext in self._index

    def index(self, ext: str) -> int:
        try:
            return self._index[ext]
        except KeyError:
            raise KeyError(f"unknown id {ext!r}") from None

    def indices(self, exts: list[str]) -> np.ndarray:
        return np.fromiter((self.index(e) for e in exts), dtype=np.int64, count=len(exts))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, path: Path) -> IdMap:
        ids = json.loads(path.read_text())
        if not isinstance(ids, list) or not all(isinstance(s, str) for s in ids):
            raise ValueError(f"{path}: expected a JSON list of string ids")
        return cls(ids)


@dataclass
class InteractionData:
    """Implicit-feedback interactions plus the item text the text towers and prompts use.

    `item_text[j]` is the text that describes item j (for MovieLens: title, year, genres);
    `item_title[j]` a short display name. `review[k]`, when the source has reviews, is the
    text the user wrote with interaction k (CLLM4Rec's content LM trains on it).
    """

    name: str
    users: IdMap
    items: IdMap
    user: np.ndarray  # int64 [n] user index per interaction
    item: np.ndarray  # int64 [n] item index per interaction
    timestamp: np.ndarray | None = None  # float64 [n]; None when the source has no time
    item_text: list[str] = field(default_factory=list)
    item_title: list[str] = field(default_factory=list)
    review: list[str] | None = None
    # Items known by their text but with no (kept) interaction: nothing to learn from, but a text item
    # tower can encode them, so they join the served catalogue at export. item id -> (text, title).
    catalogue_only: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user)
        if len(self.item) != n or (self.timestamp is not None and len(self.timestamp) != n):
            raise ValueError("user, item and timestamp arrays must have the same length")
        if self.review is not None and len(self.review) != n:
            raise ValueError("review must have one entry per interaction")
        if not self.item_text:
            self.item_text = [""] * len(self.items)
        if not self.item_title:
            self.item_title = list(self.item_text)
        if len(self.item_text) != len(self.items) or len(self.item_title) != len(self.items):
            raise ValueError("item_text and item_title need one entry per item")

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_interactions(self) -> int:
        return len(self.user)

    def items_without_text(self) -> int:
        """Items whose text is only their id: the loaders' fallback when no item text was given."""
        return sum(text == ext for text, ext in zip(self.item_text, self.items.ids, strict=True))

    def order(self) -> np.ndarray:
        """Interaction order by (user, time); input order breaks ties, so it is deterministic."""
        if self.timestamp is None:
            return np.lexsort((np.arange(len(self.user)), self.user))
        return np.lexsort((np.arange(len(self.user)), self.timestamp, self.user))

    def sequences(self) -> list[np.ndarray]:
        """Per user index: item indices oldest first (input order when there is no time)."""
        order = self.order()
        users = self.user[order]
        items = self.item[order]
        bounds = np.searchsorted(users, np.arange(self.num_users + 1))
        return [items[bounds[u] : bounds[u + 1]] for u in range(self.num_users)]

    def summary(self) -> dict[str, int | str]:
        return {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
        }
