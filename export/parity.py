"""ONNX Runtime vs PyTorch on every sample input: values within tolerance AND the same top-K items.

Tolerance per case = atol + rtol * max |reference output|: LM hidden states carry outlier
dimensions of tens to hundreds, where fp32 kernels that merely sum in another order differ by
more than any fixed atol that is still meaningful for small outputs.

Values alone are not enough (a tiny error on an outlier dimension can reorder items) and rankings
alone are not enough (a constant shift keeps the order), so both are checked. Rankings are compared
on `output @ item_vectors.T`: the scores the server will actually rank by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import EncoderExport
from models.onnx_trace import session


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the torch module; nothing is written."""


@dataclass
class ParityCase:
    shapes: dict[str, list[int]]
    max_abs_err: float
    tolerance: float
    rows: int
    rows_identical: int
    rows_ties_only: int  # rows whose top-K differ only by swaps the measured error can explain


def torch_outputs(enc: EncoderExport) -> list[np.ndarray]:
    """Reference outputs, computed once and reused for every candidate graph."""
    enc.module.eval()
    outs = []
    with torch.no_grad():
        for case in enc.sample_inputs:
            out = enc.module(*case)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise ValueError(f"encoder forward must return one [batch, dim] tensor, got {getattr(out, 'shape', out)}")
            outs.append(out.detach().float().cpu().numpy())
    return outs


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def compare_rankings(ref: np.ndarray, got: np.ndarray, item_vectors: np.ndarray, k: int, err: float) -> tuple[int, int]:
    """(rows identical, rows identical up to ties) of top-k over ref/got @ item_vectors.T.

    A per-element error e moves a score by at most e * ||v||_1, so two items whose reference scores
    differ by less than 2 e max||v||_1 may legitimately swap: such rows count as ties-only.
    """
    v = item_vectors.astype(np.float32)
    k = min(k, v.shape[0])
    s_ref, s_got = ref @ v.T, got @ v.T
    t_ref, t_got = _topk(s_ref, k), _topk(s_got, k)
    tol = 2.0 * err * float(np.abs(v).sum(1).max()) + 1e-6 * float(np.abs(s_ref).max() + 1e-12)
    identical = ties = 0
    for r in range(len(ref)):
        if np.array_equal(t_ref[r], t_got[r]):
            identical += 1
            ties += 1
        elif np.all(np.abs(s_ref[r, t_got[r]] - s_ref[r, t_ref[r]]) <= tol):
            ties += 1
    return identical, ties


def check_parity(
    enc: EncoderExport,
    graph: Path,
    item_vectors: np.ndarray,
    refs: list[np.ndarray],
    atol: float = 1e-4,
    k: int = 20,
    rtol: float = 1e-5,
    label: str = "encoder",
) -> dict[str, Any]:
    """The manifest `parity` entry for this graph; raises ParityError naming the worst case."""
    try:
        sess = session(graph)
    except Exception as exc:  # ORT's own errors (e.g. an op/dtype pair it does not implement)
        raise ParityError(f"{label}: ONNX Runtime (CPU EP) cannot load the exported graph {Path(graph).name}: {exc}") from exc
    cases: list[ParityCase] = []
    for inputs, ref in zip(enc.sample_inputs, refs, strict=True):
        feed = {n: t.detach().cpu().numpy() for n, t in zip(enc.input_names, inputs, strict=True)}
        got = sess.run([enc.output_name], feed)[0]
        shapes = {n: list(a.shape) for n, a in feed.items()}
        if got.shape != ref.shape:
            raise ParityError(f"{label}: ONNX output shape {list(got.shape)} != torch {list(ref.shape)} for inputs {shapes}")
        err = float(np.abs(got.astype(np.float64) - ref).max()) if np.isfinite(got).all() else float("inf")
        ident, ties = compare_rankings(ref, got, item_vectors, k, err)
        tol = atol + rtol * float(np.abs(ref).max())
        cases.append(ParityCase(shapes, err, tol, len(ref), ident, ties))
    max_err = max(c.max_abs_err for c in cases)
    scale = max(float(np.abs(r).max()) for r in refs)
    ties_only = all(c.rows_ties_only == c.rows for c in cases)
    result = {
        "max_abs_err": max_err,
        "atol": atol,
        "rtol": rtol,
        "tolerance": max(c.tolerance for c in cases),
        "max_abs_output": scale,  # LM hidden states have outlier dims in the hundreds: context for max_abs_err
        "cases": len(cases),
        "k": int(min(k, len(item_vectors))),
        "topk_identical": all(c.rows_identical == c.rows for c in cases),
        "topk_identical_up_to_ties": ties_only,
        "shapes": [c.shapes for c in cases],
    }
    within = all(c.max_abs_err <= c.tolerance for c in cases)
    if not within or not ties_only:
        bad = [c for c in cases if c.max_abs_err > c.tolerance or c.rows_ties_only < c.rows]
        bad_rank = [c for c in cases if c.rows_ties_only < c.rows]
        worst = max(bad_rank or cases, key=lambda c: c.max_abs_err)
        raise ParityError(
            f"{label}: ONNX graph {Path(graph).name} disagrees with PyTorch on {len(bad)}/{len(cases)} sample "
            f"cases; worst case inputs {worst.shapes}: max abs error {worst.max_abs_err:.3g} (tolerance "
            f"{worst.tolerance:.3g} = atol {atol:g} + rtol {rtol:g} * outputs up to {scale:.3g}), top-{result['k']} lists differ in {worst.rows - worst.rows_ties_only}"
            f"/{worst.rows} rows. Nothing was written."
        )
    return result
