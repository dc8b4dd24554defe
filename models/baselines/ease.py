"""EASE (Steck 2019): a closed-form item-item linear model, B = I - P / diag(P), P = (X^T X + l2 I)^-1.

Strong on small catalogues; its cost is one dense items x items inverse, items^3 work and items^2
memory, which is what stops it at scale: at 20k items one float32 copy is 1.6 GB. The fit therefore
works in place (the Gram matrix becomes its Cholesky factor, then its inverse, then B, in one buffer;
half the work of a general inverse), in float32, the precision B is kept and scored in (half the time
and memory of float64; tests/test_baselines_scale.py checks it against a float64 inverse), and a
catalogue whose fit would not fit in the memory available
is refused before any work, with the figure (models.data.formats.memory). Scores are history @ B,
so the history given at test time (train + valid) is used as input, like the LLM prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from common import logs
from models.baselines.matrix import rows_matrix
from models.data.formats.memory import require
from models.data.splits import Split

log = logs.get(__name__)

# Peak memory in float32 items x items copies: a fit peaks under 2 (its one buffer, plus a block of the
# sparse Gram it is filled from; tracemalloc, checked by tests/test_baselines_scale.py), and a search keeps
# the best point's weights (1) while it fits the next one.
EASE_COPIES = 3.0


def ease_bytes(num_items: int) -> float:
    """Memory an EASE fit over `num_items` items needs at its peak."""
    return float(num_items) ** 2 * 4 * EASE_COPIES


def check_memory(num_items: int, available: int | None = None) -> None:
    require(ease_bytes(num_items), f"EASE over {num_items} items ({num_items}^2 x 4 bytes x {EASE_COPIES:g} copies)",
            "leave it out (--models most_popular bpr als) or filter rare items (--data.min-item-interactions)",
            available)


@dataclass
class EASEConfig:
    l2: float = 500.0


@dataclass
class EASEGrid:
    """Values tried on the validation part; an empty tuple keeps the config's value."""

    l2: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)


def _gram(x: sp.csr_matrix, block_entries: int = 2**20) -> np.ndarray:
    """X^T X as a dense float32 matrix, filled a block of rows at a time: the whole sparse product would hold
    8 bytes per co-occurring pair (up to two more items x items copies) on top of the dense one.
    float32 counts are exact below 2^24 users."""
    n = x.shape[1]
    xt = x.T.tocsr()
    gram = np.empty((n, n), dtype=np.float32)
    step = max(1, block_entries // max(n, 1))
    for s in range(0, n, step):
        (xt[s : s + step] @ x).toarray(out=gram[s : s + step])
    return gram


def _inverse_in_place(gram: np.ndarray) -> np.ndarray:
    """(gram)^-1 of a symmetric positive-definite float32 matrix, written over `gram` (Cholesky: potrf + potri)."""
    a = gram.T  # Fortran-ordered view of the same (symmetric) buffer: LAPACK works on it in place
    c, info = lapack.spotrf(a, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise ValueError(f"EASE: X^T X + l2 I is not positive definite in float32 (LAPACK potrf info {info}); raise l2")
    p, info = lapack.spotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: inverse failed (LAPACK potri info {info})")
    if not np.shares_memory(p, gram):
        gram[...] = p.T
    # potri fills one triangle (the upper one of the Fortran view: the lower one of `gram`); mirror it
    n, step = len(gram), 256  # small blocks: the triangle indices of a block are 16 bytes per entry
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
        gram = _gram(rows_matrix(split.train, split.num_items))
        gram[np.diag_indices_from(gram)] += self.cfg.l2
        with threadpool_limits(limits=1, user_api="blas"):
            p = _inverse_in_place(gram)
        diag = np.diag(p).copy()
        np.divide(p, -diag[None, :], out=p)  # B_ij = -P_ij / P_jj
        p[np.diag_indices_from(p)] = 0.0
        self.weights = p
        return self

    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("EASE.fit(split) must run before scoring")
        return np.asarray(rows_matrix(history, self.num_items) @ self.weights)
