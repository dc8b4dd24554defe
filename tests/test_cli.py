"""The `llmrec` entry point and `llmrec eval baselines` on a tiny data file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llmrec.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "llmrec", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for words in ("train cllm4rec", "train tcf", "eval baselines", "export", "serve"):
        assert words in proc.stdout


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_mistyped_commands_get_a_suggestion_and_version_is_printed(capsys):
    assert main(["trian", "tcf"]) == 2
    assert "did you mean: train?" in capsys.readouterr().err
    assert main(["train", "tfc"]) == 2
    assert "did you mean one of: train cllm4rec, train tcf" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("llmrec 0.")


def test_eval_baselines_writes_report(tmp_path, capsys):
    lines = ["user,item,timestamp"]
    for u in range(12):  # even users like i0..i9, odd users i10..i19; 6 items each
        for k in range(6):
            lines.append(f"u{u},i{(u + 3 * k) % 10 + (10 if u % 2 else 0)},{k}")
    data = tmp_path / "tiny.csv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results"
    argv = ["eval", "baselines", "--data.dataset", "interactions", "--data.path", str(data)]
    argv += ["--results-dir", str(out), "--no-tune", "--configs.als.factors", "4"]
    assert main(argv) == 0
    report = json.loads((out / "quality_baselines_tiny.json").read_text())
    assert report["data"] == {"name": "tiny", "users": 12, "items": 20, "interactions": 72}
    loo = report["protocols"]["leave_one_out"]
    assert set(loo["models"]) == {"most_popular", "bpr", "als", "ease"}
    assert loo["split_counts"]["evaluated_users_test"] == 12
    assert set(loo["models"]["als"]["test"]) >= {"hr@10", "ndcg@10"}
    assert loo["models"]["als"]["hyper_parameters"]["factors"] == 4
    rnd = report["protocols"]["random_80_10_10"]["models"]["ease"]
    assert {"recall@20", "recall@40", "ndcg@100"} <= set(rnd["test"]) and rnd["fit_seconds"] >= 0
    md = (out / "quality_baselines_tiny.md").read_text()
    assert "| most_popular |" in md and "leave_one_out" in md
    assert report["command"]
    assert "most_popular" in capsys.readouterr().out


def test_eval_baselines_bad_protocol(tmp_path, capsys):
    assert main(["eval", "baselines", "--protocols", "temporal", "--results-dir", str(tmp_path)]) == 2
    assert "accepted: random_80_10_10, leave_one_out" in capsys.readouterr().err
