"""Which engine runs an encoder of a version being loaded: every candidate this machine offers is
checked against the version's fp32 reference outputs, and the fastest one that passes serves.

The checks are about recommendations, not bits (a bf16 engine never matches fp32 to 1e-4):
- mean cosine between the candidate's and the reference's output vectors >= min_cosine,
- mean overlap of the top-20 items ranked by output @ item_vectors.T >= min_overlap,
- for the user encoder, the probe metric (recall@20 / hr@10 of validation users: their valid items, never
  the test part) not
  worse than the reference's beyond its noise: the paired per-user difference must not fall below
  -2 standard errors.
Reference outputs are the PyTorch fp32 ones stored at export (repository/reference.py); a version exported
before that carries none, and then ONNX Runtime fp32 at load is the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from common import logs
from repository.reference import ReferenceData
from server.engines import ENGINES, REFERENCE, Encoder

log = logs.get("server.gate")

TOP = 20


@dataclass
class GateConfig:
    """Which engine serves an encoder (`llmrec serve` flags, hence the flat flag names)."""

    min_cosine: Annotated[float, tyro.conf.arg(name="gate-min-cosine")] = 0.99
    """an engine serves only if its outputs' mean cosine to the version's fp32 reference is at least this"""
    min_overlap: Annotated[float, tyro.conf.arg(name="gate-min-overlap")] = 0.99
    """... and its top-20 recommendations overlap the reference's by at least this, on average"""
    max_rows: Annotated[int, tyro.conf.arg(name="gate-rows")] = 32
    """probe users each candidate engine is checked on at load (plus the export's parity inputs)"""
    repeats: Annotated[int, tyro.conf.arg(name="gate-repeats")] = 2
    """timing passes over the smallest and largest reference inputs when choosing the fastest engine"""


@dataclass
class Trial:
    engine: str
    precision: str
    passed: bool
    reason: str = ""
    cosine: float | None = None
    overlap: float | None = None
    probe_delta: float | None = None  # candidate - reference, mean over probe users
    probe_se: float | None = None
    ms: float | None = None  # median time of one pass over the reference cases
    one_ms: float | None = None  # the chosen engine's median time for the smallest case alone: one request

    def label(self) -> str:
        return f"{self.engine}:{self.precision}"


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return part


def _overlap(a: np.ndarray, b: np.ndarray, items: np.ndarray) -> np.ndarray:
    ta, tb = _top(a @ items.T, TOP), _top(b @ items.T, TOP)
    return np.array([len(set(x) & set(y)) / len(x) for x, y in zip(ta, tb, strict=True)])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)


def probe_metric(out: np.ndarray, items: np.ndarray, targets: list[np.ndarray], exclude: list[np.ndarray],
                 metric: str) -> np.ndarray:
    """Per user: recall@K (hits / min(K, |targets|)) or hr@K (any hit), seen items masked."""
    name, k = metric.split("@")
    k = int(k)
    scores = out @ items.T
    for i, ex in enumerate(exclude):
        scores[i, np.asarray(ex, np.int64)] = -np.inf
    top = _top(scores, k)
    hits = np.array([len(set(t.tolist()) & set(top[i].tolist())) for i, t in enumerate(targets)], dtype=np.float64)
    if name == "recall":
        return hits / np.maximum(np.minimum(k, [len(t) for t in targets]), 1)
    return (hits > 0).astype(np.float64)


def _limit(cases: list[dict[str, np.ndarray]], outputs: list[np.ndarray], rows: int
           ) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    kept_c, kept_o, n = [], [], 0
    for c, o in zip(cases, outputs, strict=True):
        if n >= rows:
            break
        kept_c.append(c)
        kept_o.append(o)
        n += len(o)
    return kept_c, kept_o


