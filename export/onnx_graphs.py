"""A traced ONNX graph (models.onnx_trace) -> checked graph + offline ORT optimization + manifest entries.

Tracing bakes some branches into the graph, which is why every graph goes through `export.parity`
before it is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.bundle import EncoderExport

# An optimized graph may carry contrib ops that only the CPU EP knows at "extended"; "basic" keeps
# standard ONNX ops (constant folding, redundant-node removal), so OpenVINO / CUDA can still read it.
ORT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
_DTYPES = {torch.int64: "int64", torch.int32: "int32", torch.float32: "float32", torch.bool: "bool"}


def external_data_files(path: Path) -> list[str]:
    """Names of the external-data files a graph refers to (none for graphs under 2 GB)."""
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in t.external_data if e.key == "location")
    return sorted(names)


def consolidate_external_data(path: Path) -> str | None:
    """Rewrites a graph whose weights lie in many external files into `<name>.data`; returns that name.

    The legacy exporter writes one file per tensor for graphs over the 2 GB protobuf limit; one
    data file is simpler to hash, list in the manifest and copy.
    """
    path = Path(path)
    old = external_data_files(path)
    if not old:
        return None
    data_name = path.name + ".data"
    if old == [data_name]:
        return data_name
    model = onnx.load(str(path), load_external_data=True)
    for name in old:
        (path.parent / name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return data_name


def check_graph(path: Path, input_names: list[str], output_name: str) -> None:
    """onnx.checker + shape inference (by path, so graphs with external data work too) + the I/O names.

    The tracer drops inputs the module never reads; the server feeds every declared input, so a
    graph without one of them is refused here rather than failing at serving time.
    """
    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    got_in, got_out = [i.name for i in graph.input], [o.name for o in graph.output]
    if got_in != list(input_names) or got_out != [output_name]:
        raise ValueError(
            f"{Path(path).name}: graph inputs {got_in} / outputs {got_out} differ from the declared "
            f"{list(input_names)} / [{output_name!r}] (does forward() ignore an input?)"
        )


def optimize_offline(path: Path, out_path: Path, level: str) -> Path:
    """Saves ORT's optimized graph (so the server skips that work at load time)."""
    if level not in ORT_LEVELS:
        raise ValueError(f"unknown ORT optimization level {level!r}; accepted: none, {', '.join(ORT_LEVELS)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ORT_LEVELS[level]
    opts.optimized_model_filepath = str(out_path)
    opts.intra_op_num_threads = 1
    if external_data_files(path):
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", Path(out_path).name + ".data"
        )
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return Path(out_path)


def io_spec(enc: EncoderExport, output: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Manifest `inputs` / `output` entries: dynamic axes by name, fixed axes by size."""
    sample = enc.sample_inputs[0]
    inputs = []
    for name, tensor in zip(enc.input_names, sample, strict=True):
        axes = enc.dynamic_axes.get(name, {})
        inputs.append({
            "name": name,
            "dtype": _DTYPES.get(tensor.dtype, str(tensor.dtype).replace("torch.", "")),
            "shape": [axes.get(i, int(s)) for i, s in enumerate(tensor.shape)],
        })
    out_axes = enc.dynamic_axes.get(enc.output_name, {0: "batch"})
    output_spec = {
        "name": enc.output_name,
        "dtype": str(output.dtype),
        "shape": [out_axes.get(i, int(s)) for i, s in enumerate(output.shape)],
    }
    return inputs, output_spec
