"""OpenVINO on the CPU, reading the same ONNX file: fp32, bf16 where the CPU has AMX or avx512_bf16
(measured 2.5-4.9x ONNX Runtime fp32 on an AMX Xeon), and int8 weights (nncf weight compression).

One infer request per calling thread: a compiled model's shared request is not safe to use from two
threads, and a watchdog restart can briefly leave an abandoned worker running beside its successor.
Several callers (the batcher's `instances`) need a stream each: a compiled model runs one inference
per stream at a time, so with the latency hint's single stream two workers would take turns. The
streams share the weights (the depth-8 CLLM4Rec encoder: 413 MB resident with two streams, 345 MB
with one).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from common.openvino import HINTS, compile_config, read_onnx
from server.machine import Machine


class OvEncoder:
    def __init__(self, compiled: Any, precision: str) -> None:
        self._compiled = compiled
        self.name, self.precision, self.device = OpenVinoCpu.name, precision, "cpu"
        self.input_names = [i.get_any_name() for i in compiled.inputs]
        self.output_name = compiled.outputs[0].get_any_name()
        self._local = threading.local()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self._compiled.create_infer_request()
        out = req.infer(feeds)
        return np.array(out[self._compiled.outputs[0]], dtype=np.float32)


class OpenVinoCpu:
    name = "openvino-cpu"

    @staticmethod
    def precisions(machine: Machine) -> list[str]:
        if not machine.openvino:
            return []
        out = ["fp32"]
        if machine.cpu_bf16:  # never otherwise: emulated bf16 is 44-53x slower than fp32
            out.append("bf16")
        if machine.nncf:
            out.append("int8w")
        return out

    @staticmethod
    def load(path: Path, precision: str, threads: int, instances: int = 1) -> OvEncoder:
        if precision not in HINTS:
            raise ValueError(f"{OpenVinoCpu.name} runs {', '.join(HINTS)}, not {precision}")
        core, model = read_onnx(path)
        if precision == "int8w":
            import nncf

            model = nncf.compress_weights(model)  # int8 weights, fp32 activations
        return OvEncoder(core.compile_model(model, "CPU", compile_config(precision, threads, instances)), precision)
