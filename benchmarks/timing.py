"""Interleaved timing: the candidate and the baseline alternate call by call in one process, so
the noise of a shared machine lands on both and their ratio stays meaningful."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    samples_ms: np.ndarray

    def summary(self) -> dict[str, float]:
        s = self.samples_ms
        return {
            "mean_ms": float(s.mean()),
            "p50_ms": float(np.percentile(s, 50)),
            "p95_ms": float(np.percentile(s, 95)),
            "p99_ms": float(np.percentile(s, 99)),
            "n": len(s),
        }


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, Timing]:
    """Runs each function `repeats` times, alternating between them, after `warmup` untimed calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for i in range(repeats):
        # Rotate who goes first so neither side always runs on a warmer cache.
        for name in order[i % len(order) :] + order[: i % len(order)]:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: Timing(np.asarray(v)) for name, v in samples.items()}


def compare(timings: dict[str, Timing], baseline: str) -> dict[str, dict[str, float]]:
    """Each path's summary plus its speed-up over the baseline (baseline p50 / path p50)."""
    base = timings[baseline].summary()
    out = {}
    for name, t in timings.items():
        s = t.summary()
        s["speedup_p50_vs_" + baseline] = base["p50_ms"] / s["p50_ms"]
        s["speedup_mean_vs_" + baseline] = base["mean_ms"] / s["mean_ms"]
        out[name] = s
    return out
