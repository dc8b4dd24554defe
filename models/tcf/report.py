"""`llmrec eval tcf`'s report: every variant beside the baselines, one section per data preparation.

Checkpoints on the same split (same prepared data, same leave-one-out targets) form one section;
a section states the preparation its checkpoints really used (read from their configs) and
carries its own baselines, so no figure is ever set beside one measured on another split.
Within a section, checkpoints sharing a label are seeds of one variant; every row gets its paired
difference over users against the reference variant, on all test users and on the users whose
test item is rare in training (the items text towers are meant for).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.comparison import Run, fmt_diff, fmt_mean_sd, group, summarise
from models.data.splits import Split
from models.metrics import evaluate_per_user
from models.reports import markdown_table
from models.serving_cost import user_encoder_ms
from models.tcf.checkpoint import load_checkpoint
from models.tcf.train import make_scorer
from models.training.state import read_log

METRICS = ("hr@10", "ndcg@10")
TIES = ("interactions are ordered by timestamp; those with the same timestamp keep the order of the input "
        "file (a stable sort), and an item seen twice counts once, at its latest position")


@dataclass
class Section:
    split: Split
    description: str
    runs: list[Run]


def split_key(split: Split) -> str:
    h = hashlib.sha256()
    for part in (split.train, split.valid, split.test):
        for items in part:
            h.update(np.asarray(items, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


def preparation(config: dict[str, Any], num_items: int) -> str:
    """The data preparation a checkpoint was trained and evaluated on, in words, from its config."""
    data, recipe, s = config.get("data") or {}, config.get("recipe") or {}, config["model"]["max_seq_len"]
    keep = recipe.get("keep_last", -1)
    kept = ("each user's whole history kept (SASRec trains on windows of max_seq_len + 1 items covering it)"
            if keep == 0 else f"each user's last {s + 3 if keep < 0 else keep} interactions kept")
    name = (config.get("prepared") or {}).get("name", "the data")
    return (f"{name}, users with fewer than {data.get('min_user_interactions', 0)} interactions dropped, {kept}; "
            f"leave-one-out by time (valid = second-to-last item, test = last); {TIES}; full ranking over all "
            f"{num_items} items, the user's train (+ valid) items masked")


def rare_targets(split: Split, max_count: int) -> np.ndarray:
    """Mask over split.eval_users("test"): the test item has at most `max_count` training interactions."""
    counts = np.bincount(np.concatenate(split.train).astype(np.int64), minlength=split.num_items)
    return np.array([counts[split.test[u][0]] <= max_count for u in split.eval_users("test")], dtype=bool)


def checkpoint_run(folder: Path, label: str | None, device: Any, serving_cost: bool,
                   length: int) -> tuple[Run, Split, str]:
    """Test metrics per user of one checkpoint, with what it cost (training, and serving when asked)."""
    t0 = time.time()
    ck = load_checkpoint(folder)
    label = label or default_label(ck.config)
    ck.model.to(device)
    log = read_log(folder)
    _, per_user = evaluate_per_user(make_scorer(ck.model), ck.split, "test", METRICS)
    best = ck.config.get("best") or {}
    info = {"checkpoint": str(folder), "seed": (log.get("train") or {}).get("seed"), "best_epoch": best.get("epoch"),
            "epochs_run": len(log.get("epochs", [])), "stopped": log.get("stopped"),
            "train_s": (log.get("wall_s") or {}).get("train"), "validation_s": (log.get("wall_s") or {}).get("validation"),
            "preinfer_s": log.get("preinfer_s"), "device": log.get("device"), "precision": log.get("precision"),
            "command": log.get("command"), "model": ck.config.get("model"), "lm": ck.config.get("lm"),
            "recipe": ck.config.get("recipe"), "eval_s": time.time() - t0}
    if serving_cost:
        info["user_encoder"] = user_encoder_ms(folder, length)
    return Run(label, per_user, best.get("valid"), info), ck.split, preparation(ck.config, ck.split.num_items)


def baseline_runs(split: Split) -> list[Run]:
    from models.baselines import run_baselines_detailed

    return [Run(r.name, r.test_per_user, r.valid, {"params": r.params, "fit_s": r.fit_seconds, "baseline": True})
            for r in run_baselines_detailed(split, metrics=list(METRICS))]


def default_label(cfg: dict[str, Any]) -> str:
    tower = cfg["user_tower"].upper()
    if cfg["item_tower"] == "id":
        return f"ID-{tower}"
    lm = cfg["lm"]
    depth = f", K={lm['depth']}" if lm["depth"] else ""
    return f"text({Path(cfg['text_encoder']['encoder']).name}, N={lm['unfreeze_top']}{depth})-{tower}"


def _cost(rows_info: list[dict[str, Any]]) -> str:
    costs = [i["user_encoder"]["p50_ms"] for i in rows_info if i.get("user_encoder")]
    if not costs:
        return "-"
    return f"{np.mean(costs):.2f} (L={rows_info[0]['user_encoder']['length']})"


def _minutes(rows_info: list[dict[str, Any]], key: str) -> str:
    vals = [i[key] for i in rows_info if i.get(key) is not None]
    return f"{np.mean(vals) / 60:.1f}" if vals else "-"


def section_markdown(sec: Section, summary: list[dict[str, Any]], reference: str | None, rare_n: int,
                     rare_max: int) -> str:
    header = ["variant", "seeds", "valid HR@10", "test HR@10", "test NDCG@10",
              f"HR@10, rare test items (<= {rare_max} train int., {rare_n} users)",
              f"Δ HR@10 vs {reference or '-'} (paired, ± SE)", "Δ HR@10 rare vs ref.", "best / run epochs",
              "train min", "device, precision", "user encoder ms (B=1)"]
    rows = []
    for s in summary:
        info = s["runs"]
        baseline = info[0].get("baseline", False)
        epochs = "-" if baseline else ", ".join(f"{i['best_epoch']}/{i['epochs_run']}" for i in info)
        device = "-" if baseline else f"{info[0]['device']}, {info[0]['precision']}"
        rare = "hr@10|rare"
        rows.append([s["label"], s["seeds"], (s["valid"] or {}).get("hr@10", float("nan")),
                     fmt_mean_sd(s["test"]["hr@10"], s["seed_sd"]["hr@10"]),
                     fmt_mean_sd(s["test"]["ndcg@10"], s["seed_sd"]["ndcg@10"]),
                     fmt_mean_sd(s["test"][rare], s["seed_sd"][rare]),
                     fmt_diff(s["vs_reference"].get("hr@10")), fmt_diff(s["vs_reference"].get(rare)), epochs,
                     "fit s " + f"{info[0]['fit_s']:.1f}" if baseline else _minutes(info, "train_s"), device,
                     "-" if baseline else _cost(info)])
    counts = sec.split.counts()
    commands = "".join(f"- {s['label']}: `{i['command']}`\n" for s in summary for i in s["runs"][:1]
                       if i.get("command"))
    return (f"**Data**: {sec.description}. {counts['evaluated_users_test']} test users; "
            f"{counts['train_interactions']} training interactions.\n\n" + markdown_table(header, rows)
            + "\nTraining commands (first seed; the others differ by `--train.seed` and `--out`):\n\n" + commands)


def build(folders: list[Path], labels: list[str], reference: str, rare_max: int, baselines: bool, device: Any,
          serving_cost: bool, length: int) -> tuple[dict[str, Any], str]:
    """(JSON payload, Markdown) of the report over `folders`."""
    sections: dict[str, Section] = {}
    for i, folder in enumerate(folders):
        label = labels[i] if i < len(labels) else None
        run, split, description = checkpoint_run(folder, label, device, serving_cost, length)
        sec = sections.setdefault(split_key(split), Section(split, description, []))
        sec.runs.append(run)
    payload: dict[str, Any] = {"metrics": list(METRICS), "rare_max_train_interactions": rare_max, "sections": []}
    md = []
    for sec in sections.values():
        runs = sec.runs + (baseline_runs(sec.split) if baselines else [])
        variants = group(runs)
        ref = reference if reference in {v.label for v in variants} else None
        rare = rare_targets(sec.split, rare_max)
        summary = summarise(variants, METRICS, ref, {"rare": rare})
        payload["sections"].append({"data": sec.description, "split_counts": sec.split.counts(), "reference": ref,
                                    "rare_users": int(rare.sum()), "variants": summary})
        md.append(section_markdown(sec, summary, ref, int(rare.sum()), rare_max))
    return payload, "\n".join(md)

