"""The load benchmark's machinery on a tiny repository (numbers are not asserted: only that every figure
the reports need is produced), and the README's performance section being the one the results give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_fixtures import write_cllm4rec, write_tcf

from benchmarks.grpc_load import (
    GrpcBenchConfig,
    _engine_answer,
    _load_requests,
    _request_lengths,
    comparisons,
    engine_alone,
    markdown,
    paired,
    plot,
    run_grpc,
)
from benchmarks.readme import END, START, _grpc, render, update
from models.reports import SHIPPED_RESULTS_DIR
from repository.manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def grpc_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("repo")
    write_tcf(repo, name="tiny")
    cfg = GrpcBenchConfig(repository=repo, model="tiny", engines=["onnxruntime-cpu"], concurrency=[1, 2],
                          seconds=0.4, max_requests=200, open_loop_rates=[50.0], compare_unbatched=True,
                          server_args=["--encoder-instances=2"], baseline_concurrency=[2], paired_rounds=1,
                          paired_seconds=0.3)
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
    assert server["encoder_instances"] == 2  # as ListModels reports it
    inst = grpc_result["instances_compare"]  # the same engine with one instance, alternating phases
    assert inst["engine"] == "onnxruntime-cpu:fp32" and inst["count"] == 2
    assert inst["instances"]["requests"] > 0 and inst["one_instance"]["requests"] > 0
    md = markdown(grpc_result)
    assert "no-op RPC p99" in md and "open loop 50/s" in md and "Dynamic batching" in md
    assert "2 instances" in md and "vs one instance" in md
    pngs = plot(grpc_result, tmp_path / "bench_grpc_tiny")
    assert [p.name for p in pngs] == ["bench_grpc_tiny_latency.png", "bench_grpc_tiny_qps.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_fixed_history_sends_only_full_histories_and_the_report_names_their_length(tmp_path: Path) -> None:
    import numpy as np

    from common.errors import ConfigError

    model = write_cllm4rec(tmp_path, num_items=30, num_users=10)
    lengths = list(range(1, 11))  # user r has r + 1 items
    seen = [list(range(n)) for n in lengths]
    np.savez(model.path / "user_history.npz", indptr=np.cumsum([0, *lengths]),
             indices=np.array([r for s in seen for r in s]))
    manifest = read_manifest(model.path)  # files not checked: user_history.npz was just rewritten
    users, histories = _load_requests(model.path, 100, 6, fixed=True)
    assert sorted(users) == [f"u{r}" for r in range(5, 10)]  # only those with >= 6 items
    assert all(h == [f"i{r}" for r in range(n - 6, n)] for h, n in zip(histories, [int(u[1:]) + 1 for u in users], strict=True))
    template_tokens = _request_lengths(model.path, manifest, [[]])["encoder_input_length"]["p50"]
    fixed = _request_lengths(model.path, manifest, histories)
    assert fixed["history_items"] == {"p10": 6, "p50": 6, "p90": 6}
    assert fixed["encoder_input_length"]["p50"] == template_tokens + 6
    _, real = _load_requests(model.path, 100, 6)
    assert sorted(len(h) for h in real) == [1, 2, 3, 4, 5, 6, 6, 6, 6, 6]
    with pytest.raises(ConfigError, match="the longest has 10"):
        _load_requests(model.path, 100, 11, fixed=True)


def test_paired_phases_alternate_and_each_side_pools_its_rounds() -> None:
    import time

    order: list[str] = []

    def call(name: str, seconds: float):
        def run(i: int) -> None:
            if not order or order[-1] != name:
                order.append(name)
            time.sleep(seconds)
        return run

    out = paired({"server": call("server", 0.01), "pytorch": call("pytorch", 0.03)}, concurrency=1, rounds=3,
                 seconds=0.15)
    assert order == ["server", "pytorch"] * 3
    assert out["server"]["rounds"] == 3 and out["server"]["concurrency"] == 1
    assert out["server"]["requests"] >= 3 and out["pytorch"]["requests"] >= 3  # at least one call per phase
    # each side's latencies are its own, and its QPS divides by the time of all its phases: each call of the
    # slow side sleeps 30 ms, so over one phase's time only it would show far more than 33 QPS
    assert out["pytorch"]["p50_ms"] >= 30 and out["server"]["p50_ms"] >= 10
    assert out["pytorch"]["qps"] < 34


def test_comparisons_come_from_the_paired_phases_and_old_results_still_render() -> None:
    row = {"errors": {}, "p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0, "p99.9_ms": 13.0}
    server = {"engine_chosen": "x", "index_backend": "faiss-cpu",
              "history": [{**row, "concurrency": 1, "qps": 100.0}],
              "paired": [{"server": {**row, "concurrency": 1, "qps": 90.0},
                          "pytorch": {**row, "concurrency": 1, "qps": 30.0, "p50_ms": 40.0}}]}
    result = {"model": "m", "version": 1, "kind": "cllm4rec", "user_tower": "lm", "servers": {"auto": server},
              "config": {"seconds": 1, "top_k": 20, "paired_rounds": 3, "paired_seconds": 4.0}}
    ((c, srv, torch_),) = comparisons(result, server)
    assert c == 1 and srv["qps"] == 90.0 and torch_["qps"] == 30.0  # not the sweep's 100 QPS
    md = markdown(result)
    assert "| 1 | 90.00 | 30.00 | 3.00x | 10.0 | 40.0 | 4.00x |" in md and "alternating 4 s phases, 3 rounds" in md
    assert "engine alone" not in md  # a run without the third side
    assert "encoder instances" not in md  # nor the instances' side (an older file)
    server["encoder_instances"] = 2
    result["instances_compare"] = {"engine": "x:fp32", "count": 2,
                                   "instances": {**row, "concurrency": 8, "rounds": 3, "qps": 50.0},
                                   "one_instance": {**row, "concurrency": 8, "rounds": 3, "qps": 25.0, "p99_ms": 30.0}}
    md = markdown(result)
    assert "(chose x, index faiss-cpu, 2 encoder instances)" in md
    assert ("at 8 clients (--engine x:fp32, alternating 4 s phases, 3 rounds each): 2 instances 50.00 QPS, p99 "
            "12.0 ms vs one instance 25.00 QPS, p99 30.0 ms: 2.00x.") in md
    line = _grpc(result, "bench_grpc_m")[0]
    assert "(chose x, 2 encoder instances)" in line and "its 2 encoder instances at 8 clients: 2.00x the QPS of one" in line
    del result["instances_compare"], server["encoder_instances"]
    server["paired"][0]["engine_alone"] = {**row, "concurrency": 1, "qps": 120.0, "p50_ms": 8.0}
    ((c, srv, alone, torch_),) = engine_alone(server)
    assert (c, srv["qps"], alone["qps"], torch_["qps"]) == (1, 90.0, 120.0, 30.0)
    md = markdown(result)
    assert "| 1 | 120.00 | 8.0 | 4.00x | 0.75 | 0.80 |" in md
    assert "= 3.00x PyTorch eager fp32 (its engine alone in process 4.00x)" in _grpc(result, "bench_grpc_m")[0]
    del server["paired"][0]["engine_alone"]
    legacy = {**result, "servers": {"auto": {k: v for k, v in server.items() if k != "paired"}},
              "pytorch_eager": {"history": [{**row, "concurrency": 1, "qps": 25.0}]}}
    ((_, srv, torch_),) = comparisons(legacy, legacy["servers"]["auto"])
    assert srv["qps"] == 100.0 and torch_["qps"] == 25.0
    assert "server 100.00 QPS vs PyTorch eager fp32 25.00 QPS: 4.00x" in markdown(legacy)
    result["pytorch_device"] = "cuda:0"  # a GPU server's baseline runs on the GPU, and the reports say so
    assert "History workload, server vs PyTorch eager fp32 on cuda:0 in process" in markdown(result)
    assert "= 3.00x PyTorch eager fp32 on cuda:0" in _grpc(result, "bench_grpc_m")[0]
    import torch

    from models.training.devices import resolve_device  # what --bench.torch-device resolves with

    assert str(resolve_device("auto", local_rank=0)) == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert str(resolve_device("cpu", local_rank=0)) == "cpu"


def test_engine_alone_runs_the_chosen_engine_on_the_same_requests_as_the_server_would(tmp_path: Path) -> None:
    import numpy as np

    for write in (write_cllm4rec, write_tcf):
        model = write(tmp_path)
        users, histories = ["u1", "nobody"], [model.item_ids[:4], model.item_ids[2:5]]
        answer = _engine_answer(model.path, "onnxruntime-cpu:fp32", users, histories, 5, ["--ort-threads=1"], 2)
        assert answer is not None
        for i in range(2):
            user = users[i] if model.kind == "cllm4rec" else None  # TCF's history path ignores the user
            expected = np.argsort(-(model.item_vectors @ model.history_vector(histories[i], user)), kind="stable")[:5]
            assert answer(i).tolist() == expected.tolist(), model.kind
    assert _engine_answer(model.path, "no-such-engine:fp32", users, histories, 5, [], 1) is None


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


def test_readme_lists_every_rerun_of_a_result_in_run_order(grpc_result: dict, tmp_path: Path) -> None:
    for suffix, model in (("", "first"), ("-run10", "tenth"), ("-run2", "second"), ("-runaway", "stray")):
        (tmp_path / f"bench_grpc_ml100k-tcf{suffix}.json").write_text(json.dumps({**grpc_result, "model": model}))
    text = render(tmp_path)
    assert text.index("first over gRPC") < text.index("second over gRPC") < text.index("tenth over gRPC")
    assert "stray" not in text and "bench_grpc_ml100k-tcf-run10.md" in text


def test_readme_performance_section_matches_the_committed_results() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0]
    assert section == "\n" + render(SHIPPED_RESULTS_DIR), "README is stale: run `llmrec bench readme`"


def test_scale_catalogue_grows_from_real_vectors(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks.scale import real_catalog

    model = write_tcf(tmp_path, name="tiny")
    items, queries = real_catalog(model.path, 500, 7, np.random.default_rng(0))
    assert items.shape == (500, model.item_vectors.shape[1]) and queries.shape == (7, items.shape[1])
    assert np.array_equal(items[: len(model.item_vectors)], model.item_vectors)  # the real ones first
    assert all(any(np.array_equal(q, u) for u in model.user_vectors) for q in queries)


def test_scale_bench_times_the_gpu_index_where_faiss_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU side's plumbing, with FAISS's GPU calls standing in as CPU clones (a real GPU runs the same
    code through faiss-gpu): its paths are timed, their recall measured, and the report says both."""
    import faiss

    from benchmarks.scale import ScaleConfig, markdown, operating_point, run_scale

    cfg = ScaleConfig(sizes=[2000], dim=16, k=10, queries=20, repeats=3, ivf_nprobe=[4, 64])
    cpu_only = run_scale(cfg)["rows"][0]
    assert not any(name.startswith("faiss_gpu_") for name in cpu_only["paths"])
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, device, index: faiss.clone_index(index), raising=False)
    result = run_scale(cfg)
    row = result["rows"][0]
    nlist = row["ivf"]["nlist"]
    assert {"faiss_gpu_flat", "faiss_gpu_ivf_nprobe4", f"faiss_gpu_ivf_nprobe{min(64, nlist)}"} <= set(row["paths"])
    assert row["recall_vs_exact"]["gpu_flat"] == 1.0
    assert row["recall_vs_exact"][f"gpu_ivf_nprobe{min(64, nlist)}"] == 1.0  # every cell visited: exact
    assert row["recall_vs_exact"]["gpu_ivf_nprobe4"] == row["recall_vs_exact"]["ivf_nprobe4"]  # same index, depth
    best_gpu = operating_point(row, cfg.min_recall, "gpu")
    assert best_gpu is not None and best_gpu[0].startswith("faiss_gpu_ivf")
    best_cpu = operating_point(row, cfg.min_recall)
    assert best_cpu is not None and not best_cpu[0].startswith("faiss_gpu_")
    text = markdown(result)
    assert "| faiss_gpu_flat |" in text and "2,000 items on the GPU: exact" in text
    from benchmarks.readme import _scale

    assert "on the GPU exact" in _scale(result, "bench_scale_gpu")[0]
    assert "on the GPU" not in _scale({"config": result["config"], "rows": [cpu_only]}, "bench_scale")[0]


