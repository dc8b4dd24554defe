"""The load benchmark's machinery on a tiny repository (numbers are not asserted: only that every figure
the reports need is produced), and the README's performance section being the one the results give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_fixtures import write_tcf

from benchmarks.grpc_load import GrpcBenchConfig, markdown, plot, run_grpc
from benchmarks.readme import END, START, render, update
from models.reports import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def grpc_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("repo")
    write_tcf(repo, name="tiny")
    cfg = GrpcBenchConfig(repository=repo, model="tiny", engines=["onnxruntime-cpu"], concurrency=[1, 2],
                          seconds=0.4, max_requests=200, open_loop_rates=[50.0], compare_unbatched=True)
    return run_grpc(cfg)


def test_load_benchmark_reports_percentiles_floor_and_open_loop(grpc_result: dict, tmp_path: Path) -> None:
    server = grpc_result["servers"]["onnxruntime-cpu"]
    assert server["engine_chosen"] == "onnxruntime-cpu:fp32" and server["index_backend"] == "faiss-cpu"
    for workload in ("noop", "user_id", "history"):
        rows = server[workload]
        assert [r["concurrency"] for r in rows] == [1, 2]
        assert all(r["requests"] > 0 and r["p50_ms"] <= r["p99_ms"] <= r["p99.9_ms"] for r in rows), rows
    (open_loop,) = server["history_open_loop"]
    assert open_loop["rate"] == 50.0 and open_loop["offered"] == 20 and open_loop["requests"] + sum(
        open_loop["errors"].values()) == 20
    assert grpc_result["server_unbatched"]["history"]["requests"] > 0
    md = markdown(grpc_result)
    assert "no-op RPC p99" in md and "open loop 50/s" in md and "Dynamic batching" in md
    pngs = plot(grpc_result, tmp_path / "bench_grpc_tiny")
    assert [p.name for p in pngs] == ["bench_grpc_tiny_latency.png", "bench_grpc_tiny_qps.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_readme_section_is_rewritten_between_its_markers(grpc_result: dict, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_grpc_ml100k-tcf.json").write_text(json.dumps({**grpc_result, "model": "tiny"}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold figures\n{END}\n\nrest\n")
    assert update(readme, results)
    text = readme.read_text()
    assert "old figures" not in text and "tiny over gRPC" in text and text.endswith(f"{END}\n\nrest\n")
    assert not update(readme, results)  # idempotent
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="performance:start"):
        update(readme, results)


def test_readme_performance_section_matches_the_committed_results() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0]
    assert section == "\n" + render(RESULTS_DIR), "README is stale: run `llmrec bench readme`"


def test_scale_catalogue_grows_from_real_vectors(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks.scale import real_catalog

    model = write_tcf(tmp_path, name="tiny")
    items, queries = real_catalog(model.path, 500, 7, np.random.default_rng(0))
    assert items.shape == (500, model.item_vectors.shape[1]) and queries.shape == (7, items.shape[1])
    assert np.array_equal(items[: len(model.item_vectors)], model.item_vectors)  # the real ones first
    assert all(any(np.array_equal(q, u) for u in model.user_vectors) for q in queries)
