"""Validation over all ranks: each rank scores its share of the users, the sums are all-reduced,
so every rank sees the same metrics and takes the same early-stopping decision.

At 100k users, ranking every item for every validation user each epoch costs more than a tenth
of the epoch; choices made on validation (the epoch, a grid point) are made on a fixed, seeded
sample of the validation users instead (sample_users), the same users every time. The test part
is always scored on every user."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from models.data.splits import Split
from models.metrics import evaluate
from models.training.distributed import Placement


def sample_users(users: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`size` of `users` drawn once with `seed`, in their original order; all of them when size <= 0
    or when there are no more than `size` (on ML-100K's 943 users a 2000-user sample is everyone)."""
    users = np.asarray(users, dtype=np.int64)
    if size <= 0 or len(users) <= size:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=size, replace=False))


def evaluate_sharded(scorer: Callable[[np.ndarray, list[np.ndarray]], np.ndarray], split: Split, part: str,
                     metrics: Sequence[str], users: np.ndarray, place: Placement,
                     batch_size: int = 64) -> dict[str, float]:
    mine = users[place.rank :: place.world]
    res = evaluate(scorer, split, part, metrics, batch_size=batch_size, users=mine) if len(mine) else \
        {m: 0.0 for m in metrics} | {"users": 0.0}
    sums = place.all_sum([res[m] * res["users"] for m in metrics] + [res["users"]])
    n = max(sums[-1], 1.0)
    return {m: sums[i] / n for i, m in enumerate(metrics)}
