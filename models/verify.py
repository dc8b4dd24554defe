"""`llmrec eval tcf|cllm4rec --verify REPORT.json`: rerun the cheapest recorded row of a quality report
end to end (train from its recorded command, evaluate on the test part) and check the figure lands
where the report says.

A report is only as good as its ability to be regenerated. Each row records the exact command of every
seed, presets expanded into explicit flags (models.reports.explicit_command), so rerunning it trains
the same model whatever the presets say now; the checkpoint's split hash makes eval refuse a split
that moved. The check: the rerun's test metric within `sds` seed SDs of the row's mean. The rerun
repeats the row's first seed, so on the machine that wrote the report it lands on that seed's own
figure, which is at most (n-1)/sqrt(n) seed SDs from the mean of n seeds (1.15 for 3); the default
of 2 SDs leaves room for another CPU's float arithmetic, not for a different model. Only rows with
at least two seeds have a seed SD; the cheapest of those (by recorded training time) is rerun.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError


@dataclass
class Row:
    label: str
    command: str  # the first seed's explicit command
    mean: float
    seed_sd: float
    first_seed: float | None  # the first seed's own figure, when the report kept it
    train_s: float


def _rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    if "sections" in payload:  # TCF: one list of variants per data preparation
        return [v for s in payload["sections"] for v in s["variants"]]
    return list(payload.get("variants", []))


def cheapest_row(payload: dict[str, Any], metric: str) -> Row:
    """The row with a recorded explicit command for every seed, at least two seeds and the least
    recorded training time."""
    candidates = []
    for v in _rows(payload):
        runs = v.get("runs") or []
        if v.get("seeds", 0) < 2 or not all(r.get("command_explicit") for r in runs):
            continue
        sd = (v.get("seed_sd") or {}).get(metric)
        if sd is None:
            continue
        cost = float(np.mean([r.get("train_s") or 0.0 for r in runs]))
        first = (runs[0].get("test") or {}).get(metric)
        candidates.append(Row(v["label"], runs[0]["command_explicit"], v["test"][metric], sd, first, cost))
    if not candidates:
        raise ConfigError("the report has no row with at least two seeds whose checkpoints recorded their explicit "
                          "command (reports written before commands were recorded cannot be verified: regenerate)")
    return min(candidates, key=lambda r: r.train_s)


def with_out(argv: list[str], out: Path) -> list[str]:
    """`argv` with its checkpoint folder replaced by `out` (the recorded one may hold the original)."""
    rest, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--out" and i + 1 < len(argv):
            skip = True
            continue
        if a.startswith("--out="):
            continue
        rest.append(a)
    return [*rest, "--out", str(out)]


def verify(report: Path, metric: str, work: Path, train: Callable[[list[str]], Path],
           evaluate: Callable[[Path], float], sds: float = 2.0) -> dict[str, Any]:
    """Reruns the cheapest row of `report` into `work` with `train(argv) -> checkpoint`, scores it with
    `evaluate(checkpoint) -> test metric` and compares with the row's mean and seed SD."""
    import json

    payload = json.loads(Path(report).read_text())
    row = cheapest_row(payload, metric)
    words = shlex.split(row.command)
    argv = with_out(words[3:], Path(work))  # "llmrec train <kind>" first
    shutil.rmtree(work, ignore_errors=True)
    got = evaluate(train(argv))
    tolerance = sds * row.seed_sd
    return {"report": str(report), "label": row.label, "metric": metric, "command": shlex.join([*words[:3], *argv]),
            "expected_mean": row.mean, "seed_sd": row.seed_sd, "tolerance": tolerance, "got": got,
            "first_seed": row.first_seed, "within": bool(abs(got - row.mean) <= tolerance + 1e-12)}


def markdown(result: dict[str, Any]) -> str:
    verdict = "within" if result["within"] else "OUTSIDE"
    return (f"Verified `{result['label']}` of {result['report']}: reran `{result['command']}`; test {result['metric']} "
            f"{result['got']:.4f} vs the row's {result['expected_mean']:.4f} (seed sd {result['seed_sd']:.4f}): "
            f"{verdict} {result['tolerance'] / max(result['seed_sd'], 1e-12):.0f} seed SDs.")


def main(report: Path, metric: str, work: Path, train: Callable[[list[str]], Path],
         evaluate: Callable[[Path], float], sds: float = 2.0) -> int:
    """`llmrec eval <kind> --verify REPORT`: prints the verdict; exit 0 within the tolerance, 1 outside."""
    result = verify(report, metric, work, train, evaluate, sds)
    print(markdown(result))
    return 0 if result["within"] else 1
