"""`llmrec bench pipeline` on a tiny synthetic size with tiny random models: every step runs as a child
process of the real CLI and is measured; a failing step is reported with its message and what depends
on it as skipped; the report and plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.pipeline import PipelineConfig, growth, known_user_cost, markdown, parse_size, run_pipeline
from common.errors import ConfigError


def test_sizes_parse_and_refuse_bad_ones() -> None:
    assert parse_size("10k").synth == (10_000, 5_000, 311_000)
    assert parse_size("ml100k").synth is None
    assert parse_size("synth:50:20:400").synth == (50, 20, 400)
    with pytest.raises(ConfigError, match="bad size"):
        parse_size("synth:50:20")


def test_growth_compares_only_steps_that_ran_at_both_sizes() -> None:
    a = {"size": "a", "steps": {"x": {"status": "ok", "wall_s": 2.0, "cpu_s": 1.0, "peak_rss_mb": 100.0,
                                      "output_mb": 1.0},
                                "y": {"status": "failed"}}}
    b = {"size": "b", "steps": {"x": {"status": "ok", "wall_s": 6.0, "cpu_s": 4.0, "peak_rss_mb": 150.0,
                                      "output_mb": 10.0},
                                "y": {"status": "ok", "wall_s": 1.0, "cpu_s": 1.0, "peak_rss_mb": 1.0,
                                      "output_mb": 1.0}}}
    assert growth([a, b]) == [{"step": "x", "from": "a", "to": "b", "wall_s": 3.0, "cpu_s": 4.0,
                               "peak_rss_mb": 1.5, "output_mb": 10.0}]


def test_a_failed_step_is_reported_with_its_message_and_what_needs_it_is_skipped(tmp_path: Path) -> None:
    cfg = PipelineConfig(sizes=("synth:10:30:600",), steps=("synth", "baselines"), work=tmp_path)
    steps = run_pipeline(cfg)["sizes"][0]["steps"]
    assert steps["synth"]["status"] == "failed"
    assert "--interactions 600 is above" in steps["synth"]["message"]  # the CLI's one-line error
    assert steps["baselines"]["status"] == "skipped"
    md = markdown({**run_pipeline(cfg), "command": "test"})
    assert "synth | failed" in md and "baselines | skipped" in md


def test_pipeline_runs_every_step_on_a_tiny_size(tmp_path: Path, tcf_assets: tuple[Path, Path]) -> None:
    encoder, _ = tcf_assets
    tcf_args = (f"--text.encoder {encoder} --model.dim 16 --model.max-seq-len 8 --text.max-length 12 "
                "--train.batch-size 16 --precision fp32")
    cfg = PipelineConfig(sizes=("synth:200:60:2000",),
                         steps=("synth", "baselines", "train_tcf", "export_tcf", "serve_tcf"),
                         work=tmp_path / "work", tcf_epochs=1, tcf_budget_min=0, requests=20, tcf_args=tcf_args)
    updates: list[int] = []
    result = run_pipeline(cfg, lambda r: updates.append(len(r["sizes"][0]["steps"])))
    steps = result["sizes"][0]["steps"]
    assert result["complete"]
    assert updates and updates[-1] == len(cfg.steps)  # the report could be rewritten after every step
    for name in cfg.steps:
        assert steps[name]["status"] == "ok", steps[name]
        assert steps[name]["cpu_s"] > 0 and steps[name]["peak_rss_mb"] > 0
    assert steps["synth"]["output_mb"] > 0 and steps["export_tcf"]["output_mb"] > 0
    served = steps["serve_tcf"]["detail"]
    assert served["requests"] == 20 and served["errors"] == 0
    assert steps["train_tcf"]["detail"]["steps_per_epoch"] >= 1
    assert steps["train_tcf"]["detail"]["epoch_cpu_s_extrapolated"] > 0  # beside the wall, noisy when shared
    assert "serve_tcf | ok" in markdown({**result, "command": "test"})
    json.dumps(result)  # the report is plain JSON


def test_an_export_cut_by_the_step_limit_reports_how_far_its_known_user_pass_got(tmp_path: Path) -> None:
    log = tmp_path / "export_cllm4rec.log"
    log.write_text("2026-12-07T18:56:05Z [info     ] known-user vectors    folder=x pending=25 shards=25 users=100000\n"
                   "known users:   0%|          | 0/100000 [00:00<?, ?user/s]\rknown users:   4%|▍         | "
                   "4096/100000 [04:50<1:46:40, 14.98user/s]\rknown users:  16%|█▋        | 16384/100000 "
                   "[1:02:05<1:59:09, 11.70user/s]")
    cost = known_user_cost(log)
    assert cost == {"known_users_done": 16384, "known_users_total": 100000, "known_users_elapsed_s": 3725}
    result = {"sizes": [{"size": "100k", "steps": {"export_cllm4rec": {
        "status": "timed_out", "wall_s": 3800.0, "cpu_s": 3000.0, "peak_rss_mb": 900.0, "output_mb": 10.0,
        "message": "stopped after the step limit (62.0 min)", "detail": cost}}}], "growth": [], "complete": False,
        "command": "test"}
    assert "known-user pass cut at 16384 of 100000 users after 3725 s (4.4 users/s: all of them ≈ 6.3 h" \
        in markdown(result)


def test_export_steps_report_the_known_user_pass_against_its_flop_estimate(tmp_path: Path) -> None:
    log = tmp_path / "export_cllm4rec.log"
    log.write_text("2026-12-07T15:49:05Z [info     ] known-user vectors    folder=x pending=3 shards=3 users=12\n"
                   "2026-12-07T15:49:07Z [info     ] known-user vectors computed    cpu_seconds=40.5 est_gflop=810.2 "
                   "gflop_per_cpu_s=20.0 positions=276000 seconds=41.0 shards=3 tokens=250000\n")
    cost = known_user_cost(log)
    assert cost == {"known_users_seconds": 41.0, "known_users_cpu_seconds": 40.5, "known_users_positions": 276000.0,
                    "known_users_est_gflop": 810.2, "known_users_gflop_per_cpu_s": 20.0}
    assert known_user_cost(tmp_path / "missing.log") == {}
    result = {"sizes": [{"size": "10k", "steps": {"export_cllm4rec": {
        "status": "ok", "wall_s": 50.0, "cpu_s": 49.0, "peak_rss_mb": 900.0, "output_mb": 10.0, "message": "",
        "detail": cost}}}], "growth": [], "complete": True, "command": "test"}
    assert "known-user pass 41 s, 40 CPU s for ≥ 810 GFLOP (276000 prompt positions): 20.0 GFLOP per CPU s" \
        in markdown(result)


def test_export_steps_say_which_precision_ran_the_known_user_pass_and_what_the_bf16_gate_measured(
        tmp_path: Path) -> None:
    log = tmp_path / "export_cllm4rec.log"
    log.write_text(
        "2026-12-07T21:10:00Z [info     ] bf16 known-user gate           bf16_seconds=2.1 bf16_speedup=2.38 "
        "fp32_seconds=5.0 probe_users=64 relative_drop=0.004 rows=256 status=accepted threads=1 top20_overlap=0.97 "
        "users_timed=300\n"
        "2026-12-07T21:10:05Z [info     ] known-user vectors             engine=openvino-cpu folder=x pending=3 "
        "precision=bf16 shards=3 users=12\n"
        "2026-12-07T21:11:07Z [info     ] known-user vectors computed    cpu_seconds=40.5 est_gflop=810.2 "
        "gflop_per_cpu_s=20.0 positions=276000 seconds=41.0 shards=3 tokens=250000\n")
    cost = known_user_cost(log)
    assert cost["known_users_precision"] == "bf16" and cost["known_users_engine"] == "openvino-cpu"
    assert cost["bf16_gate"]["bf16_speedup"] == "2.38" and cost["known_users_cpu_seconds"] == 40.5
    result = {"sizes": [{"size": "10k", "steps": {"export_cllm4rec": {
        "status": "ok", "wall_s": 50.0, "cpu_s": 49.0, "peak_rss_mb": 900.0, "output_mb": 10.0, "message": "",
        "detail": cost}}}], "growth": [], "complete": True, "command": "test"}
    md = markdown(result)
    assert "known-user pass in bf16 (openvino-cpu)" in md
    assert "bf16 gate accepted: top-20 overlap 0.97, probe metric drop 0.004; the same 300 users in this run: " \
           "fp32 5.0 s, bf16 2.1 s (2.38x)" in md


def test_an_epoch_is_extrapolated_from_its_steps_with_the_batch_building_charged_once(tmp_path: Path) -> None:
    from benchmarks.pipeline import _epoch_extrapolation

    (tmp_path / "train").mkdir()
    epoch = {"steps": 10, "seconds": 25.0, "cpu_seconds": 24.0, "setup_seconds": 5.0, "setup_cpu_seconds": 4.0}
    (tmp_path / "train" / "log.json").write_text(json.dumps({"epochs": [epoch]}))
    out = _epoch_extrapolation(tmp_path, 1000)
    assert out["s_per_step"] == 2.0  # (25 - 5) / 10, not 2.5
    assert out["epoch_s_extrapolated"] == 5.0 + 2.0 * 1000 and out["epoch_cpu_s_extrapolated"] == 4.0 + 2.0 * 1000
    old = {"steps": 10, "seconds": 25.0, "cpu_seconds": 24.0}  # a log from before the setup was recorded
    (tmp_path / "train" / "log.json").write_text(json.dumps({"epochs": [old]}))
    assert _epoch_extrapolation(tmp_path, 1000)["epoch_s_extrapolated"] == 2500.0


def test_a_child_shorter_than_one_sampling_interval_still_has_its_peak_rss(tmp_path: Path) -> None:
    import subprocess
    import sys

    from benchmarks.pipeline import wait_with_rusage

    proc = subprocess.Popen([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    code, peak = wait_with_rusage(proc, 60)
    assert code == 0 and proc.returncode == 0 and peak >= 300 * 2**20
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(subprocess.TimeoutExpired):
        wait_with_rusage(slow, 0.2)
    slow.kill()
    slow.wait()
