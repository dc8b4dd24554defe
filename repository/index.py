"""Reading and searching `items.faiss` as the manifest's `index` section describes it.

FAISS ids are item rows (0..num_items-1). Query-time parameters (nprobe, efSearch) are per-index
state in FAISS; the loader sets the manifest's values once, and `search` takes per-call overrides as
SearchParameters so that concurrent requests never mutate shared index state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from repository.manifest import IndexSection


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def load_index(path: Path, index_section: IndexSection | None = None, mmap: bool = False) -> faiss.Index:
    """Reads items.faiss and re-applies the query-time parameters recorded in the manifest."""
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    params = index_section.params if index_section is not None else {}
    ivf = ivf_part(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
    if isinstance(index, faiss.IndexHNSW) and "ef_search" in params:
        index.hnsw.efSearch = int(params["ef_search"])
    return index


def ivf_part(index: faiss.Index) -> Any:
    """The IVF layer of an index (itself, or under a pre-transform), or None: where nprobe lives."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) best first; rows are -1 where an approximate index found fewer than k.

    nprobe / ef_search apply to this call only (SearchParameters), so concurrent requests never
    mutate shared index state.
    """
    q = as_f32(queries)
    if q.ndim == 1:
        q = q[None, :]
    k = max(1, min(int(k), index.ntotal))
    sp = None
    if nprobe is not None and ivf_part(index) is not None:
        sp = faiss.SearchParametersIVF(nprobe=int(nprobe))
    elif ef_search is not None and isinstance(index, faiss.IndexHNSW):
        sp = faiss.SearchParametersHNSW(efSearch=int(ef_search))
    scores, rows = index.search(q, k, params=sp) if sp is not None else index.search(q, k)
    return scores, rows
