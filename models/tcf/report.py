"""`llmrec eval tcf`'s report: every variant beside the baselines, one section per data preparation.

Checkpoints on the same split (same prepared data, same leave-one-out targets) form one section;
a section states the preparation its checkpoints really used (read from their configs) and
carries its own baselines, so no figure is ever set beside one measured on another split.
Within a section, checkpoints sharing a label are seeds of one variant; every row gets its paired
difference over users against the reference variant, on all test users and on the users whose
test item is rare in training (the items text towers are meant for).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import CheckpointError, reading_checkpoint
from models.comparison import (
    Run,
    baseline_runs,
    fmt_diff,
    fmt_mean_sd,
    group,
    summarise,
    training_info,
    variants_table,
)
from models.data.splits import Split
from models.metrics import evaluate_per_user
from models.reports import markdown_table
from models.serving_cost import user_encoder_ms
from models.tcf.checkpoint import LoadedCheckpoint, load_checkpoint
from models.tcf.holdout import (
    cold_targets,
    content_knn,
    held_out_of,
    held_seen,
    hold_out,
    random_new_expected,
    text_embeddings,
    text_popularity,
)
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
    watched: list[np.ndarray] | None = None  # per user: held-out items it interacted with (masked at eval)
    text: Any = None  # the text encoder config of a text checkpoint of the section (for the content baselines)
    item_texts: list[str] | None = None
    history_window: int = 50  # the SASRec window of the section's first checkpoint (content kNN reads as much)


@dataclass
class Checkpointed:
    """One checkpoint's test run and what its report section needs from it."""

    run: Run
    split: Split
    description: str
    name: str
    held: np.ndarray
    watched: list[np.ndarray] | None
    text: Any
    item_texts: list[str]
    history_window: int


def preparation(config: dict[str, Any], num_items: int) -> str:
    """The data preparation a checkpoint was trained and evaluated on, in words, from its config."""
    data, recipe, s = config.get("data") or {}, config.get("recipe") or {}, config["model"]["max_seq_len"]
    keep = recipe.get("keep_last", -1)
    held = held_out_of(config)
    cold = (f"; cold start: {len(held)} items ({config['holdout']['share']:.0%} of those with interactions, seed "
            f"{config['holdout']['seed']}) held out of training with all their interactions, scored through their "
            f"text as items added by UpsertItems (an ID tower cannot score them: they rank last); the held-out items a "
            f"user interacted with are masked too") if len(held) else ""
    kept = ("each user's whole history kept (SASRec trains on windows of max_seq_len + 1 items covering it)"
            if keep == 0 else f"each user's last {s + 3 if keep < 0 else keep} interactions kept")
    name = (config.get("prepared") or {}).get("name", "the data")
    sample = config.get("validation_users")  # absent in checkpoints written before validation was sampled
    valid = "" if not sample or sample["sampled"] >= sample["of"] else \
        (f"; the epoch chosen on {sample['sampled']} of the {sample['of']} validation users (a fixed sample, seed "
         f"{sample['seed']}), the test part on every user")
    return (f"{name}, users with fewer than {data.get('min_user_interactions', 0)} interactions dropped, {kept}; "
            f"leave-one-out by time (valid = second-to-last item, test = last); {TIES}; full ranking over all "
            f"{num_items} items, the user's train (+ valid) items masked{cold}{valid}")


def rare_targets(split: Split, max_count: int) -> np.ndarray:
    """Mask over split.eval_users("test"): the test item has at most `max_count` training interactions."""
    counts = np.bincount(np.concatenate(split.train).astype(np.int64), minlength=split.num_items)
    return np.array([counts[split.test[u][0]] <= max_count for u in split.eval_users("test")], dtype=bool)


def watched_held_out(ck: LoadedCheckpoint, held: np.ndarray, folder: Path) -> list[np.ndarray] | None:
    """Per user, the held-out items it interacted with (to mask at eval); None when nothing is held out.
    A checkpoint written before they were stored gets them from its data, rebuilt as it was prepared,
    and only if the rebuilt split minus the held-out items is exactly the stored one."""
    if not len(held):
        return None
    if ck.held_seen is not None:
        return ck.held_seen
    from common.config import from_dict
    from models.data.config import DataConfig
    from models.data.loaders import load_data
    from models.tcf.train import prepared_split

    cfg = ck.config
    data_cfg = from_dict(DataConfig, cfg["data"])
    _, full = prepared_split(load_data(data_cfg), cfg["model"]["max_seq_len"], (cfg.get("recipe") or {}).get(
        "keep_last", -1), data_cfg.split_seed)
    if hold_out(full, held).fingerprint() != ck.split.fingerprint():
        raise CheckpointError(f"{folder}: its data, rebuilt, no longer gives its stored split; cannot tell which "
                              "held-out items each user watched (retrain: new checkpoints store them)")
    return held_seen(full, held)


def checkpoint_run(folder: Path, label: str | None, device: Any, serving_cost: bool, length: int) -> Checkpointed:
    """Test metrics per user of one checkpoint, with what it cost (training, and serving when asked).
    Every item the user interacted with is masked, held out of training or not."""
    with reading_checkpoint(folder, "llmrec train tcf"):
        ck = load_checkpoint(folder)
        held = held_out_of(ck.config)
        watched = watched_held_out(ck, held, folder)
    ck.model.to(device)
    _, per_user = evaluate_per_user(make_scorer(ck.model, held), ck.split, "test", METRICS, mask=watched)
    info = training_info(folder, read_log(folder), ck.config)
    if serving_cost:
        info["user_encoder"] = user_encoder_ms(folder, length)
    best = ck.config.get("best") or {}
    return Checkpointed(Run(label or default_label(ck.config), per_user, best.get("valid"), info), ck.split,
                        preparation(ck.config, ck.split.num_items),
                        (ck.config.get("prepared") or {}).get("name", "unnamed data"), held, watched, ck.text,
                        ck.item_texts, ck.model.cfg.max_seq_len)


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


