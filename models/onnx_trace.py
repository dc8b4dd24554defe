"""A model's encoder as an ONNX graph, and a CPU session over it: the exporter's own settings.

They live beside the models (not in export/) because the quality reports time a variant's exported
user encoder too (models/serving_cost.py), and models sit below the exporter: export/onnx_graphs adds
the checks, the offline optimization and the manifest entries on top of these.

The legacy TorchScript exporter is used on purpose (docs/performance.md): it exports the LM in ~40 s
and its graph runs 5-10% faster than the dynamo exporter's. Tracing bakes some branches into the
graph, which is why every exported graph goes through `export.parity` before it is kept.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import torch

from models.bundle import EncoderExport

OPSET = 17


def trace_inputs(enc: EncoderExport) -> tuple[torch.Tensor, ...]:
    """The largest sample with batch > 1: tracing on batch 1 or length 1 invites baked-in shapes."""
    if not enc.sample_inputs:
        raise ValueError("encoder has no sample_inputs: the exporter needs real inputs to trace and to check parity")

    def size(case: tuple[torch.Tensor, ...]) -> tuple[bool, int]:
        first = case[0]
        return (first.shape[0] > 1 and (first.dim() < 2 or first.shape[1] > 1), int(first.numel()))

    return max(enc.sample_inputs, key=size)


def export_graph(enc: EncoderExport, path: Path, opset: int = OPSET) -> Path:
    path = Path(path)
    enc.module.eval()
    args = trace_inputs(enc)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings are expected; parity decides
        torch.onnx.export(
            enc.module,
            args,
            str(path),
            input_names=list(enc.input_names),
            output_names=[enc.output_name],
            dynamic_axes=enc.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
