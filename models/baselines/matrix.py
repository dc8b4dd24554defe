"""Sparse user x item matrices from a Split, the input every matrix-based baseline needs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def rows_matrix(rows: Sequence[np.ndarray], num_items: int) -> sp.csr_matrix:
    """Binary CSR with one row per entry of `rows` (repeats collapse to 1)."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(np.unique(r)) for r in rows])
    indices = (
        np.concatenate([np.unique(r) for r in rows]).astype(np.int32) if len(rows) else np.zeros(0, np.int32)
    )
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), num_items))


def item_counts(rows: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """How many rows (users) hold each item."""
    return np.asarray(rows_matrix(rows, num_items).sum(axis=0), dtype=np.float64).ravel()
