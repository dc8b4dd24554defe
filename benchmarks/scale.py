"""Catalog scale: top-K over N item vectors, FAISS (exact, IVF, HNSW) against PyTorch matmul + topk.

Item vectors are synthetic (clustered Gaussians, so approximate indexes face realistic structure);
queries are drawn near the items. Recall of each approximate index is measured against exact search.
Where FAISS sees a GPU (the gpu install extra), the same flat and IVF indexes also run cloned onto it,
beside PyTorch's matmul + topk on CUDA, query in and ids out on the host as the server needs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.timing import compare, interleaved
from repository import files as F


@dataclass
class ScaleConfig:
    sizes: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    dim: int = 64
    k: int = 100
    queries: int = 200
    repeats: int = 50
    ivf_nprobe: list[int] = field(default_factory=lambda: [32, 128, 256])  # IVF measured at each (recall vs time)
    min_recall: float = 0.95  # the operating point reported: the fastest IVF setting at least this recall
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    seed: int = 0
    # A version folder: grow the catalogue from its real item vectors (each new item a real one plus noise
    # at 0.3 of the per-dimension spread) and query with its real user vectors, at the model's own dimension.
    vectors_from: Path | None = None


def synthetic_catalog(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.normal(size=(max(n // 1000, 8), dim)).astype(np.float32)
    assign = rng.integers(0, len(centers), size=n)
    return (centers[assign] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f, e)) for f, e in zip(found, exact, strict=True))
    return hits / exact.size


def real_catalog(version: Path, n: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n items grown from a version's real item vectors, and real user vectors as queries."""
    base = np.load(version / F.ITEM_VECTORS).astype(np.float32)
    users = np.load(version / F.USER_VECTORS).astype(np.float32)
    spread = base.std(axis=0, keepdims=True)
    items = base[rng.integers(0, len(base), size=n)] + 0.3 * spread * rng.normal(size=(n, base.shape[1]))
    items[: len(base)] = base
    return items.astype(np.float32), users[rng.integers(0, len(users), size=queries)]


