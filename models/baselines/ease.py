"""EASE (Steck 2019): a closed-form item-item linear model, B = I - P / diag(P), P = (X^T X + l2 I)^-1.

Strong on small catalogues; its cost is one dense items x items inverse, items^3 work and items^2
memory, which is what stops it at scale: at 20k items one float64 copy is 3.2 GB. The fit therefore
works in place (the Gram matrix becomes its Cholesky factor, then its inverse, then B, in one buffer;
half the work of a general inverse), and a catalogue whose fit would not fit in the memory available
is refused before any work, with the figure (models.data.formats.memory). Scores are history @ B,
so the history given at test time (train + valid) is used as input, like the LLM prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from common import logs
from models.baselines.matrix import rows_matrix
from models.data.formats.memory import require
from models.data.splits import Split

log = logs.get(__name__)

# Peak memory in float64 items x items copies: a fit peaks at about 2.1 (the float64 buffer, the
# float32 weights made from it and the sparse Gram it is filled from; tracemalloc, checked by
# tests/test_baselines_scale.py; the general inverse this replaces peaked at 4.0), and a search keeps
# the best point's float32 weights (0.5) while it fits the next one.
EASE_COPIES = 3.0


def ease_bytes(num_items: int) -> float:
    """Memory an EASE fit over `num_items` items needs at its peak."""
    return float(num_items) ** 2 * 8 * EASE_COPIES


def check_memory(num_items: int, available: int | None = None) -> None:
    require(ease_bytes(num_items), f"EASE over {num_items} items ({num_items}^2 x 8 bytes x {EASE_COPIES:g} copies)",
            "leave it out (--models most_popular bpr als) or filter rare items (--data.min-item-interactions)",
            available)


@dataclass
class EASEConfig:
    l2: float = 500.0


@dataclass
class EASEGrid:
    """Values tried on the validation part; an empty tuple keeps the config's value."""

    l2: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)


def _inverse_in_place(gram: np.ndarray) -> np.ndarray:
    """(gram)^-1 of a symmetric positive-definite matrix, written over `gram` (Cholesky: potrf + potri)."""
    a = gram.T  # Fortran-ordered view of the same (symmetric) buffer: LAPACK works on it in place
    c, info = lapack.dpotrf(a, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise ValueError(f"EASE: X^T X + l2 I is not positive definite (LAPACK potrf info {info}); raise l2")
    p, info = lapack.dpotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: inverse failed (LAPACK potri info {info})")
    if not np.shares_memory(p, gram):
        gram[...] = p.T
    # potri fills one triangle (the upper one of the Fortran view: the lower one of `gram`); mirror it
    n, step = len(gram), 1024
    for s in range(0, n, step):
        gram[s : s + step, s + step :] = gram[s + step :, s : s + step].T
        block = gram[s : s + step, s : s + step]
        block[np.triu_indices(len(block), 1)] = block.T[np.triu_indices(len(block), 1)]
    return gram


class EASE:
    def __init__(self, cfg: EASEConfig | None = None) -> None:
        self.cfg = cfg or EASEConfig()
        self.weights: np.ndarray | None = None
        self.num_items = 0

    def fit(self, split: Split) -> EASE:
        self.num_items = split.num_items
        check_memory(split.num_items)
        x = rows_matrix(split.train, split.num_items).astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.cfg.l2
        with threadpool_limits(limits=1, user_api="blas"):
            p = _inverse_in_place(gram)
        diag = np.diag(p).copy()
        np.divide(p, -diag[None, :], out=p)  # B_ij = -P_ij / P_jj
        p[np.diag_indices_from(p)] = 0.0
        self.weights = p.astype(np.float32)
        return self

    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("EASE.fit(split) must run before scoring")
        return np.asarray(rows_matrix(history, self.num_items) @ self.weights)
