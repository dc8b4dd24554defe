"""FAISS inner-product indexes over item vectors: build, save and measure recall (loading and searching
an index as the manifest describes it is the format's part: repository/index.py). FAISS ids are item rows
(0..num_items-1) because items are added once, in row order, with sequential ids; an item added
later (TCF upsert) gets the next row, which matches the row appended to the id list.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from repository.index import as_f32 as _as_f32
from repository.manifest import INDEX_TYPES


@dataclass
class IndexParams:
    type: Literal["flat", "ivf", "hnsw", "ivfpq"] = "flat"
    nlist: int = 0  # IVF cells; 0 = sqrt(num_items), capped so each cell trains on >= 39 items
    nprobe: int = 16  # IVF cells visited per query
    hnsw_m: int = 32  # HNSW neighbours per node
    ef_search: int = 128  # HNSW candidate list at query time
    ef_construction: int = 200  # HNSW candidate list while building
    pq_m: int = 8  # IVF-PQ sub-quantizers (must divide dim)
    pq_nbits: int = 8  # bits per PQ code


def build_index(vectors: np.ndarray, params: IndexParams) -> tuple[faiss.Index, dict[str, Any]]:
    """The index over `vectors` (row i gets FAISS id i) and the parameters actually used.

    Parameters that cannot work with this many items (nlist > items, 2**nbits > items) are
    clamped with a warning instead of failing, so that tiny catalogs still export.
    """
    if params.type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {params.type!r}; accepted: {', '.join(INDEX_TYPES)}")
    x = _as_f32(vectors)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"item vectors must be a non-empty [num_items, dim] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("item vectors contain NaN or inf")
    n, d = x.shape
    used: dict[str, Any] = {}
    if params.type == "flat":
        index = faiss.IndexFlatIP(d)
    elif params.type == "hnsw":
        if params.hnsw_m < 2:
            raise ValueError(f"hnsw_m must be >= 2, got {params.hnsw_m}")
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        used = {"M": params.hnsw_m, "ef_search": params.ef_search, "ef_construction": params.ef_construction}
    else:
        nlist = params.nlist or max(1, min(round(math.sqrt(n)), n // 39))
        if nlist > n:
            warnings.warn(f"nlist={nlist} > {n} items: clamped to {n}", stacklevel=2)
            nlist = n
        nprobe = min(max(1, params.nprobe), nlist)
        quantizer = faiss.IndexFlatIP(d)
        if params.type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            used = {"nlist": nlist, "nprobe": nprobe}
        else:
            if params.pq_m < 1 or d % params.pq_m:
                raise ValueError(f"pq_m={params.pq_m} must divide the vector dim {d}")
            nbits = params.pq_nbits
            while nbits > 1 and 2**nbits > n:
                nbits -= 1
            if nbits != params.pq_nbits:
                warnings.warn(f"pq_nbits={params.pq_nbits} needs >= {2**params.pq_nbits} items: using {nbits}",
                              stacklevel=2)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, params.pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
            used = {"nlist": nlist, "nprobe": nprobe, "pq_m": params.pq_m, "nbits": nbits}
        index.train(x)
        index.nprobe = nprobe
    index.add(x)
    return index, used


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def exact_topk(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k rows by inner product (numpy), best first; the reference for recall."""
    scores = _as_f32(queries) @ _as_f32(item_vectors).T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def sample_rows(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def recall_vs_exact(
    index: faiss.Index, item_vectors: np.ndarray, queries: np.ndarray, k: int = 100
) -> dict[str, Any]:
    """Mean |approx top-k ∩ exact top-k| / k over the query vectors (real user vectors)."""
    k = min(k, len(item_vectors))
    q = _as_f32(queries)
    exact = faiss.IndexFlatIP(item_vectors.shape[1])
    exact.add(_as_f32(item_vectors))
    _, truth = exact.search(q, k)
    _, found = index.search(q, k)
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found, strict=True)]
    return {"k": int(k), "recall": float(np.mean(hits) / k) if len(hits) else None, "users": len(hits)}


def params_dict(params: IndexParams) -> dict[str, Any]:
    return asdict(params)
