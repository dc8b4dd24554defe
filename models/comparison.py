"""Variant tables for the quality reports: several trained runs (and baselines) on one split,
grouped by label (runs sharing a label are seeds of one variant), with paired differences over
users against a reference row.

Every run carries its per-user test metrics in `split.eval_users("test")` order, so two rows are
compared user by user (models.stats.paired_difference). A variant with several seeds is compared
through its per-user mean over seeds; the spread of its per-seed means is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
        row["runs"] = [r.info for r in v.runs]
        rows.append(row)
    return rows


def fmt_diff(d: Mapping[str, Any] | None) -> str:
    """'+0.0123 ± 0.0045' (paired mean difference ± one standard error), '-' when absent."""
    if not d:
        return "-"
    return f"{d['mean']:+.4f} ± {d['se']:.4f}"


def fmt_mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.4f}" if sd is None else f"{mean:.4f} (sd {sd:.4f})"