def test_torch_baselines_run_fp32_and_the_devices_low_precision() -> None:
    import numpy as np
    import torch

    from benchmarks.encoders import torch_runs

    torch.manual_seed(0)
    module = torch.nn.Linear(8, 4).eval()
    feeds = {"x": np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)}
    want = module(torch.from_numpy(feeds["x"])).detach().numpy()
    assert list(torch_runs(module, ["x"], "cpu", low=False)) == ["pytorch-eager:fp32"]
    runs = torch_runs(module, ["x"], "cpu", low=True)
    assert list(runs) == ["pytorch-eager:fp32", "pytorch-eager:bf16"]
    assert np.allclose(runs["pytorch-eager:fp32"](feeds), want, atol=1e-6)
    low = runs["pytorch-eager:bf16"](feeds)
    assert low.dtype == np.float32 and not np.array_equal(low, want) and np.allclose(low, want, atol=0.1)
    if torch.cuda.is_available():
        cuda = torch_runs(module.cuda(), ["x"], "cuda", low=True)
        assert list(cuda) == ["pytorch-eager-cuda:fp32", "pytorch-eager-cuda:fp16"]
        assert np.allclose(cuda["pytorch-eager-cuda:fp32"](feeds), want, atol=1e-4)


def test_reference_code_runs_a_second_server_from_that_tree_in_alternating_phases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.grpc_load as G
    from common.errors import ConfigError

    repo = tmp_path / "repo"
    write_tcf(repo, name="tiny")
    spawned: list[dict | None] = []
    real_spawn = G.spawn_server

    def spawn(repository, args, env=None, **kw):
        spawned.append(env)
        return real_spawn(repository, args, env=env, **kw)

    monkeypatch.setattr(G, "spawn_server", spawn)
    cfg = GrpcBenchConfig(repository=repo, model="tiny", engines=["onnxruntime-cpu"], concurrency=[1],
                          seconds=0.2, max_requests=50, compare_unbatched=False, compare_one_instance=False,
                          baseline_concurrency=[2], paired_rounds=2, paired_seconds=0.2, reference_code=ROOT)
    result = run_grpc(cfg)
    ref = result["reference_code"]
    assert spawned[-1] == {"PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"}  # the reference tree comes first
    assert ref["engine"] == "onnxruntime-cpu:fp32" and set(ref["workloads"]) == {"user_id", "history", "noop"}
    for rows in ref["workloads"].values():
        assert [p["current"]["concurrency"] for p in rows] == [1, 2]
        assert all(p[side]["requests"] > 0 and not p[side]["errors"] and p[side]["rounds"] == 2
                   for p in rows for side in ("current", "reference"))
    assert "This code vs the reference code" in markdown(result)
    with pytest.raises(ConfigError, match="not a source tree of this project"):
        run_grpc(GrpcBenchConfig(**{**cfg.__dict__, "reference_code": tmp_path}))
