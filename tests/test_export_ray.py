"""`llmrec export --engine ray`: the known-user shards computed by Ray Data on a local cluster of two
worker nodes equal the single-process engine's, and a Ray run resumes from shards already on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from common.config import parse
from export.config import ExportConfig, RayConfig
from export.ray_engine import ray_compute_shards
from export.testing import tiny_bundle
from export.user_vectors import ShardStore, compute_shards
from export.writer import export_bundle
from repository import files as F

ray = pytest.importorskip("ray")


class Projection:
    """A pickle-able BatchFn: user rows -> a fixed random projection of their one-hot rows."""

    def __init__(self, count: int, dim: int) -> None:
        self.table = np.random.default_rng(0).standard_normal((count, dim)).astype(np.float32)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.tanh(self.table[rows] * 3.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    # the worker processes unpickle Projection by reference: they need this folder on their path (a real
    # cluster runs the same llmrec install as the driver)
    here = str(Path(__file__).parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, old) if p)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node runs no work
    for _ in range(2):
        c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield c.address
    finally:
        ray.shutdown()
        c.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _store(root: Path, count: int = 103, dim: int = 8, shard: int = 10) -> ShardStore:
    return ShardStore.open(root, {"checkpoint": "x"}, count, dim, shard)


def test_ray_shards_equal_the_local_engine_and_run_on_both_nodes(tmp_path: Path, cluster: str) -> None:
    fn = Projection(103, 8)
    local, remote = _store(tmp_path / "local"), _store(tmp_path / "ray")
    assert compute_shards(local, range(local.num_shards), fn, progress=False) == 11
    assert ray_compute_shards(remote, range(remote.num_shards), fn, RayConfig(workers=2), progress=False) == 11
    a, b = local.assemble(tmp_path / "a.npy"), remote.assemble(tmp_path / "b.npy")
    assert a.shape == (103, 8) and np.array_equal(a, b)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    assert len(nodes) == 2


def test_ray_resumes_from_shards_on_disk(tmp_path: Path, cluster: str) -> None:
    fn = Projection(103, 8)
    store = _store(tmp_path)
    compute_shards(store, [0, 3, 10], fn, progress=False)  # a run killed after three shards
    before = {i: store.path(i).stat().st_mtime_ns for i in (0, 3, 10)}
    assert ray_compute_shards(store, range(store.num_shards), fn, RayConfig(workers=2), progress=False) == 8
    assert {i: store.path(i).stat().st_mtime_ns for i in (0, 3, 10)} == before  # not recomputed
    assert np.array_equal(store.assemble(tmp_path / "v.npy"), fn(np.arange(103)))
    assert ray_compute_shards(store, range(store.num_shards), fn, RayConfig(workers=2), progress=False) == 0


def test_ray_engine_refuses_a_bad_pool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ray.workers must be >= 1"):
        ray_compute_shards(_store(tmp_path), [0], Projection(103, 8), RayConfig(workers=0), progress=False)


def test_export_with_engine_ray_writes_the_local_engines_version(tmp_path: Path, cluster: str) -> None:
    """The whole exporter, `--engine ray` vs the default: the same known-user vectors, byte for byte."""
    cfg = parse(ExportConfig, ["--graph.ort-optimize", "none", "--no-report", "--user-vectors.shard-size", "7",
                               "--user-vectors.batch-size", "4"])
    ray_cfg = parse(ExportConfig, ["--graph.ort-optimize", "none", "--no-report", "--user-vectors.shard-size", "7",
                                   "--user-vectors.batch-size", "4", "--engine", "ray", "--ray.workers", "2"])
    assert (ray_cfg.engine, ray_cfg.ray.workers, cfg.engine) == ("ray", 2, "local")
    local = export_bundle(tiny_bundle("cllm4rec", tmp_path / "a", lazy_users=True), tmp_path / "repo", "local", cfg)
    remote = export_bundle(tiny_bundle("cllm4rec", tmp_path / "b", lazy_users=True), tmp_path / "repo", "ray", ray_cfg)
    assert (local / F.USER_VECTORS).read_bytes() == (remote / F.USER_VECTORS).read_bytes()
    assert np.load(local / F.USER_VECTORS).shape == (25, tiny_bundle("cllm4rec", tmp_path / "c").dim)
    assert not (tmp_path / "repo" / "ray" / F.EXPORT_WORK).exists()  # shards removed once published
