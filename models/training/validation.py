"""Validation over all ranks: each rank scores its share of the users, the sums are all-reduced,
so every rank sees the same metrics and takes the same early-stopping decision."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from models.data.splits import Split
from models.metrics import evaluate
from models.training.distributed import Placement


def evaluate_sharded(scorer: Callable[[np.ndarray, list[np.ndarray]], np.ndarray], split: Split, part: str,
                     metrics: Sequence[str], users: np.ndarray, place: Placement,
                     batch_size: int = 64) -> dict[str, float]:
    mine = users[place.rank :: place.world]
    res = evaluate(scorer, split, part, metrics, batch_size=batch_size, users=mine) if len(mine) else \
        {m: 0.0 for m in metrics} | {"users": 0.0}
    sums = place.all_sum([res[m] * res["users"] for m in metrics] + [res["users"]])
    n = max(sums[-1], 1.0)
    return {m: sums[i] / n for i, m in enumerate(metrics)}
