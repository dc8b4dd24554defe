"""`llmrec bench grpc --bench.models`: a tiny student and its tiny CLLM4Rec teacher, exported into one repository,
benchmarked in one run through the real CLI (numbers are not asserted: that every model and the PyTorch eager
teacher were queried on the same requests, and that the report, the targets and the plots come from them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main as bench_main
from benchmarks.grpc_load import GrpcBenchConfig, run_grpc
from benchmarks.grpc_models import markdown, plot, targets
from benchmarks.readme import render
from common.config import parse
from common.errors import ConfigError
from models.bundle import load_bundle
from models.cllm4rec import cli as teacher_cli
from models.student import cli as student_cli
from models.tiny import cllm4rec_argv, write_causal_lm, write_ml100k

torch.set_num_threads(1)
LENGTHS = [2, 5]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from export.config import ExportConfig, GraphConfig
    from export.writer import export_bundle

    root = tmp_path_factory.mktemp("bench_models")
    lm, data = write_causal_lm(root / "lm"), write_ml100k(root / "ml", users=16, items=24, per_user=9)
    teacher, student = root / "teacher", root / "student"
    teacher_cli.train(parse(teacher_cli.TrainCli, [*cllm4rec_argv(lm, data, teacher), "--recipe.content-warmup-epochs",
                                                   "0"], presets=teacher_cli.SCHEDULES))
    student_cli.train(parse(student_cli.TrainCli, [
        "--teacher", str(teacher), "--out", str(student), "--cache-dir", str(root / "cache"), "--model.dim", "16",
        "--model.max-seq-len", "4", "--prefixes.per-user", "2", "--prefixes.top-k", "5", "--train.epochs", "1",
        "--train.batch-size", "8", "--train.no-progress", "--precision", "fp32"]))
    out = root / "repo"
    fast = ExportConfig(graph=GraphConfig(ort_optimize="basic"), report=False)
    export_bundle(load_bundle(teacher), out, "tiny-teacher", fast)
    export_bundle(load_bundle(student), out, "tiny-student", fast)
    return {"root": root, "repo": out, "teacher": teacher, "student": student}


def bench_argv(repo: dict, *flags: str) -> list[str]:
    return ["--bench.repository", str(repo["repo"]), "--bench.models", "tiny-student", "tiny-teacher",
            "--bench.checkpoint", str(repo["teacher"]), "--bench.engines", "onnxruntime-cpu",
            "--bench.history-lengths", *map(str, LENGTHS), "--bench.concurrency", "1", "2",
            "--bench.baseline-concurrency", "1", "2", "--bench.seconds", "0.2", "--bench.max-requests", "40",
            "--bench.paired-rounds", "2", "--bench.paired-seconds", "0.15", "--bench.server-args=--ort-threads=1",
            *flags]


@pytest.fixture(scope="module")
def report(repo: dict) -> dict:
    """The report as the CLI writes it (JSON: what the README and a later render read back)."""
    out = repo["root"] / "results"
    assert bench_main(["grpc", *bench_argv(repo, "--bench.target-qps-ratio", "1:20", "2:1e-9"), "--results-dir",
                       str(out), "--tag", "tiny-student"]) == 0
    return {"json": json.loads((out / "bench_grpc_tiny-student.json").read_text()), "dir": out}


def test_both_models_and_the_eager_teacher_answer_the_same_requests_in_paired_phases(report: dict) -> None:
    r = report["json"]
    assert [(m["name"], m["kind"], m["user_tower"]) for m in r["models"]] == [
        ("tiny-student", "student", "sasrec"), ("tiny-teacher", "cllm4rec", "lm")]
    assert r["baseline_model"] == "tiny-teacher" and r["pytorch_device"] == "cpu"
    (server,) = r["servers"].values()
    for m in r["models"]:  # the server named each model and its version in its answers
        info = server["models"][m["name"]]
        assert info["engine_chosen"].startswith("onnxruntime-cpu")
        answered = {k: (a["model"], a["version"]) for k, a in info["answered"].items() if a["items"] > 0}
        assert answered == {str(n): (m["name"], m["version"]) for n in LENGTHS}
    assert [w["history_len"] for w in server["workloads"]] == LENGTHS
    for w in server["workloads"]:
        assert [p["clients"] for p in w["paired"]] == [1, 2]
        for p in w["paired"]:
            for side in [*p["models"].values(), p["pytorch"]]:
                assert side["requests"] > 0 and not side["errors"] and side["rounds"] == 2
                assert side["concurrency"] == p["clients"]
        for rows in w["sweep"].values():
            assert [x["concurrency"] for x in rows] == [1, 2] and all(x["requests"] > 0 for x in rows)
    for req, n in zip(r["requests"], LENGTHS, strict=True):  # exactly n items sent to both
        student, teacher = req["encoder_input"]["tiny-student"], req["encoder_input"]["tiny-teacher"]
        assert student["history_items"]["p90"] == teacher["history_items"]["p10"] == n
        assert student["encoder_input_length"]["p50"] == min(n, 4)  # the student keeps its max_seq_len rows
        assert teacher["encoder_input_length"]["p50"] > n  # the teacher's prompt: template + the items


def test_targets_are_judged_on_the_measured_ratios(report: dict, tmp_path: Path) -> None:
    r = report["json"]
    got = r["targets"]
    assert got == targets(r)  # recomputed from the file alike
    assert {(t["model"], t["history_len"], t["what"], t["clients"]) for t in got} == {
        ("tiny-student", n, what, c) for n in LENGTHS for what, c in (("qps_ratio", 1), ("qps_ratio", 2), ("p99_ms", 1))}
    (server,) = r["servers"].values()
    for t in got:
        p = next(p for w in server["workloads"] if w["history_len"] == t["history_len"]
                 for p in w["paired"] if p["clients"] == t["clients"])
        if t["what"] == "qps_ratio":
            assert t["measured"] == p["models"]["tiny-student"]["qps"] / p["models"]["tiny-teacher"]["qps"]
            assert t["met"] == (t["measured"] >= t["target"])
        else:
            assert t["measured"] == p["models"]["tiny-student"]["p99_ms"] and t["met"] == (t["measured"] <= 3.0)
    assert all(t["met"] for t in got if t["clients"] == 2)  # a target of 1e-9x is met by any answer at all
    md = (report["dir"] / "bench_grpc_tiny-student.md").read_text()
    assert "several models, paired" in md and "tiny-teacher v1 (cllm4rec/lm, the baseline)" in md
    assert "| QPS / tiny-teacher | p50 speed-up vs tiny-teacher | QPS / PyTorch eager fp32 (tiny-teacher's checkpoint)" in md
    assert "QPS >= 20x tiny-teacher at 1 client" in md and "p99 <= 3 ms at 1 client" in md
    assert "| 5 | 2 | PyTorch eager fp32 (tiny-teacher's checkpoint) |" in md
    assert "![bench_grpc_tiny-student_qps.png](bench_grpc_tiny-student_qps.png)" in md
    for name in ("latency", "qps"):
        assert (report["dir"] / f"bench_grpc_tiny-student_{name}.png").stat().st_size > 1000
    (tmp_path / "bench_grpc_ml100k-student.json").write_text(json.dumps(r))  # the README's line for such a run
    line = render(tmp_path)
    assert "- tiny-student vs tiny-teacher over gRPC, paired in one run" in line
    first = next(t for t in got if t["what"] == "qps_ratio" and t["clients"] == 1)
    assert f"tiny-student 2 items, 1 client: {first['measured']:.2f}x tiny-teacher's QPS (target 20x: " in line
    assert "(target 3 ms: " in line and "x PyTorch eager fp32" in line


def test_verdicts_follow_the_numbers_and_errors_never_meet_a_target(report: dict, tmp_path: Path) -> None:
    r = json.loads(json.dumps(report["json"]))
    (server,) = r["servers"].values()
    p = server["workloads"][0]["paired"][0]  # 1 client
    p["models"]["tiny-teacher"]["qps"] = p["models"]["tiny-student"]["qps"] / 25
    p["models"]["tiny-student"]["p99_ms"] = 2.0

    def verdict(what: str) -> bool | None:
        return next(t["met"] for t in targets(r) if (t["history_len"], t["clients"], t["what"]) == (2, 1, what))

    assert verdict("qps_ratio") is True and verdict("p99_ms") is True
    p["models"]["tiny-teacher"]["qps"] = p["models"]["tiny-student"]["qps"] / 19
    p["models"]["tiny-student"]["p99_ms"] = 3.5
    assert verdict("qps_ratio") is False and verdict("p99_ms") is False
    assert "| tiny-student | 2 | QPS >= 20x tiny-teacher at 1 client | 19.00x | not met |" in markdown(r)
    p["models"]["tiny-teacher"]["qps"] = p["models"]["tiny-student"]["qps"] / 25
    p["models"]["tiny-student"]["errors"] = {"UNAVAILABLE": 1}
    assert verdict("qps_ratio") is False  # fast failures are not answers
    r["config"]["targets"]["qps_ratio"]["16"] = 5.0  # no paired phases at 16 clients
    assert any(t["clients"] == 16 and t["met"] is None and t["measured"] is None for t in targets(r))
    assert "| not measured |" in markdown(r)
    pngs = plot(r, tmp_path / "b")
    assert [x.name for x in pngs] == ["b_latency.png", "b_qps.png"]


def test_bad_model_flags_are_one_line_errors(repo: dict) -> None:
    base = GrpcBenchConfig(repository=repo["repo"], models=["tiny-student", "tiny-teacher"], history_lengths=[2])
    cases = [({"model": "tiny-teacher"}, "not both"), ({"models": ["tiny-student"]}, "two or more different"),
             ({"baseline_model": "nope"}, "not one of --bench.models"),
             ({"models": ["tiny-student", "nope"]}, "no model 'nope'"),
             ({"history_lengths": [500]}, "the longest history has"),
             ({"target_p99_ms": ["one:3"]}, "expected CLIENTS:VALUE"),
             ({"open_loop_rates": [10.0]}, "measure one model"),
             ({"checkpoint": repo["student"]}, "pass the checkpoint the baseline model was exported from")]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_grpc(GrpcBenchConfig(**{**base.__dict__, **change}))
