"""`llmrec bench bpr-refit`: BPR's warm refit against the scratch refit it replaced, in one run.

Why: BPR has no fold-in, so the baselines refit it on train + valid before the test part; from scratch
that is a second whole fit, the part that kept `eval baselines` from finishing at 5M interactions. The
warm refit trains on from the factors fitted on train for a few epochs. This bench shows on the same
split, per protocol, what each refit costs and scores (paired over the test users against the
scratch refit), and the train-only scoring it fixed as a floor.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from models.baselines.bpr import BPR, BPRConfig
from models.baselines.runner import history_split
from models.data.config import DataConfig
from models.data.loaders import load_data
from models.data.splits import PROTOCOLS, make_split
from models.metrics import PROTOCOL_METRICS, evaluate_per_user
from models.reports import dataset_title, invoking_command
from models.stats import paired_difference


@dataclass
class BprRefitConfig:
    data: DataConfig = field(default_factory=DataConfig)
    protocols: tuple[str, ...] = PROTOCOLS
    bpr: BPRConfig = field(default_factory=BPRConfig)  # the setting fitted on train (the baselines' default)
    warm_iterations: tuple[int, ...] = (5, 10, 25)  # warm refits compared; the shipped default is BPRConfig's


def _timed_refit(base: BPR, rows: Any, epochs: int) -> tuple[BPR, float]:
    """base's refit on `rows` with refit_iterations=epochs (0: from scratch), and its CPU seconds."""
    probe = BPR(dataclasses.replace(base.cfg, refit_iterations=epochs))
    probe.model = base.model  # refit copies it; base is left as it is
    t0 = time.process_time()
    refit = probe.refit(rows)
    return refit, time.process_time() - t0


def run_bpr_refit(cfg: BprRefitConfig) -> dict[str, Any]:
    data = load_data(cfg.data)
    out: dict[str, Any] = {"data": dataset_title(data.name), "config": dataclasses.asdict(cfg), "protocols": {},
                           "command": invoking_command()}
    for protocol in cfg.protocols:
        split = make_split(data, protocol, cfg.data.split_seed)
        metric = PROTOCOL_METRICS[protocol][0]
        rows = history_split(split, "test")
        t0 = time.process_time()
        base = BPR(cfg.bpr).fit(split)
        train_s = time.process_time() - t0
        scored: dict[str, tuple[Any, float]] = {}
        for epochs in (0, *cfg.warm_iterations):
            scorer, seconds = _timed_refit(base, rows, epochs)
            _, per_user = evaluate_per_user(scorer, split, "test", [metric])
            scored["scratch" if epochs == 0 else f"warm {epochs}"] = (per_user[metric], seconds)
        _, floor = evaluate_per_user(base, split, "test", [metric])
        reference = scored["scratch"][0]
        table = []
        for name, (values, seconds) in [*scored.items(), ("train only (no refit)", (floor[metric], 0.0))]:
            d = paired_difference(values, reference)
            table.append({"refit": name, metric: float(values.mean()), "delta": d.mean, "se": d.se,
                          "cpu_seconds": round(seconds, 3)})
        out["protocols"][protocol] = {"metric": metric, "users": len(reference), "train_fit_cpu_seconds":
                                      round(train_s, 3), "interactions": int(sum(len(r) for r in rows.train)),
                                      "rows": table}
    return out


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]["bpr"]
    lines = [f"**Data**: {result['data']}. BPR as the baselines fit it (factors {cfg['factors']}, lr "
             f"{cfg['learning_rate']}, regularization {cfg['regularization']}, {cfg['iterations']} epochs, seed "
             f"{cfg['seed']}, one thread), fitted on train, then refitted on train + valid for the test part: "
             "from scratch (all epochs again) or warm (N more epochs from the train factors). Δ: mean over test "
             "users of (row - scratch refit) with one standard error. CPU seconds of the refit alone, this "
             "process, same run.", ""]
    for protocol, p in result["protocols"].items():
        m = p["metric"]
        lines += [f"**{protocol}** ({p['users']} test users, {p['interactions']} train + valid interactions; the "
                  f"fit on train took {p['train_fit_cpu_seconds']:.2f} CPU s):", "",
                  f"| refit | test {m} | Δ vs scratch refit | refit CPU s |", "|---|---|---|---|"]
        lines += [f"| {r['refit']} | {r[m]:.4f} | " + ("-" if r["refit"] == "scratch" else
                                                     f"{r['delta']:+.4f} ± {r['se']:.4f}")
                  + f" | {r['cpu_seconds']:.2f} |" for r in p["rows"]]
        lines.append("")
    lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from benchmarks.cli import bench_main

    return bench_main(argv, "bpr-refit", BprRefitConfig, run_bpr_refit, markdown,
                      "BPR for the test part: warm refit vs scratch refit, paired, same run")
