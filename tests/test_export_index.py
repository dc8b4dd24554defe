"""FAISS helpers of export/index.py: exactness of flat, recall of approximate indexes, torch-freedom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.index import IndexParams, build_index, exact_topk, recall_vs_exact, save_index
from repository.index import load_index, search
from repository.manifest import IndexSection

ROOT = Path(__file__).resolve().parent.parent


def clustered(n: int = 800, d: int = 16, centers: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 3
    return (c[rng.integers(0, centers, n)] + rng.normal(scale=0.3, size=(n, d))).astype(np.float32)


def test_flat_index_matches_numpy_brute_force():
    rng = np.random.default_rng(1)
    items, queries = (
        rng.normal(size=(300, 12)).astype(np.float32),
        rng.normal(size=(40, 12)).astype(np.float32),
    )
    index, used = build_index(items, IndexParams("flat"))
    assert used == {} and index.ntotal == 300
    scores, rows = search(index, queries, 25)
    brute = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(rows, brute)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, brute, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(exact_topk(items, queries, 25), brute)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_recall_is_high_on_easy_data(kind, tmp_path):
    items = clustered()
    queries = items[::8] + np.random.default_rng(3).normal(scale=0.1, size=(100, 16)).astype(np.float32)
    index, used = build_index(items, IndexParams(kind, nlist=8, nprobe=8, ef_search=512, pq_m=4, pq_nbits=6))
    rec = recall_vs_exact(index, items, queries, k=100)
    assert rec["k"] == 100 and rec["users"] == 100
    assert 0.0 <= rec["recall"] <= 1.0
    assert rec["recall"] > (0.5 if kind == "ivfpq" else 0.9), rec
    save_index(index, tmp_path / "i.faiss")
    loaded = load_index(tmp_path / "i.faiss", IndexSection("flat", used))
    np.testing.assert_array_equal(search(loaded, queries, 10)[1], search(index, queries, 10)[1])


def test_ivf_params_clamped_and_per_call_nprobe():
    items = clustered(50)
    with pytest.warns(UserWarning, match="clamped"):
        index, used = build_index(items, IndexParams("ivf", nlist=500, nprobe=900))
    assert used == {"nlist": 50, "nprobe": 50}
    # nprobe = nlist visits every cell: exact answers
    _, rows = search(index, items[:5], 10, nprobe=50)
    np.testing.assert_array_equal(rows, exact_topk(items, items[:5], 10))
    assert faiss_nprobe(index) == 50  # the per-call parameter did not mutate the index


def faiss_nprobe(index) -> int:
    import faiss

    return faiss.extract_index_ivf(index).nprobe


def test_ivf_recall_drops_with_nprobe_one_and_is_measured():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2000, 16)).astype(np.float32)  # hard data: no clusters
    index, _ = build_index(items, IndexParams("ivf", nlist=40, nprobe=1))
    rec = recall_vs_exact(index, items, rng.normal(size=(50, 16)), k=100)
    assert 0.0 < rec["recall"] < 0.9


def test_bad_index_settings_are_refused_clearly():
    items = clustered(100)
    with pytest.raises(ValueError, match="accepted: flat, ivf, hnsw, ivfpq"):
        build_index(items, IndexParams("annoy"))
    with pytest.raises(ValueError, match="pq_m=5 must divide"):
        build_index(items, IndexParams("ivfpq", pq_m=5))
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((4, 4), np.nan, np.float32), IndexParams())


def test_torch_free_modules_do_not_import_torch():
    code = (
        "import sys, importlib, pkgutil, repository, export.index, export.config; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(repository.__path__, 'repository.')]; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
