"""Cold-start protocol: a seeded share of the items is held out of training with all of its interactions.

A held-out item never appears in a training sequence, a validation target or a history; it stays a
test target, so the test users whose last item is held out measure how well the model ranks an item
it has never trained on (scored through its text, as the server scores an item added by UpsertItems).
The other test users measure the usual, warm, next-item quality on the same model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from models.data.splits import Split


def held_out_of(config: dict[str, Any]) -> np.ndarray:
    """The held-out item rows a checkpoint's config records (`llmrec train tcf` writes them); empty: none."""
    return np.asarray((config.get("holdout") or {}).get("items", []), dtype=np.int64)


def held_out_items(split: Split, share: float, seed: int) -> np.ndarray:
    """Sorted item rows: round(share x the items that have interactions), drawn with `seed`."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share of items must be in [0, 1), got {share}")
    parts = [np.concatenate(p) for p in (split.train, split.valid, split.test) if len(p)]
    used = np.unique(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, dtype=np.int64)
    n = round(share * len(used))
    return np.sort(np.random.default_rng(seed).choice(used, size=n, replace=False)) if n else used[:0]


def hold_out(split: Split, held: np.ndarray) -> Split:
    """The split without `held` items in train and valid (a held-out validation target leaves its user
    without one); test targets are kept, whichever they are."""
    if not len(held):
        return split

    def drop(items: np.ndarray) -> np.ndarray:
        return items[~np.isin(items, held)]

    return replace(split, train=[drop(t) for t in split.train], valid=[drop(v) for v in split.valid])


def cold_targets(split: Split, held: np.ndarray) -> np.ndarray:
    """Mask over split.eval_users("test"): the test item is a held-out (new) item."""
    return np.array([bool(np.isin(split.test[u], held).any()) for u in split.eval_users("test")], dtype=bool)
