"""The resilience report's big-batch section: the paired baseline is rendered beside the configured server,
with the ratio between them (the bench itself needs real servers and minutes; its report is plain code)."""

from __future__ import annotations

from benchmarks.resilience import markdown


def _phase(p50: float, p99: float, batches: int, args: list[str]) -> dict:
    return {"server_args": args, "batch_bytes": 3.3e6, "batch_requests": 256, "batch_excluded": 2000,
            "batch_clients": 8, "admin_clients": 6, "slow_fsync_seconds": 2.0, "probe_model": "dssm",
            "batch_model": "tcf", "probe_deadline_ms": 5000.0, "seconds": 20.0, "batches_ok": batches,
            "batches_failed": 0, "upserts_ok": 6, "upserts_failed": 0, "load_average_1min": 4.0, "cpus": 2,
            "cheap_idle": {"success": 1.0, "p50_ms": 1.0, "p99_ms": 2.0},
            "cheap_under_load": {"success": 1.0, "p50_ms": p50, "p99_ms": p99}, "p99_ratio": p99 / 2.0}


def test_the_big_batch_phase_is_reported_beside_its_baseline_with_their_ratio() -> None:
    result = {"config": {"engine": "onnxruntime-cpu"}, "repository": "synthetic",
              "models": {"cheap": "tcf", "slow": "dssm"}, "phases": ["big_batch"], "targets": {"x": False},
              "big_batch": _phase(2.0, 40.0, 24, []),
              "big_batch_baseline": _phase(4.0, 100.0, 20, ["--batch-yield-ms=0"])}
    md = markdown(result)
    assert "server with `--batch-yield-ms=0`" in md
    assert "p50 0.50x, p99 0.40x" in md and "1.20/s vs 1.00/s" in md
    assert "load average under load 4.0 on 2 CPUs" in md
    assert "Same phase" not in markdown({k: v for k, v in result.items() if k != "big_batch_baseline"})
