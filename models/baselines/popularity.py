"""Most-popular: every user gets the items most users interacted with in train.

The floor every personalised model has to clear; it also shows how much of a metric comes
from popularity alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.baselines.matrix import item_counts
from models.data.splits import Split


@dataclass
class PopularityConfig:
    """No hyper-parameters; kept so every baseline has a config in the report."""


class MostPopular:
    def __init__(self, cfg: PopularityConfig | None = None) -> None:
        self.cfg = cfg or PopularityConfig()
        self.counts: np.ndarray | None = None

    def fit(self, split: Split) -> MostPopular:
        """Counts users per item over `split.train` only (valid/test never leak in)."""
        self.counts = item_counts(split.train, split.num_items)
        return self

    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("MostPopular.fit(split) must run before scoring")
        return np.broadcast_to(self.counts.astype(np.float32), (len(users), len(self.counts))).copy()
