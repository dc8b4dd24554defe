"""`llmrec eval tcf`'s report: every variant beside the baselines, one section per data preparation.

Checkpoints on the same split (same prepared data, same leave-one-out targets) form one section;
a section states the preparation its checkpoints really used (read from their configs) and
carries its own baselines, so no figure is ever set beside one measured on another split.
Within a section, checkpoints sharing a label are seeds of one variant; every row gets its paired
difference over users against the reference variant, on all test users and on the users whose
test item is rare in training (the items text towers are meant for).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.errors import reading_checkpoint
from models.comparison import Run, baseline_runs, group, summarise, training_info, variants_table
from models.data.splits import Split
from models.metrics import evaluate_per_user
from models.serving_cost import user_encoder_ms
from models.tcf.checkpoint import load_checkpoint
from models.tcf.holdout import cold_targets, held_out_of
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
    held_out: np.ndarray  # item rows kept out of training (cold-start protocol); empty: none


def preparation(config: dict[str, Any], num_items: int) -> str:
    """The data preparation a checkpoint was trained and evaluated on, in words, from its config."""
    data, recipe, s = config.get("data") or {}, config.get("recipe") or {}, config["model"]["max_seq_len"]
    keep = recipe.get("keep_last", -1)
    held = held_out_of(config)
    cold = (f"; cold start: {len(held)} items ({config['holdout']['share']:.0%} of those with interactions, seed "
            f"{config['holdout']['seed']}) held out of training with all their interactions, scored through their "
            f"text as items added by UpsertItems (an ID tower cannot score them: they rank last)") if len(held) else ""
    kept = ("each user's whole history kept (SASRec trains on windows of max_seq_len + 1 items covering it)"
            if keep == 0 else f"each user's last {s + 3 if keep < 0 else keep} interactions kept")
    name = (config.get("prepared") or {}).get("name", "the data")
    return (f"{name}, users with fewer than {data.get('min_user_interactions', 0)} interactions dropped, {kept}; "
            f"leave-one-out by time (valid = second-to-last item, test = last); {TIES}; full ranking over all "
            f"{num_items} items, the user's train (+ valid) items masked{cold}")


def rare_targets(split: Split, max_count: int) -> np.ndarray:
    """Mask over split.eval_users("test"): the test item has at most `max_count` training interactions."""
    counts = np.bincount(np.concatenate(split.train).astype(np.int64), minlength=split.num_items)
    return np.array([counts[split.test[u][0]] <= max_count for u in split.eval_users("test")], dtype=bool)


def checkpoint_run(folder: Path, label: str | None, device: Any, serving_cost: bool,
                   length: int) -> tuple[Run, Split, str, str, np.ndarray]:
    """Test metrics per user of one checkpoint, with what it cost (training, and serving when asked)."""
    with reading_checkpoint(folder, "llmrec train tcf"):
        ck = load_checkpoint(folder)
    ck.model.to(device)
    held = held_out_of(ck.config)
    _, per_user = evaluate_per_user(make_scorer(ck.model, held), ck.split, "test", METRICS)
    info = training_info(folder, read_log(folder), ck.config)
    if serving_cost:
        info["user_encoder"] = user_encoder_ms(folder, length)
    best = ck.config.get("best") or {}
    return (Run(label or default_label(ck.config), per_user, best.get("valid"), info), ck.split,
            preparation(ck.config, ck.split.num_items), (ck.config.get("prepared") or {}).get("name", "unnamed data"),
            held)


def default_label(cfg: dict[str, Any]) -> str:
    tower = cfg["user_tower"].upper()
    if cfg["item_tower"] == "id":
        return f"ID-{tower}"
    lm = cfg["lm"]
    depth = f", K={lm['depth']}" if lm["depth"] else ""
    text = f"text({Path(cfg['text_encoder']['encoder']).name}, N={lm['unfreeze_top']}{depth})"
    return f"{'hybrid ' if cfg['item_tower'] == 'hybrid' else ''}{text}-{tower}"


def section_markdown(sec: Section, summary: list[dict[str, Any]], reference: str | None,
                     subsets: dict[str, np.ndarray], rare_max: int) -> str:
    counts = sec.split.counts()
    shown = [("test HR@10", "hr@10"), ("test NDCG@10", "ndcg@10"),
             (f"HR@10, rare items (<= {rare_max} train interactions: {int(subsets['rare'].sum())} users)", "hr@10|rare")]
    diffs = [("HR@10", "hr@10"), ("HR@10 rare", "hr@10|rare")]
    if "new" in subsets:
        shown += [(f"HR@10, new items ({int(subsets['new'].sum())} users)", "hr@10|new"),
                  (f"HR@10, known items ({int(subsets['known'].sum())} users)", "hr@10|known")]
        diffs += [("HR@10 new", "hr@10|new")]
    return (f"**Data**: {sec.description}. {counts['evaluated_users_test']} test users; "
            f"{counts['train_interactions']} training interactions.\n\n"
            + variants_table(summary, shown, "hr@10", diffs, reference))


def build(folders: list[Path], labels: list[str], references: list[str], rare_max: int, baselines: bool, device: Any,
          serving_cost: bool, length: int) -> tuple[dict[str, Any], str]:
    """(JSON payload, Markdown) of the report over `folders`."""
    sections: dict[str, Section] = {}
    names = []
    for i, folder in enumerate(folders):
        label = labels[i] if i < len(labels) else None
        run, split, description, name, held = checkpoint_run(folder, label, device, serving_cost, length)
        names.append(name)
        sec = sections.setdefault(split.fingerprint(), Section(split, description, [], held))
        sec.runs.append(run)
    payload: dict[str, Any] = {"dataset": names[0], "metrics": list(METRICS), "rare_max_train_interactions": rare_max, "sections": []}
    md = []
    for sec in sections.values():
        runs = sec.runs + (baseline_runs(sec.split, METRICS) if baselines else [])
        variants = group(runs)
        ref = next((r for r in references if r in {v.label for v in variants}), None)
        subsets = {"rare": rare_targets(sec.split, rare_max)}
        if len(sec.held_out):
            subsets["new"] = cold_targets(sec.split, sec.held_out)
            subsets["known"] = ~subsets["new"]
        summary = summarise(variants, METRICS, ref, subsets)
        payload["sections"].append({"data": sec.description, "split_counts": sec.split.counts(), "reference": ref,
                                    "held_out_items": sec.held_out.tolist(),
                                    **{f"{k}_users": int(m.sum()) for k, m in subsets.items()}, "variants": summary})
        md.append(section_markdown(sec, summary, ref, subsets, rare_max))
    return payload, "\n".join(md)