def check(encoder: Encoder, ref: ReferenceData, items: np.ndarray, cfg: GateConfig) -> Trial:
    """The quality part of the gate for one loaded candidate."""
    trial = Trial(encoder.name, encoder.precision, passed=False)
    probe_cases, probe_outputs = _limit(ref.probe_cases, ref.probe_outputs, cfg.max_rows)
    cases, outputs = ref.cases + probe_cases, ref.outputs + probe_outputs
    n_probe = sum(len(o) for o in probe_outputs)
    try:
        got = [encoder.run(c) for c in cases]
    except Exception as exc:  # an engine that cannot run the graph is refused, not fatal
        trial.reason = f"failed on the reference inputs ({type(exc).__name__}: {exc})"
        return trial
    a, b = np.concatenate(got), np.concatenate(outputs)
    if a.shape != b.shape or not np.isfinite(a).all():
        trial.reason = f"output shape {a.shape} (or non-finite values), reference {b.shape}"
        return trial
    trial.cosine, trial.overlap = float(_cosine(a, b).mean()), float(_overlap(a, b, items).mean())
    problems = []
    if trial.cosine < cfg.min_cosine:
        problems.append(f"cosine {trial.cosine:.4f} < {cfg.min_cosine}")
    if trial.overlap < cfg.min_overlap:
        problems.append(f"top-{TOP} overlap {trial.overlap:.4f} < {cfg.min_overlap}")
    if n_probe and ref.metric:
        tg, ex = ref.targets[:n_probe], ref.exclude[:n_probe]
        diff = (probe_metric(a[-n_probe:], items, tg, ex, ref.metric)
                - probe_metric(b[-n_probe:], items, tg, ex, ref.metric))
        trial.probe_delta = float(diff.mean())
        trial.probe_se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if trial.probe_delta < -2 * trial.probe_se - 1e-12:
            problems.append(f"probe {ref.metric} {trial.probe_delta:+.4f} (SE {trial.probe_se:.4f})")
    trial.passed = not problems
    trial.reason = "; ".join(problems)
    return trial


def _time(encoders: dict[str, Encoder], cases: list[dict[str, np.ndarray]], repeats: int) -> dict[str, float]:
    """Median ms of one pass over `cases`, the candidates interleaved so machine noise hits all alike."""
    samples: dict[str, list[float]] = {k: [] for k in encoders}
    order = list(encoders)
    for r in range(repeats):
        for key in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            for c in cases:
                encoders[key].run(c)
            samples[key].append((time.perf_counter() - t0) * 1000.0)
    return {k: float(np.median(v)) for k, v in samples.items()}


def select(role: str, graph: Path, candidates: list[tuple[str, str]], ref: ReferenceData | None,
           items: np.ndarray, threads: int, cfg: GateConfig,
           fallback_cases: Callable[[Encoder], list[dict[str, np.ndarray]]] | None = None,
           instances: int = 1) -> tuple[Encoder, list[Trial]]:
    """Loads each candidate, gates it, and returns the fastest that passed (the reference engine when
    none did), with every trial for the log and ListModels."""
    loaded: dict[str, Encoder] = {}
    trials: list[Trial] = []
    for name, precision in candidates:
        try:
            loaded[f"{name}:{precision}"] = ENGINES[name].load(graph, precision, threads, instances=instances)
        except Exception as exc:
            trials.append(Trial(name, precision, False, f"could not load ({type(exc).__name__}: {exc})"))
    if ref is None:  # no stored reference: ONNX Runtime fp32 here is the reference (not a candidate unless asked)
        base_key = ":".join(REFERENCE)
        base = loaded.get(base_key) or ENGINES[REFERENCE[0]].load(graph, REFERENCE[1], threads, instances=instances)
        try:
            cases = fallback_cases(base) if fallback_cases else []
            ref = ReferenceData(cases, [base.run(c) for c in cases])
        except Exception as exc:
            raise RuntimeError(f"{REFERENCE[0]} fails on the version's own inputs ({type(exc).__name__}: {exc})") from exc
    for key, enc in list(loaded.items()):
        trial = check(enc, ref, items, cfg)
        trials.append(trial)
        if not trial.passed:
            del loaded[key]
    if not loaded:
        log.error("no engine passed the quality gate; serving the reference engine", role=role,
                  trials=[asdict(t) for t in trials])
        return ENGINES[REFERENCE[0]].load(graph, REFERENCE[1], threads, instances=instances), trials
    by_size = sorted(ref.cases or ref.probe_cases[:1], key=lambda c: sum(v.size for v in c.values()))
    timing_cases = [by_size[0], by_size[-1]] if len(by_size) > 1 else by_size
    times = _time(loaded, timing_cases, cfg.repeats) if len(loaded) > 1 else {k: float("nan") for k in loaded}
    for t in trials:
        t.ms = times.get(t.label())
    best = min(loaded, key=lambda k: times[k]) if len(loaded) > 1 else next(iter(loaded))
    for t in trials:
        if t.label() != best:
            log.info("engine not chosen", role=role, engine=t.label(), passed=t.passed, reason=t.reason or "slower",
                     cosine=t.cosine, overlap=t.overlap, probe_delta=t.probe_delta, ms=t.ms)
    chosen = next(t for t in trials if t.label() == best)
    if by_size:  # what auto-sized encoder instances go by (ServeConfig.instances)
        chosen.one_ms = _time({best: loaded[best]}, by_size[:1], cfg.repeats)[best]
    log.info("engine chosen", role=role, engine=best, cosine=chosen.cosine, overlap=chosen.overlap,
             probe_delta=chosen.probe_delta, ms=chosen.ms, one_request_ms=chosen.one_ms)
    return loaded[best], trials
