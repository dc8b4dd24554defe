"""Minimum-interaction filters (k-core style) applied after loading.

Dropping a sparse user can push an item under its minimum and vice versa, so the filter
repeats until nothing changes; the result is the largest subset where every user and every
item meets its minimum. Counts are of distinct (user, item) pairs: the splits de-duplicate
repeats, so a user who rated one item five times has one usable item, not five.
"""

from __future__ import annotations

import numpy as np

from common.errors import DataError
from models.data.dataset import IdMap, InteractionData


def _distinct_counts(index: np.ndarray, other: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    pairs = np.unique(np.stack([index[keep], other[keep]]), axis=1)
    return np.bincount(pairs[0], minlength=size)


def filter_min_interactions(data: InteractionData, min_user: int = 0, min_item: int = 0) -> InteractionData:
    """A new InteractionData where every user has >= min_user and every item >= min_item distinct
    partners; ids are re-indexed contiguously, keeping the original relative order."""
    keep = np.ones(data.num_interactions, dtype=bool)
    while True:
        user_counts = _distinct_counts(data.user, data.item, keep, data.num_users)
        item_counts = _distinct_counts(data.item, data.user, keep, data.num_items)
        new_keep = keep & (user_counts[data.user] >= min_user) & (item_counts[data.item] >= min_item)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    if not keep.any():
        raise DataError(
            f"{data.name}: no interactions left after requiring >= {min_user} per user and >= {min_item} per item"
        )
    users_kept = np.unique(data.user[keep])
    items_kept = np.unique(data.item[keep])
    user_remap = np.full(data.num_users, -1, dtype=np.int64)
    user_remap[users_kept] = np.arange(len(users_kept))
    item_remap = np.full(data.num_items, -1, dtype=np.int64)
    item_remap[items_kept] = np.arange(len(items_kept))
    rows = np.flatnonzero(keep)
    return InteractionData(
        name=data.name,
        users=IdMap([data.users.ids[u] for u in users_kept]),
        items=IdMap([data.items.ids[i] for i in items_kept]),
        user=user_remap[data.user[rows]],
        item=item_remap[data.item[rows]],
        timestamp=None if data.timestamp is None else data.timestamp[rows],
        item_text=[data.item_text[i] for i in items_kept],
        item_title=[data.item_title[i] for i in items_kept],
        review=None if data.review is None else [data.review[k] for k in rows],
        # items the filter left without interactions still have their text: still catalogue items
        catalogue_only={**data.catalogue_only, **{data.items.ids[i]: (data.item_text[i], data.item_title[i])
                                                  for i in np.setdiff1d(np.arange(data.num_items), items_kept)}},
    )
