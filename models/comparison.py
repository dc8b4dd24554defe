"""Variant tables for the quality reports: several trained runs (and baselines) on one split,
grouped by label (runs sharing a label are seeds of one variant), with paired differences over
users against a reference row.

Every run carries its per-user test metrics in `split.eval_users("test")` order, so two rows are
compared user by user (models.stats.paired_difference). A variant with several seeds is compared
through its per-user mean over seeds; the spread of its per-seed means is reported beside it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.data.splits import Split
from models.reports import markdown_table
from models.stats import mean_se, paired_difference


@dataclass
class Run:
    label: str  # the variant; runs with the same label are its seeds
    per_user: dict[str, np.ndarray]  # test metric per evaluated user
    valid: dict[str, float] | None = None  # the selected epoch's validation metrics (None: baseline)
    info: dict[str, Any] = field(default_factory=dict)  # seed, times, device, precision, checkpoint, ...


@dataclass
class Variant:
    label: str
    runs: list[Run]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def per_user(self, metric: str) -> np.ndarray:
        """Per-user value averaged over the variant's seeds."""
        return np.mean([r.per_user[metric] for r in self.runs], axis=0)

    def seed_means(self, metric: str, users: np.ndarray | None = None) -> np.ndarray:
        return np.array([r.per_user[metric][users if users is not None else slice(None)].mean() for r in self.runs])


def group(runs: Sequence[Run]) -> list[Variant]:
    """Runs grouped by label, in order of first appearance."""
    out: dict[str, Variant] = {}
    for r in runs:
        out.setdefault(r.label, Variant(r.label, [])).runs.append(r)
    sizes = {len(next(iter(r.per_user.values()))) for r in runs}
    if len(sizes) > 1:
        raise ValueError(f"runs evaluated on different user sets (sizes {sorted(sizes)}): not one split")
    return list(out.values())


