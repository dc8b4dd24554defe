"""What a model costs to serve: its exported user encoder timed under ONNX Runtime on this CPU.

The quality reports put this beside every variant, because the levers that raise quality
(more LM blocks, longer histories) are paid for on every request. The graph is the one
`llmrec export` writes (the bundle's encoder through models.onnx_trace, as the exporter traces it), at batch 1 and a
fixed input length, so variants are compared at the same request size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import EncoderExport, load_bundle
from models.onnx_trace import export_graph, session  # the exporter's own graph and session settings
from repository.files import USER_ENCODER


def _one_request(enc: EncoderExport, length: int) -> dict[str, np.ndarray]:
    """Batch 1 cut from the longest real sample: its first `length` positions (fewer if the
    sample is shorter), every position marked real."""
    sample = max(enc.sample_inputs, key=lambda case: case[0].shape[1])
    feeds = {}
    for name, t in zip(enc.input_names, sample, strict=True):
        t = t[:1, :length] if 1 in enc.dynamic_axes.get(name, {}) else t[:1]  # e.g. user_embedding [B, H]
        feeds[name] = (torch.ones_like(t) if "mask" in name else t).numpy()
    return feeds


def user_encoder_ms(checkpoint: Path, length: int = 128, repeats: int = 30, threads: int = 1) -> dict[str, Any]:
    """Median ms of one ONNX Runtime call of the checkpoint's exported user encoder at batch 1."""
    torch.set_num_threads(threads)
    enc = load_bundle(Path(checkpoint), known_users=False).encoders["user_encoder"]
    feeds = _one_request(enc, length)
    with tempfile.TemporaryDirectory(prefix="llmrec-cost-") as tmp:
        sess = session(export_graph(enc, Path(tmp) / USER_ENCODER), threads)
        for _ in range(3):
            sess.run(None, feeds)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            samples.append((time.perf_counter() - t0) * 1000.0)
    shape = next(iter(feeds.values())).shape
    return {"p50_ms": float(np.median(samples)), "batch": 1, "length": int(shape[1]), "threads": threads,
            "runtime": "onnxruntime", "repeats": repeats}
