"""Inference engines: what runs an exported ONNX encoder. Each engine is one module here plus one
line in ENGINES; the server picks among those that can run on this machine (machine.py) and that
pass the quality gate (gate.py) against the version's fp32 reference outputs.

An engine module defines a class with
- `name` (the registry key, also shown in ListModels, logs and the `recsys_engine_info` metric),
- `precisions(machine) -> list[str]`: the precisions it can run here ([] = not available),
- `load(path, precision, threads, instances=1) -> Encoder`: `threads` per call; `instances` is how
  many threads may call `run` at once (the batcher's workers), each of which should get the speed
  of a lone caller (ONNX Runtime's sessions allow concurrent runs as they are; OpenVINO needs a
  stream per caller).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from server.engines.onnxruntime_cpu import OnnxRuntimeCpu
from server.engines.onnxruntime_cuda import OnnxRuntimeCuda
from server.engines.openvino_cpu import OpenVinoCpu
from server.machine import Machine


class Encoder(Protocol):
    """One loaded graph: feeds (input name -> array) in, one float32 [batch, dim] array out."""

    name: str  # engine name
    precision: str  # "fp32" | "bf16" | "fp16" | "int8w"
    device: str  # "cpu" | "cuda:0"
    input_names: list[str]
    output_name: str

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


class Engine(Protocol):
    name: str

    @staticmethod
    def precisions(machine: Machine) -> list[str]: ...

    @staticmethod
    def load(path: Path, precision: str, threads: int, instances: int = 1) -> Encoder: ...


ENGINES: dict[str, type[Engine]] = {
    OnnxRuntimeCpu.name: OnnxRuntimeCpu,
    OpenVinoCpu.name: OpenVinoCpu,
    OnnxRuntimeCuda.name: OnnxRuntimeCuda,
}
REFERENCE = (OnnxRuntimeCpu.name, "fp32")  # what every other candidate is checked against when a version
# carries no reference outputs of its own, and the fallback when nothing else passes


INT8 = "int8w"  # opt-in: weight compression costs load time and, on LMs with outlier dimensions, ranking quality


def candidates(machine: Machine, engines: dict[str, type[Engine]] | None = None,
               int8: bool = False) -> list[tuple[str, str]]:
    """(engine, precision) pairs that can run on this machine, reference first."""
    out = [REFERENCE]
    for name, engine in (engines or ENGINES).items():
        out += [(name, p) for p in engine.precisions(machine) if (name, p) != REFERENCE and (int8 or p != INT8)]
    return out


def engine_candidates(machine: Machine, requested: str = "auto", int8: bool = False) -> list[tuple[str, str]]:
    """What the gate tries: every candidate ("auto"), one engine at every precision it has here
    ("openvino-cpu"), or one engine and precision ("openvino-cpu:bf16"). An engine or precision this
    machine lacks is an error, never silently something else."""
    if requested == "auto":
        return candidates(machine, int8=int8)
    name, _, precision = requested.partition(":")
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; accepted: auto, {', '.join(ENGINES)}")
    here = ENGINES[name].precisions(machine)
    wanted = [precision] if precision else here
    missing = [p for p in wanted if p not in here]
    if missing or not wanted:
        raise ValueError(f"engine {name} cannot run {', '.join(missing) or 'anything'} on this machine "
                         f"(available here: {', '.join(here) or 'none'})")
    return [(name, p) for p in wanted]
