"""OpenVINO CPU compile settings shared by the server's engine and the exporter's bf16 known-user pass,
so both run an ONNX graph the same way. Torch-free; OpenVINO itself is an optional install."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

HINTS = {"fp32": "f32", "bf16": "bf16", "int8w": "f32"}  # our precision -> INFERENCE_PRECISION_HINT


def installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def compile_config(precision: str, threads: int, instances: int) -> dict[str, str]:
    """`threads` per inference, one stream per concurrent caller."""
    cfg = {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": str(threads * instances)}
    if instances == 1:
        return {**cfg, "PERFORMANCE_HINT": "LATENCY"}
    return {**cfg, "NUM_STREAMS": str(instances)}


def read_onnx(path: Path) -> tuple[Any, Any]:
    """(core, model) for an ONNX file, before any weight compression the caller applies."""
    import openvino as ov

    core = ov.Core()
    return core, core.read_model(str(path))


def compile_onnx(path: Path, precision: str, threads: int, instances: int = 1) -> Any:
    """The ONNX file compiled for the CPU at `precision` (fp32 or bf16: the caller has read the flags)."""
    if precision not in HINTS:
        raise ValueError(f"OpenVINO runs {', '.join(HINTS)}, not {precision}")
    core, model = read_onnx(path)
    return core.compile_model(model, "CPU", compile_config(precision, threads, instances))
