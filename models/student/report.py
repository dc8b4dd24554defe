"""`llmrec eval student`'s report: distilled students (several seeds per label), the same architecture
trained without the teacher, the teacher itself and the baselines, on the teacher's split; paired Δ ± SE
against the teacher (and a second reference, EASE by default) and each student's top-K overlap with the
teacher, user by user. Every row must share one split: the students' recorded split is checked against the
teacher's, and the teacher's against the data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, reading_checkpoint
from models.cllm4rec.checkpoint import load_checkpoint as load_teacher
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.comparison import Run, baseline_runs, fmt_diff, group, summarise, training_info, variants_table
from models.data.splits import Split
from models.metrics import PROTOCOL_METRICS, evaluate_per_user, mask_seen, top_k
from models.reports import markdown_table
from models.serving_cost import user_encoder_ms
from models.stats import mean_se
from models.student.checkpoint import load_checkpoint
from models.student.train import StudentScorer
from models.training.state import read_log

Scorer = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]


def default_label(cfg: dict[str, Any]) -> str:
    m = cfg["model"]
    who = "student without teacher" if cfg.get("no_teacher") or not _uses_teacher(cfg) else "student"
    return f"{who} (SASRec {m['blocks']}x{m['dim']}, {m['max_seq_len']} items)"


def _uses_teacher(cfg: dict[str, Any]) -> bool:
    d = cfg.get("distill") or {}
    return float(d.get("rank_weight", 0)) > 0 or float(d.get("embed_weight", 0)) > 0


def _recording(scorer: Scorer, k: int, tops: dict[int, np.ndarray]) -> Scorer:
    """`scorer` that also keeps each user's top-k (seen items masked, as the metrics rank)."""
    def scored(users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        scores = scorer(users, history)
        for u, row in zip(users, top_k(mask_seen(scores, history), k), strict=True):
            tops[int(u)] = row
        return scores

    return scored


def _test_run(scorer: Scorer, split: Split, k: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(per-user test metrics in split.eval_users("test") order, top-k [users, k] in the same order)."""
    tops: dict[int, np.ndarray] = {}
    users, per_user = evaluate_per_user(_recording(scorer, k, tops), split, "test", PROTOCOL_METRICS[split.protocol],
                                        batch_size=64, progress=True)
    return per_user, np.stack([tops[int(u)] for u in users])


def student_run(folder: Path, label: str | None, k: int, serving_cost: bool, length: int
                ) -> tuple[Run, Split, dict[str, Any], np.ndarray]:
    with reading_checkpoint(folder, "llmrec train student"):
        loaded = load_checkpoint(folder)
    data, split, hist = loaded.training_data()
    per_user, tops = _test_run(StudentScorer(loaded.model, hist), split, k)
    log = read_log(folder)
    info = training_info(folder, log, loaded.config) | {
        "teacher": loaded.config.get("teacher"), "distill": loaded.config.get("distill"),
        "prefixes": loaded.config.get("prefixes"), "teacher_outputs": loaded.config.get("teacher_outputs")}
    if serving_cost:
        info["user_encoder"] = user_encoder_ms(folder, length)
    best = loaded.config.get("best") or {}
    run = Run(label or default_label(loaded.config), per_user, best.get("valid"), info)
    return run, split, data.summary(), tops


def teacher_run(folder: Path, label: str, device: Any, batch_size: int, k: int, serving_cost: bool, length: int
                ) -> tuple[Run, Split, np.ndarray]:
    with reading_checkpoint(folder, "llmrec train cllm4rec"):
        loaded = load_teacher(folder)
    loaded.model.to(device)
    data, split = loaded.training_data()
    prompts = PromptBuilder(loaded.template, loaded.tokenizer.vocab, loaded.max_history, loaded.tokenizer.pad_token_id)
    per_user, tops = _test_run(RecScorer(loaded.model, prompts, History.build(data), batch_size), split, k)
    info = training_info(folder, read_log(folder), loaded.config)
    if serving_cost:
        info["user_encoder"] = user_encoder_ms(folder, length)
    best = loaded.config.get("best") or {}
    return Run(label, per_user, best.get("valid"), info), split, tops


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: the share of a's items that are also in b's (both [users, k])."""
    return np.array([len(set(x.tolist()) & set(y.tolist())) / a.shape[1] for x, y in zip(a, b, strict=True)])


def build(folders: list[Path], labels: list[str], teacher: Path | None, cli: Any, device: Any
          ) -> tuple[dict[str, Any], str]:
    """(JSON payload, Markdown body) of the report; `cli` is models.student.cli.EvalCli."""
    runs, tops, split, data = [], [], None, None
    for i, folder in enumerate(folders):
        run, run_split, data, top = student_run(folder, labels[i] if i < len(labels) else None, cli.overlap_k,
                                                cli.serving_cost, cli.serving_length)
        if split is not None and run_split.fingerprint() != split.fingerprint():
            raise ConfigError(f"{folder}: its split differs from {folders[0]}'s; compare like with like")
        split = run_split
        runs.append(run)
        tops.append(top)
    assert split is not None and data is not None
    teacher = Path(teacher or runs[0].info["teacher"]["checkpoint"])
    t_run, t_split, t_top = teacher_run(teacher, cli.teacher_label, device, cli.batch_size, cli.overlap_k,
                                        cli.serving_cost, cli.serving_length)
    if t_split.fingerprint() != split.fingerprint():
        raise ConfigError(f"{teacher}: the teacher's split differs from the students'; pass the teacher they were "
                          "distilled from (--teacher)")
    metrics = PROTOCOL_METRICS[split.protocol]
    all_runs = [*runs, t_run, *(baseline_runs(split, metrics) if cli.baselines else [])]
    variants = group(all_runs)
    names = {v.label for v in variants}
    ref = cli.reference or cli.teacher_label
    for flag, label in (("--reference", ref), ("--second-reference", cli.second_reference)):
        if label and label not in names:  # a paired column silently missing is worse than a refusal
            raise ConfigError(f"{flag} {label!r} names no row; rows: {', '.join(sorted(names))}")
    summary = summarise(variants, metrics, ref)
    second = cli.second_reference if cli.second_reference and cli.second_reference != ref else None
    if second:
        for row, other in zip(summary, summarise(variants, metrics, second), strict=True):
            row["vs_second_reference"] = other["vs_reference"]
    per_label: dict[str, list[np.ndarray]] = {}
    for run, top in zip(runs, tops, strict=True):
        per_label.setdefault(run.label, []).append(overlap(top, t_top))
    for row in summary:
        if row["label"] in per_label:
            seeds = per_label[row["label"]]
            row["overlap_with_teacher"] = {"k": cli.overlap_k, **mean_se(np.mean(seeds, axis=0)).as_dict(),
                                           "seed_means": [float(s.mean()) for s in seeds]}
    counts = split.counts()
    desc = (f"{data['name']} ({data['users']} users, {data['items']} items, {data['interactions']} interactions), "
            f"{split.protocol} split (seed {split.seed}), the teacher's: each user's items shuffled with the seed and "
            f"split 80/10/10 into train/valid/test; full ranking over all items, the user's train + valid items "
            f"masked; {counts['evaluated_users_test']} test users")
    table = variants_table(summary, [(f"test {m}", m) for m in metrics], "recall@20", [(m, m) for m in metrics], ref)
    extra_rows = []
    for row in summary:
        ov = row.get("overlap_with_teacher")
        cost = [r.get("teacher_outputs") for r in row["runs"] if r.get("teacher_outputs")]
        extra_rows.append([
            row["label"], fmt_diff((row.get("vs_second_reference") or {}).get("recall@20")),
            f"{ov['mean']:.4f} ± {ov['se']:.4f}" if ov else "-",
            f"{cost[0]['cost']['wall_s']:.1f} ({cost[0]['cost']['prompts']} prompts, {cost[0]['cost']['device']})"
            if cost else "-"])
    extra = markdown_table(["variant", f"Δ recall@20 vs {second or '-'} (paired Δ ± SE)",
                            f"top-{cli.overlap_k} overlap with the teacher", "teacher outputs s (computed once)"],
                           extra_rows)
    payload = {"dataset": data["name"], "data": desc, "split_counts": counts, "metrics": list(metrics),
               "reference": ref, "second_reference": second, "teacher": str(teacher), "variants": summary}
    return payload, f"**Data**: {desc}.\n\n{table}\n{extra}"
