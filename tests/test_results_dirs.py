"""Where reports and the files beside them go: a run writes under ./llmrec-results unless --results-dir
names a folder; the shipped benchmarks/results is never written by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.grpc_load as grpc_load
from benchmarks.cli import main as bench_main
from models.reports import RUN_RESULTS_DIR, SHIPPED_RESULTS_DIR, run_results_dir, write_report


def test_the_two_folders_are_named_for_what_they_are() -> None:
    assert SHIPPED_RESULTS_DIR.is_absolute() and SHIPPED_RESULTS_DIR.parts[-2:] == ("benchmarks", "results")
    assert not RUN_RESULTS_DIR.is_absolute()  # resolved against the working directory at write time
    assert run_results_dir(None) == RUN_RESULTS_DIR
    assert run_results_dir(Path("x")) == Path("x")


def test_bench_grpc_writes_its_plots_beside_its_report_not_into_the_shipped_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name for p in SHIPPED_RESULTS_DIR.iterdir()}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(grpc_load, "run_grpc", lambda cfg: {"model": cfg.model})

    def fake_plot(result: dict, prefix: Path) -> list[Path]:
        paths = [Path(f"{prefix}_latency.png"), Path(f"{prefix}_qps.png")]
        for p in paths:
            p.write_bytes(b"png")
        return paths

    monkeypatch.setattr(grpc_load, "plot", fake_plot)
    monkeypatch.setattr(grpc_load, "markdown", lambda result: "body\n")
    assert bench_main(["grpc", "--bench.model", "m", "--tag", "t"]) == 0
    out = tmp_path / RUN_RESULTS_DIR
    assert sorted(p.name for p in out.iterdir()) == ["bench_grpc_t.json", "bench_grpc_t.md",
                                                     "bench_grpc_t_latency.png", "bench_grpc_t_qps.png"]
    assert json.loads((out / "bench_grpc_t.json").read_text())["plots"] == ["bench_grpc_t_latency.png",
                                                                           "bench_grpc_t_qps.png"]
    assert {p.name for p in SHIPPED_RESULTS_DIR.iterdir()} == before


def test_write_report_defaults_to_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_report("r", {"a": 1}, "md\n")
    assert path.resolve() == (tmp_path / RUN_RESULTS_DIR / "r.json").resolve()