def summarise(variants: Sequence[Variant], metrics: Sequence[str], reference: str | None,
              subsets: Mapping[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One dict per variant: test means (over users, then seeds) and the seeds' spread, the same on
    each subset of users (boolean masks), and the paired difference against the `reference` variant."""
    by_label = {v.label: v for v in variants}
    if reference is not None and reference not in by_label:
        raise ValueError(f"reference {reference!r} is not one of the labels {list(by_label)}")
    ref = by_label.get(reference) if reference else None
    parts: dict[str, np.ndarray | None] = {"all": None, **(subsets or {})}
    rows = []
    for v in variants:
        row: dict[str, Any] = {"label": v.label, "seeds": v.seeds, "test": {}, "seed_sd": {}, "vs_reference": {}}
        for part, mask in parts.items():
            for m in metrics:
                key = m if part == "all" else f"{m}|{part}"
                means = v.seed_means(m, mask)
                row["test"][key] = float(means.mean())
                row["seed_sd"][key] = float(means.std(ddof=1)) if len(means) > 1 else None
                if ref is not None and v is not ref:
                    a, b = v.per_user(m), ref.per_user(m)
                    if mask is not None:
                        a, b = a[mask], b[mask]
                    row["vs_reference"][key] = paired_difference(a, b).as_dict()
        valid = [r.valid for r in v.runs if r.valid]
        row["valid"] = {k: mean_se([x[k] for x in valid]).mean for k in valid[0] if k != "users"} if valid else None
        # each seed's own test means beside its training info: what `--verify` compares a rerun with
        row["runs"] = [{**r.info, "test": {m: float(r.per_user[m].mean()) for m in metrics}} for r in v.runs]
        rows.append(row)
    return rows


def fmt_diff(d: Mapping[str, Any] | None) -> str:
    """'+0.0123 ± 0.0045' (paired mean difference ± one standard error), '-' when absent."""
    if not d:
        return "-"
    return f"{d['mean']:+.4f} ± {d['se']:.4f}"


def fmt_mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.4f}" if sd is None else f"{mean:.4f} (sd {sd:.4f})"


def training_info(folder: Any, log: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """What a report says about how a checkpoint was trained (from its config and training log)."""
    best, walls = config.get("best") or {}, log.get("wall_s") or {}
    return {"checkpoint": str(folder), "seed": (log.get("train") or {}).get("seed"), "best_epoch": best.get("epoch"),
            "best_stage": best.get("stage"), "epochs_run": len(log.get("epochs", [])), "stopped": log.get("stopped"),
            "train_s": sum(v for k, v in walls.items() if k != "validation") or None,
            "validation_s": walls.get("validation"), "wall_s": walls, "device": log.get("device"),
            "precision": log.get("precision"), "command": log.get("command"),
            "command_explicit": config.get("command_explicit"), "lm": config.get("lm"),
            "recipe": config.get("recipe"), "model": config.get("model")}


def baseline_runs(split: Split, metrics: Sequence[str], test_mask: Sequence[np.ndarray] | None = None) -> list[Run]:
    """Most-popular, BPR, ALS and EASE on `split`, tuned on its valid part (models.baselines); `test_mask`:
    items masked at test time beyond the history (the held-out items each user watched)."""
    from models.baselines import run_baselines_detailed

    return [Run(r.name, r.test_per_user, r.valid, {"params": r.params, "fit_s": r.fit_seconds, "baseline": True})
            for r in run_baselines_detailed(split, metrics=list(metrics),
                                            test_mask=list(test_mask) if test_mask is not None else None)]


def variants_table(summary: Sequence[Mapping[str, Any]], shown: Sequence[tuple[str, str]], valid_key: str,
                   diffs: Sequence[tuple[str, str]], reference: str | None) -> str:
    """Markdown: one row per variant. `shown`/`diffs`: (column title, key in "test"/"vs_reference")."""
    header = ["variant", "seeds", f"valid {valid_key}", *(t for t, _ in shown),
              *(f"{t} vs {reference or '-'} (paired Δ ± SE)" for t, _ in diffs),
              "best / run epochs", "train min", "device, precision", "user encoder ms (B=1)"]
    rows = []
    for s in summary:
        info = s["runs"]
        baseline = info[0].get("baseline", False)
        cost = [i["user_encoder"]["p50_ms"] for i in info if i.get("user_encoder")]
        rows.append([
            s["label"], s["seeds"], (s["valid"] or {}).get(valid_key, float("nan")),
            *(fmt_mean_sd(s["test"][k], s["seed_sd"][k]) for _, k in shown),
            *(fmt_diff(s["vs_reference"].get(k)) for _, k in diffs),
            "-" if baseline else ", ".join(f"{i['best_epoch']}/{i['epochs_run']}" for i in info),
            f"fit {info[0]['fit_s']:.1f} s" if baseline else
            f"{np.mean([i['train_s'] or 0.0 for i in info]) / 60:.1f}",
            "-" if baseline else f"{info[0]['device']}, {info[0]['precision']}",
            f"{np.mean(cost):.1f} (L={info[0]['user_encoder']['length']})" if cost else "-",
        ])
    return markdown_table(header, rows) + "\n" + commands_markdown(summary)


def _flags(command: str) -> dict[str, str]:
    """{--flag: its value(s)} of a command line (a bare boolean flag maps to "")."""
    words, out, key = shlex.split(command), {}, None
    for w in words:
        if w.startswith("--"):
            key, _, value = w.partition("=")
            out[key] = value
        elif key is not None:
            out[key] = f"{out[key]} {w}".strip()
    return out


def seed_differences(first: str, other: str) -> str:
    """The flags by which `other` differs from `first` (both explicit commands), as `--flag value`."""
    a, b = _flags(first), _flags(other)
    changed = [k for k in b if a.get(k) != b[k]] + [k for k in a if k not in b]
    return " ".join(f"{k} {b.get(k, '(absent)')}".strip() for k in changed) or "nothing"


def commands_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """Each variant's training command, fully explicit when the checkpoint recorded it (every field as
    a flag: a later change of a preset cannot change what it trains), and for each further seed the
    flags it really differs by, computed rather than claimed."""
    lines = []
    for s in summary:
        runs = [r for r in s["runs"] if r.get("command_explicit") or r.get("command")]
        if not runs:
            continue
        first = runs[0].get("command_explicit") or runs[0]["command"]
        kind = "" if runs[0].get("command_explicit") else " (as typed: the presets expand as they do today)"
        lines.append(f"- {s['label']}{kind}: `{first}`")
        for r in runs[1:]:
            lines.append(f"  - another seed differs by: `{seed_differences(first, r.get('command_explicit') or r['command'])}`")
    return ("Training commands (the first seed's; each further seed: the flags it differs by):\n\n"
            + "\n".join(lines) + "\n") if lines else ""
