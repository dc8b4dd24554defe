"""`llmrec eval cllm4rec`'s report: every CLLM4Rec variant beside the baselines on one split.

Checkpoints sharing a label are seeds of one variant; every row gets its paired difference over
users against the reference (EASE by default) on each of the protocol's metrics, the time its
training took and where, and what its user encoder costs to serve. All checkpoints must share
one split: a figure measured on another split is never set beside these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, reading_checkpoint
from models.cllm4rec.checkpoint import load_checkpoint
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.comparison import Run, baseline_runs, group, summarise, training_info, variants_table
from models.data.splits import Split
from models.metrics import PROTOCOL_METRICS, evaluate_per_user
from models.serving_cost import user_encoder_ms
from models.training.state import read_log


def default_label(cfg: dict[str, Any]) -> str:
    lm = cfg["lm"]
    levers = [f"LoRA r{lm['lora_rank']}" if lm["lora_rank"] else "", f"top {lm['unfreeze_top']}" if lm["unfreeze_top"]
              else ""]
    blocks = f"{lm['depth']} blocks" if lm["depth"] else "all blocks"
    model = cfg.get("model", {})
    head = [f"{model['pooling']} pooling" if model.get("pooling", "last") != "last" else "",
            "untied item rows" if model.get("tie_items") is False else ""]
    return (f"{cfg.get('schedule')} schedule, {blocks}, " + (" + ".join(x for x in levers if x) or "frozen LM")
            + "".join(f", {x}" for x in head if x))


def checkpoint_run(folder: Path, label: str | None, device: Any, batch_size: int, serving_cost: bool,
                   length: int) -> tuple[Run, Split, dict[str, Any]]:
    """Per-user test metrics of one checkpoint (in split.eval_users("test") order), with its costs."""
    with reading_checkpoint(folder, "llmrec train cllm4rec"):
        loaded = load_checkpoint(folder)
    loaded.model.to(device)
    data, split = loaded.training_data()
    prompts = PromptBuilder(loaded.template, loaded.tokenizer.vocab, loaded.max_history, loaded.tokenizer.pad_token_id)
    scorer = RecScorer(loaded.model, prompts, History.build(data), batch_size)
    users = split.eval_users("test")
    seen = split.seen("test")
    by_length = users[np.argsort([len(seen[u]) for u in users], kind="stable")]  # similar prompt lengths per batch
    scored, per_user = evaluate_per_user(scorer, split, "test", PROTOCOL_METRICS[split.protocol], batch_size=64,
                                         users=by_length, progress=True)
    back = np.argsort(scored)
    log = read_log(folder)
    info = training_info(folder, log, loaded.config) | {"validation_curve": [
        {"stage": e["stage"], "epoch": e["epoch"], **e.get("valid", {})} for e in log.get("epochs", [])]}
    if serving_cost:
        info["user_encoder"] = user_encoder_ms(folder, length)
    best = loaded.config.get("best") or {}
    run = Run(label or default_label(loaded.config), {m: v[back] for m, v in per_user.items()}, best.get("valid"), info)
    return run, split, data.summary()


def build(folders: list[Path], labels: list[str], reference: str, baselines: bool, device: Any, batch_size: int,
          serving_cost: bool, length: int) -> tuple[dict[str, Any], str]:
    """(JSON payload, Markdown body) of the report over `folders`."""
    runs, split, data = [], None, None
    for i, folder in enumerate(folders):
        run, run_split, data = checkpoint_run(folder, labels[i] if i < len(labels) else None, device, batch_size,
                                              serving_cost, length)
        if split is not None and run_split.fingerprint() != split.fingerprint():
            raise ConfigError(f"{folder}: its split differs from {folders[0]}'s; compare like with like")
        split = run_split
        runs.append(run)
    assert split is not None and data is not None
    metrics = PROTOCOL_METRICS[split.protocol]
    runs += baseline_runs(split, metrics) if baselines else []
    variants = group(runs)
    ref = reference if reference in {v.label for v in variants} else None
    summary = summarise(variants, metrics, ref)
    counts = split.counts()
    desc = (f"{data['name']} ({data['users']} users, {data['items']} items, {data['interactions']} interactions), "
            f"{split.protocol} split (seed {split.seed}): each user's items shuffled with the seed and split "
            f"80/10/10 into train/valid/test; full ranking over all items, the user's train + valid items masked; "
            f"{counts['evaluated_users_test']} test users")
    table = variants_table(summary, [(f"test {m}", m) for m in metrics], "recall@20",
                           [(m, m) for m in metrics], ref)
    payload = {"dataset": data["name"], "data": desc, "split_counts": counts, "metrics": list(metrics), "reference": ref, "variants": summary}
    return payload, f"**Data**: {desc}.\n\n{table}"
