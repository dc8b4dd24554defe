"""Known-user vectors across machines: the same shards as the single-process engine, computed by Ray Data.

`llmrec export --engine ray` hands the shards still missing from the export's work folder
(export/user_vectors.py) to a Ray Data pipeline: one row per shard, `map_batches` over a pool of actors
that each hold one `BatchFn` (an ONNX Runtime session on the exported fp32 graph, opened once per
actor), and the driver writes each shard as it streams back. Everything else is shared with the
local engine: the shard layout, the cache key, the atomic shard files, the final assembly. So the
version written is byte for byte the one the local engine writes (same graph, same batches, same
single-threaded session per batch: tests/test_export_ray.py checks it on a local 2-worker cluster),
and a killed Ray export resumes from the shards already on disk, on either engine.

What the workers need: the exported graph, read from the path the driver gives them (the export's
staging folder inside the model repository, which a cluster already mounts for its serving replicas),
and the prompts, shipped once through Ray's object store. The driver needs no shared disk with them:
vectors come back through Ray, shards are written by the driver only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from tqdm import tqdm

from common import logs
from export.config import RayConfig
from export.user_vectors import BatchFn, ShardStore

log = logs.get(__name__)


class _ShardWorker:
    """One actor of the pool: computes whole shards (a row of the dataset is one shard number)."""

    def __init__(self, batch_fn: BatchFn, shard_size: int, count: int) -> None:
        self.batch_fn, self.shard_size, self.count = batch_fn, shard_size, count

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        shards = [int(s) for s in batch["shard"]]
        out = []
        for s in shards:
            rows = np.arange(s * self.shard_size, min((s + 1) * self.shard_size, self.count), dtype=np.int64)
            out.append(np.asarray(self.batch_fn(rows), dtype=np.float32).reshape(-1))
        # flattened: the last shard is shorter than the others, and a column of equal-rank arrays of
        # different lengths is what Ray's tensor columns hold without a ragged-shape special case
        return {"shard": np.asarray(shards, dtype=np.int64), "vectors": np.array(out, dtype=object)}


def ray_compute_shards(store: ShardStore, shard_ids: Iterable[int], batch_fn: BatchFn, cfg: RayConfig,
                       progress: bool = True) -> int:
    """The Ray engine: computes the given shards that are not done yet; returns how many it computed."""
    try:
        import ray
        import ray.data
    except ImportError as e:  # an install option, like the GPU set
        raise RuntimeError("--engine ray needs Ray Data: pip install 'llmrec[cluster]'") from e
    if cfg.workers < 1 or cfg.cpus_per_worker <= 0:
        raise ValueError(f"ray.workers must be >= 1 and ray.cpus-per-worker > 0, got {cfg.workers}, "
                         f"{cfg.cpus_per_worker}")
    todo = [i for i in shard_ids if not store.done(i)]
    if store.num_shards - len(todo):
        log.info("known-user shards reused", done=store.num_shards - len(todo), todo=len(todo),
                 folder=str(store.folder))
    if not todo:
        return 0
    own = not ray.is_initialized()
    if own:
        ray.init(address=cfg.address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts users; Ray's would interleave with it
        ctx.max_errored_blocks = 0  # a failed shard fails the export; the shards already written stay
        ds = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(_ShardWorker, fn_constructor_args=(batch_fn, store.shard_size, store.count),
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                            num_cpus=cfg.cpus_per_worker)
        total = int(sum(len(store.rows(i)) for i in todo))
        with tqdm(total=total, desc="known users (ray)", unit="user", disable=not progress) as bar:
            for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=1):
                for s, flat in zip(batch["shard"], batch["vectors"], strict=True):
                    shard = int(s)
                    store.write(shard, np.asarray(flat, dtype=np.float32).reshape(-1, store.dim))
                    bar.update(len(store.rows(shard)))
    finally:
        if own:
            ray.shutdown()
    log.info("known-user shards computed", engine="ray", shards=len(todo), workers=cfg.workers)
    return len(todo)
