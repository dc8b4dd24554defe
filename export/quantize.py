"""Optional int8 dynamic quantization, adopted only when it keeps the ranking.

performance-notes.md measured naive int8 on the SmolLM2 user encoder at top-20 overlap 0.58:
unusable. So quantization is measured on the probe users (top-20 overlap with fp32 and the
probe metric) and refused, keeping fp32, when overlap < threshold or the metric drops too much.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.onnx_graphs import external_data_files
from models.bundle import EncoderExport, QualityProbe
from models.metrics import mask_seen, per_user_metrics, top_k
from models.onnx_trace import session


def quantize_graph(fp32: Path, int8: Path) -> Path:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs one INFO line per tensor on the root logger
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8,
                         use_external_data_format=bool(external_data_files(fp32)))
    finally:
        root.setLevel(level)
    return int8


def _run(path: Path, enc: EncoderExport, batches: list[tuple[Any, ...]]) -> np.ndarray:
    sess = session(path)
    outs = []
    for case in batches:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(enc.input_names, case, strict=True)}
        outs.append(sess.run([enc.output_name], feed)[0])
    return np.concatenate(outs).astype(np.float32)


def evaluate(
    enc: EncoderExport,
    fp32: Path,
    int8: Path,
    item_vectors: np.ndarray,
    probe: QualityProbe | None,
    min_overlap: float = 0.95,
    max_metric_drop: float = 0.01,
    k: int = 20,
    min_rows: int = 20,
) -> dict[str, Any]:
    """The manifest `quantization` entry: numbers plus status "accepted" or "refused" (with why).

    With a probe (user encoder), inputs are the probe users' and the metric is the probe's, with
    their observed items masked; without one, the overlap is measured on the sample inputs.
    """
    batches = probe.encoder_inputs if probe is not None else enc.sample_inputs
    a, b = _run(fp32, enc, batches), _run(int8, enc, batches)
    s32, s8 = a @ item_vectors.T, b @ item_vectors.T
    kk = min(k, item_vectors.shape[0])
    if probe is not None:
        if len(probe.exclude) != len(a):
            raise ValueError(f"probe has {len(probe.exclude)} exclude lists but its inputs give {len(a)} users")
        keep = [i for i, t in enumerate(probe.targets) if len(t)]
        excl = [probe.exclude[i] for i in keep]
        tgts = [probe.targets[i] for i in keep]
        s32, s8 = s32[keep], s8[keep]
        m32 = per_user_metrics(s32, excl, tgts, [probe.metric])[probe.metric]
        m8 = per_user_metrics(s8, excl, tgts, [probe.metric])[probe.metric]
        s32, s8 = mask_seen(s32, excl), mask_seen(s8, excl)
    t32, t8 = top_k(s32, kk), top_k(s8, kk)
    shared = sum(len(np.intersect1d(x, y)) for x, y in zip(t32, t8, strict=True))
    overlap = shared / (len(t32) * kk)  # exact ratio, so 114/120 compares equal to 0.95
    out: dict[str, Any] = {
        "method": "onnxruntime quantize_dynamic, QInt8 weights",
        f"top{kk}_overlap": overlap,
        "rows": len(t32),
        "inputs": "probe" if probe is not None else "sample_inputs",
        "min_overlap": min_overlap,
    }
    reasons = []
    if len(t32) < min_rows:
        reasons.append(f"only {len(t32)} inputs to measure on (need >= {min_rows} to trust the overlap)")
    if overlap < min_overlap:
        reasons.append(f"top-{kk} overlap {overlap:.3f} < {min_overlap}")
    if probe is not None:
        _metric_drop(out, reasons, probe.metric, m32, m8, "int8", max_metric_drop)
    return _verdict(out, reasons, "fp32")


def evaluate_fp16(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    sample: np.ndarray,
    probe: QualityProbe | None,
    min_overlap: float = 0.95,
    max_metric_drop: float = 0.01,
    k: int = 20,
) -> dict[str, Any]:
    """The manifest `known_users.quality` entry for float16 known-user vectors, measured like int8."""

    def fp32(rows: np.ndarray) -> np.ndarray:
        return np.asarray(user_vectors[rows], dtype=np.float32)

    def fp16(rows: np.ndarray) -> np.ndarray:
        return fp32(rows).astype(np.float16).astype(np.float32)

    return compare_user_vectors(fp32, fp16, item_vectors, sample, probe, "float16 storage of known-user vectors",
                                "fp16", min_overlap, max_metric_drop, k)


def compare_user_vectors(
    fp32: Callable[[np.ndarray], np.ndarray],
    low: Callable[[np.ndarray], np.ndarray],
    item_vectors: np.ndarray,
    sample: np.ndarray,
    probe: QualityProbe | None,
    method: str,
    name: str,
    min_overlap: float = 0.95,
    max_metric_drop: float = 0.01,
    k: int = 20,
) -> dict[str, Any]:
    """Known-user vectors at a lower precision (`low`, user rows -> vectors) against float32: the top-k
    overlap on the `sample` users and, when the probe's users are known users (`probe.users`), the
    probe metric (validation items) with their observed items masked. Status "accepted" or "refused"."""
    kk = min(k, item_vectors.shape[0])
    sample = np.asarray(sample, dtype=np.int64)
    t32, tlow = top_k(fp32(sample) @ item_vectors.T, kk), top_k(low(sample) @ item_vectors.T, kk)
    shared = sum(len(np.intersect1d(x, y)) for x, y in zip(t32, tlow, strict=True))
    overlap = shared / (len(t32) * kk) if len(t32) else 1.0
    out: dict[str, Any] = {"method": method, f"top{kk}_overlap": overlap, "rows": len(t32), "min_overlap": min_overlap}
    reasons = []
    if overlap < min_overlap:
        reasons.append(f"top-{kk} overlap {overlap:.3f} < {min_overlap}")
    if probe is not None and probe.users is not None and len(probe.users):
        keep = [i for i, t in enumerate(probe.targets) if len(t)]
        users = np.asarray(probe.users, dtype=np.int64)[keep]
        excl, tgts = [probe.exclude[i] for i in keep], [probe.targets[i] for i in keep]
        m32 = per_user_metrics(fp32(users) @ item_vectors.T, excl, tgts, [probe.metric])[probe.metric]
        mlow = per_user_metrics(low(users) @ item_vectors.T, excl, tgts, [probe.metric])[probe.metric]
        out["probe_users"] = len(users)
        _metric_drop(out, reasons, probe.metric, m32, mlow, name, max_metric_drop)
    return _verdict(out, reasons, "float32")


def _metric_drop(out: dict[str, Any], reasons: list[str], metric: str, m32: np.ndarray, low: np.ndarray, name: str,
                 max_metric_drop: float) -> None:
    """The probe metric at a lower precision vs fp32, per probe user: recorded in `out`, and a reason to
    refuse when its mean drops more than `max_metric_drop` (relative) *and* by more than two paired
    standard errors, the noise rule of the server's engine gate (server/gate.py). The relative limit
    alone decided on single users: on 200 probe users one user's lost hit is a 3.9% Recall@20 drop at
    one SE, which refused a bf16 known-user pass at top-20 overlap 0.993
    (benchmarks/results/bench_pipeline_100k-cllm4rec-export-bf16.md)."""
    m32, low = np.asarray(m32, dtype=np.float64), np.asarray(low, dtype=np.float64)
    a, b = float(m32.mean()) if len(m32) else 0.0, float(low.mean()) if len(low) else 0.0
    diff = low - m32
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    drop = (a - b) / a if a > 0 else (0.0 if b >= a else 1.0)
    out.update({"metric": metric, "fp32": a, name: b, "relative_drop": drop, "max_metric_drop": max_metric_drop,
                "drop_se": se, "changed_users": int((diff != 0).sum())})
    if drop > max_metric_drop and a - b > 2 * se:
        reasons.append(f"{metric} drops {drop:.1%} (fp32 {a:.4f} -> {name} {b:.4f}, {a - b:.4f} > 2 SE of "
                       f"{se:.4f}) > {max_metric_drop:.1%}")


def _verdict(out: dict[str, Any], reasons: list[str], kept: str) -> dict[str, Any]:
    out["status"] = "refused" if reasons else "accepted"
    if reasons:
        out["reason"] = "; ".join(reasons) + f": kept {kept}"
    return out