def content_knn_label(text: Any) -> str:
    """"content kNN (MiniLM)": the row's name says whose embeddings it compares."""
    encoder = str(getattr(text, "encoder", "minilm"))
    return f"content kNN ({ {'minilm': 'MiniLM', 'smollm2': 'SmolLM2'}.get(encoder, Path(encoder).name)})"


TEXT_POPULARITY = "popularity by text neighbours"
RANDOM_NEW = "random among new items (told the item is new)"


def cold_start_runs(sec: Section) -> list[Run]:
    """The new-item baselines on the section's split (same users, same masking as every row): content kNN
    and popularity by text neighbours over the same text embeddings, and random among the new items."""
    runs = []
    if sec.text is not None and sec.item_texts is not None:
        start = time.perf_counter()
        emb = text_embeddings(sec.text, sec.item_texts)
        embed_s = time.perf_counter() - start
        for label, scorer, params in [
            (content_knn_label(sec.text), content_knn(emb, sec.history_window), {"recent": sec.history_window}),
            (TEXT_POPULARITY, text_popularity(emb, sec.split.train, sec.held_out), {"k": 10}),
        ]:
            _, per_user = evaluate_per_user(scorer, sec.split, "test", METRICS, mask=sec.watched)
            runs.append(Run(label, per_user, None, {"params": {**params, "encoder": str(sec.text.encoder)},
                                                    "fit_s": embed_s, "baseline": True}))
    runs.append(Run(RANDOM_NEW, random_new_expected(sec.split, sec.held_out, sec.watched), None,
                    {"params": {"expectation": True}, "fit_s": 0.0, "baseline": True}))
    return runs


def cold_start_markdown(rows: list[dict[str, Any]], reference: str | None, users: int) -> str:
    """The new-item table: every row on the users whose test item is new, paired against content kNN."""
    header = ["variant", "seeds", "HR@10 new", "NDCG@10 new", f"Δ HR@10 new vs {reference}",
              f"Δ NDCG@10 new vs {reference}"]
    body = [[r["label"], r["seeds"], fmt_mean_sd(r["test"]["hr@10|new"], r["seed_sd"]["hr@10|new"]),
             fmt_mean_sd(r["test"]["ndcg@10|new"], r["seed_sd"]["ndcg@10|new"]),
             fmt_diff(r["vs_reference"].get("hr@10|new")), fmt_diff(r["vs_reference"].get("ndcg@10|new"))]
            for r in rows]
    return (f"\n**New items** ({users} test users whose test item was held out of training; full ranking over "
            "all items, every item the user interacted with masked, held out or not; paired Δ ± one SE on these "
            "users):\n\n" + markdown_table(header, body))


def build(folders: list[Path], labels: list[str], references: list[str], rare_max: int, baselines: bool, device: Any,
          serving_cost: bool, length: int) -> tuple[dict[str, Any], str]:
    """(JSON payload, Markdown) of the report over `folders`."""
    sections: dict[str, Section] = {}
    names = []
    for i, folder in enumerate(folders):
        label = labels[i] if i < len(labels) else None
        c = checkpoint_run(folder, label, device, serving_cost, length)
        names.append(c.name)
        sec = sections.setdefault(c.split.fingerprint(), Section(c.split, c.description, [], c.held, c.watched,
                                                                 history_window=c.history_window))
        if sec.text is None and c.text is not None:
            sec.text, sec.item_texts = c.text, c.item_texts
        sec.runs.append(c.run)
    payload: dict[str, Any] = {"dataset": names[0], "metrics": list(METRICS), "rare_max_train_interactions": rare_max, "sections": []}
    md = []
    for sec in sections.values():
        runs = sec.runs + (baseline_runs(sec.split, METRICS, test_mask=sec.watched) if baselines else [])
        if baselines and len(sec.held_out):
            runs += cold_start_runs(sec)
        variants = group(runs)
        ref = next((r for r in references if r in {v.label for v in variants}), None)
        subsets = {"rare": rare_targets(sec.split, rare_max)}
        entry: dict[str, Any] = {}
        if len(sec.held_out):
            subsets["new"] = cold_targets(sec.split, sec.held_out)
            subsets["known"] = ~subsets["new"]
        summary = summarise(variants, METRICS, ref, subsets)
        cold_md = ""
        if len(sec.held_out):
            knn = content_knn_label(sec.text)
            cold_ref = knn if knn in {v.label for v in variants} else ref
            cold = summarise(variants, METRICS, cold_ref, {"new": subsets["new"]})
            entry["new_items"] = {"reference": cold_ref, "masked_watched_held_out": sum(len(w) for w in sec.watched or []),
                                  "rows": [{"label": r["label"], "seeds": r["seeds"],
                                            **{k: r[k] for k in ("test", "seed_sd", "vs_reference")}} for r in cold]}
            cold_md = cold_start_markdown(cold, cold_ref, int(subsets["new"].sum()))
        payload["sections"].append({"data": sec.description, "split_counts": sec.split.counts(), "reference": ref,
                                    "held_out_items": sec.held_out.tolist(),
                                    **{f"{k}_users": int(m.sum()) for k, m in subsets.items()}, "variants": summary,
                                    **entry})
        md.append(section_markdown(sec, summary, ref, subsets, rare_max) + cold_md)
    return payload, "\n".join(md)

