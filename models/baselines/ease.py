"""EASE (Steck 2019): a closed-form item-item linear model, B = I - P / diag(P), P = (X^T X + l2 I)^-1.

Strong on small catalogues and cheap here (one items x items inverse). Scores are history @ B,
so the history given at test time (train + valid) is used as input, like the LLM prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from models.baselines.matrix import rows_matrix
from models.data.splits import Split


@dataclass
class EASEConfig:
    l2: float = 500.0


@dataclass
class EASEGrid:
    """Values tried on the validation part; an empty tuple keeps the config's value."""

    l2: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)


class EASE:
    def __init__(self, cfg: EASEConfig | None = None) -> None:
        self.cfg = cfg or EASEConfig()
        self.weights: np.ndarray | None = None
        self.num_items = 0

    def fit(self, split: Split) -> EASE:
        self.num_items = split.num_items
        x = rows_matrix(split.train, split.num_items)
        gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
        gram[np.diag_indices_from(gram)] += self.cfg.l2
        with threadpool_limits(limits=1, user_api="blas"):
            p = np.linalg.inv(gram)
        b = -p / np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        self.weights = b.astype(np.float32)
        return self

    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("EASE.fit(split) must run before scoring")
        return np.asarray(rows_matrix(history, self.num_items) @ self.weights)
