"""`llmrec train tcf` and `llmrec eval tcf`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from llmrec import logs
from llmrec.config import parse
from models.metrics import evaluate, per_user_metrics
from models.reports import markdown_table, write_report
from models.tcf.checkpoint import load_checkpoint
from models.tcf.train import TrainConfig, make_scorer, train

log = logs.get(__name__)
METRICS = ("hr@10", "ndcg@10")


def train_main(argv: list[str]) -> int:
    logs.setup()
    cfg = parse(TrainConfig, argv, prog="llmrec train tcf", description="Train TCF on a leave-one-out split.")
    result = train(cfg)
    print(json.dumps(result, indent=2, default=str))
    return 0


@dataclass
class EvalConfig:
    # one or more checkpoint folders on the same split: --checkpoint A --checkpoint B
    checkpoint: Annotated[list[Path], tyro.conf.UseAppendAction] = field(default_factory=list)
    label: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)  # optional display name per checkpoint
    report: str = "quality_tcf_ml100k"  # benchmarks/results/<report>.json/.md; "" = print only
    baselines: bool = True  # add most-popular (and the baselines package's models when available)
    threads: int = 1
    results_dir: Path | None = None  # default: benchmarks/results


def most_popular_scorer(split):
    pop = np.bincount(np.concatenate(split.train), minlength=split.num_items).astype(np.float32)

    def scorer(users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        return np.tile(pop, (len(users), 1))

    return scorer


def _label(cfg: dict) -> str:
    if cfg["item_tower"] == "id":
        return f"ID-{cfg['user_tower'].upper()}"
    enc = cfg["text_encoder"]
    name = Path(enc["encoder"]).name
    norm = ", LN" if cfg["model"].get("mlp_input_norm") else ""
    return f"text({name}, N={enc['unfreeze_last']}{norm})-{cfg['user_tower'].upper()}"


def _mark_selected(details: list[dict]) -> None:
    """Among variants of one family (same towers, encoder, N), only the best on validation HR@10 counts."""

    def family(d: dict) -> tuple:
        enc = d["text_encoder"] or {}
        return (d["model"]["user_tower"], d["model"]["item_tower"], enc.get("encoder"), enc.get("unfreeze_last"))

    best: dict[tuple, float] = {}
    for d in details:
        best[family(d)] = max(best.get(family(d), -1.0), (d["valid"] or {}).get("hr@10", -1.0))
    for d in details:
        d["selected_on_valid"] = (d["valid"] or {}).get("hr@10", -1.0) == best[family(d)]


def _same_split(a, b) -> bool:
    return all(len(x) == len(y) and all(np.array_equal(p, q) for p, q in zip(x, y, strict=True))
               for x, y in ((a.train, b.train), (a.valid, b.valid), (a.test, b.test)))


def _baseline_rows(split) -> tuple[list[dict], str]:
    rows = [{"model": "most-popular", **evaluate(most_popular_scorer(split), split, "test", METRICS)}]
    note = "most-popular computed here"
    try:
        from models.baselines import run_baselines_detailed
    except ImportError:
        return rows, note + "; models.baselines not available, other baselines not run"
    try:
        for res in run_baselines_detailed(split, metrics=list(METRICS)):
            rows.append({"model": f"{res.name} (baselines pkg, tuned on valid)",
                         **{k: float(v) for k, v in res.test.items()}})
        note += "; the others from models.baselines.run_baselines_detailed on the same split, tuned on valid"
    except Exception as exc:  # a sibling package's interface may differ: say so rather than fail the report
        note += f"; models.baselines.run_baselines failed on this split: {exc!r}"
    return rows, note


def eval_main(argv: list[str]) -> int:
    logs.setup()
    cfg = parse(EvalConfig, argv, prog="llmrec eval tcf", description="Evaluate TCF checkpoints (test split).")
    if not cfg.checkpoint:
        raise SystemExit("llmrec eval tcf: give at least one --checkpoint DIR")
    import torch

    torch.set_num_threads(cfg.threads)
    rows, split0, details = [], None, []
    for i, folder in enumerate(cfg.checkpoint):
        t0 = time.time()
        ck = load_checkpoint(folder)
        if split0 is None:
            split0 = ck.split
        elif not _same_split(split0, ck.split):
            raise SystemExit(f"{folder}: its split differs from {cfg.checkpoint[0]}'s; compare like with like")
        scorer = make_scorer(ck.model)
        test = evaluate(scorer, ck.split, "test", METRICS)
        label = cfg.label[i] if i < len(cfg.label) else _label(ck.config)
        rows.append({"model": label, **test})
        details.append({"label": label, "checkpoint": str(folder), "test": test, "valid": ck.config.get("valid"),
                        "best_epoch": ck.config.get("best_epoch"), "train_wall_s": ck.config.get("wall_s"),
                        "final": ck.config.get("final"),
                        "eval_wall_s": time.time() - t0, "training": ck.config.get("training"),
                        "text_encoder": ck.config.get("text_encoder"), "model": ck.config.get("model")})
    _mark_selected(details)
    for row, d in zip(rows, details, strict=False):
        row["selected_on_valid"] = d["selected_on_valid"]
    note = ""
    if cfg.baselines and split0 is not None:
        base, note = _baseline_rows(split0)
        rows += base
    table = markdown_table(["model", "test HR@10", "test NDCG@10", "users", "selected on valid"],
                           [[r["model"], r["hr@10"], r["ndcg@10"], int(r["users"]),
                             {True: "yes", False: "no (variant)"}.get(r.get("selected_on_valid"), "-")]
                            for r in rows])
    print(table)
    if cfg.report:
        split_desc = (f"MovieLens-100K, users with < 5 interactions dropped, each user's last max_seq_len + 3 "
                      f"interactions kept (see training.keep_last), leave-one-out by time (valid = second-to-last, "
                      f"test = last), full ranking over all {split0.num_items} items with the user's "
                      f"train(+valid) items masked")
        md = (f"# TCF on MovieLens-100K (test split)\n\n{split_desc}.\nModel selection (epoch, and "
              f"among variants of one family, e.g. with/without the LayerNorm before the MLP) on validation "
              f"HR@10 only; the test split is read once, for this table. Unselected variants are listed for "
              f"transparency, not as results. Pre-inference seconds show a cache load when the table was "
              f"already cached.\n\n{table}\nBaselines: {note}.\n\nReference points (performance-notes, full-history "
              f"leave-one-out, not this truncated split): most-popular 0.050, ALS 0.084, ID-SASRec 0.179.\n")
        md += "\n" + markdown_table(
            ["model", "best epoch", "epochs run", "valid HR@10", "pre-inference s (cache hit: load only)", "train s (all epochs)",
             "eval s (load + test)"],
            [[d["label"], d["best_epoch"], (d["final"] or {}).get("epochs_run", "?"),
              (d["valid"] or {}).get("hr@10", float("nan")), float((d["final"] or {}).get("preinfer_s", float("nan"))),
              float((d["final"] or {}).get("train_s") or float("nan")), d["eval_wall_s"]] for d in details])
        write_report(cfg.report, {"split": split_desc, "split_counts": split0.counts(), "metrics": list(METRICS),
                                  "rows": rows, "baselines_note": note, "checkpoints": details}, md,
                     cfg.results_dir)
    return 0


def per_user_hits(ck, users: np.ndarray, part: str = "test") -> np.ndarray:
    """Per-user HR@10 for a subset (used by the bundle's probe and by tests)."""
    scorer = make_scorer(ck.model)
    seen = ck.split.seen(part)
    targets = ck.split.test if part == "test" else ck.split.valid
    scores = scorer(users, [seen[u] for u in users])
    return per_user_metrics(scores, [seen[u] for u in users], [targets[u] for u in users], ("hr@10",))["hr@10"]