def _gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _gpu_paths(flat: Any, ivf: Any, items_t: Any, one: np.ndarray, probes: list[int], k: int,
               queries: np.ndarray, exact: np.ndarray) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """The GPU side, where there is one: (paths to time, their recall against exact search)."""
    if _gpu_count() == 0:
        return {}, {}
    import torch

    res = faiss.StandardGpuResources()
    gflat, givf = faiss.index_cpu_to_gpu(res, 0, flat), faiss.index_cpu_to_gpu(res, 0, ivf)

    def ivf_search(x: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
        givf.nprobe = p  # one index, its depth set per call (cheap) instead of one GPU copy per depth
        return givf.search(x, k)

    paths: dict[str, Callable[[], object]] = {
        "faiss_gpu_flat": lambda: gflat.search(one, k),
        **{f"faiss_gpu_ivf_nprobe{p}": (lambda p=p: ivf_search(one, p)) for p in probes}}
    recall = {"gpu_flat": _recall(gflat.search(queries, k)[1], exact),
              **{f"gpu_ivf_nprobe{p}": _recall(ivf_search(queries, p)[1], exact) for p in probes}}
    if torch.cuda.is_available():
        items_c = items_t.cuda()
        paths["torch_cuda_matmul_topk"] = lambda: torch.topk(torch.from_numpy(one).cuda() @ items_c.T, k)[1].cpu()
    return paths, recall


def _one_size(n: int, cfg: ScaleConfig, rng: np.random.Generator) -> dict:
    import torch  # the baseline path; imported here so the rest of benchmarks stays torch-free

    if cfg.vectors_from is not None:
        items, queries = real_catalog(cfg.vectors_from, n, cfg.queries, rng)
    else:
        items = synthetic_catalog(n, cfg.dim, rng)
        noise = 0.3 * rng.normal(size=(cfg.queries, cfg.dim)).astype(np.float32)
        queries = items[rng.integers(0, n, size=cfg.queries)] + noise
    dim = items.shape[1]
    items_t = torch.from_numpy(items)
    flat = faiss.IndexFlatIP(dim)
    flat.add(items)
    t0 = time.perf_counter()
    nlist = int(max(16, min(4 * np.sqrt(n), n // 39)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(items[rng.choice(n, size=min(n, nlist * 64), replace=False)])
    ivf.add(items)
    ivf_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = cfg.hnsw_ef_search
    hnsw.add(items)
    hnsw_build_s = time.perf_counter() - t0
    _, exact = flat.search(queries, cfg.k)
    probes = sorted({min(p, nlist) for p in cfg.ivf_nprobe})
    params = {p: faiss.SearchParametersIVF(nprobe=p) for p in probes}  # per call: no shared index state
    recall = {f"ivf_nprobe{p}": _recall(ivf.search(queries, cfg.k, params=params[p])[1], exact) for p in probes}
    recall["hnsw"] = _recall(hnsw.search(queries, cfg.k)[1], exact)
    one = queries[:1]
    one_t = torch.from_numpy(one)
    gpu_paths, gpu_recall = _gpu_paths(flat, ivf, items_t, one, probes, cfg.k, queries, exact)
    recall.update(gpu_recall)
    paths = {
        "torch_matmul_topk": lambda: torch.topk(one_t @ items_t.T, cfg.k),
        "faiss_flat": lambda: flat.search(one, cfg.k),
        **{f"faiss_ivf_nprobe{p}": (lambda p=p: ivf.search(one, cfg.k, params=params[p])) for p in probes},
        "faiss_hnsw": lambda: hnsw.search(one, cfg.k),
        **gpu_paths,
    }
    timings = interleaved(paths, repeats=cfg.repeats if n < 1_000_000 else max(10, cfg.repeats // 3))
    return {
        "items": n,
        "dim": dim,
        "k": cfg.k,
        "paths": compare(timings, "torch_matmul_topk"),
        "recall_vs_exact": recall,
        "ivf": {"nlist": nlist, "nprobe": probes, "build_s": ivf_build_s},
        "hnsw": {"M": cfg.hnsw_m, "ef_search": cfg.hnsw_ef_search, "build_s": hnsw_build_s},
    }


def operating_point(row: dict, min_recall: float, device: str = "cpu") -> tuple[str, float, float] | None:
    """(path, recall, speed-up over exact FAISS on the same device) of the fastest approximate setting
    with recall >= min_recall; None where none qualifies or the device was not measured."""
    prefix = "faiss_gpu_" if device == "gpu" else "faiss_"
    exact_name = prefix + "flat"
    if exact_name not in row["paths"]:
        return None
    exact = row["paths"][exact_name]["p50_ms"]
    ok = [(name, row["recall_vs_exact"][name[len("faiss_"):]], exact / row["paths"][name]["p50_ms"])
          for name in row["paths"] if name.startswith(prefix) and name != exact_name
          and (device == "gpu" or not name.startswith("faiss_gpu_"))
          and row["recall_vs_exact"][name[len("faiss_"):]] >= min_recall]
    return max(ok, key=lambda x: x[2]) if ok else None


def run_scale(cfg: ScaleConfig) -> dict:
    """One query at a time on one thread: the serving case (performance-notes: best for single queries)."""
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(cfg.seed)
    config = {**cfg.__dict__, "vectors_from": f"real vectors of {cfg.vectors_from}" if cfg.vectors_from else None}
    return {"config": config, "rows": [_one_size(n, cfg, rng) for n in cfg.sizes]}


def exact_vs(row: dict, name: str) -> float:
    """A path's speed-up over exact FAISS on the CPU."""
    return row["paths"]["faiss_flat"]["p50_ms"] / row["paths"][name]["p50_ms"]


def markdown(result: dict) -> str:
    cfg = result["config"]
    source = cfg.get("vectors_from") or f"synthetic clustered vectors, dim {cfg['dim']}"
    key = "speedup_p50_vs_torch_matmul_topk"
    lines = [f"Top-{cfg['k']} for one query on one thread; {source}; recall@{cfg['k']} against exact search.", "",
             "| items | path | p50 ms | x PyTorch | x exact FAISS | recall |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        exact = r["paths"]["faiss_flat"]["p50_ms"]
        for name, p in r["paths"].items():
            exact_path = name in ("faiss_flat", "torch_matmul_topk", "torch_cuda_matmul_topk")
            rec = r["recall_vs_exact"].get(name[len("faiss_"):], 1.0 if exact_path else float("nan"))
            lines.append(f"| {r['items']:,} | {name} | {p['p50_ms']:.3f} | {p[key]:.1f}x | {exact / p['p50_ms']:.1f}x | "
                         f"{rec:.3f} |")
    lines.append("")
    for r in result["rows"]:
        best = operating_point(r, cfg["min_recall"])
        lines.append(f"{r['items']:,} items: fastest with recall >= {cfg['min_recall']}: " + (
            f"{best[0]} at {best[1]:.3f}, {best[2]:.1f}x exact FAISS." if best else "none."))
        if "faiss_gpu_flat" in r["paths"]:
            gpu = operating_point(r, cfg["min_recall"], "gpu")
            best_gpu = f"{gpu[0]} at {gpu[1]:.3f}, {gpu[2]:.1f}x exact FAISS on the GPU." if gpu else "none."
            lines.append(f"{r['items']:,} items on the GPU: exact {exact_vs(r, 'faiss_gpu_flat'):.1f}x exact FAISS on "
                         f"the CPU; fastest with recall >= {cfg['min_recall']}: {best_gpu}")
    return "\n".join(lines) + "\n"
