"""ONNX Runtime on the CPU, fp32: the reference engine, available everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from server.machine import Machine


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Several sessions share few cores: spinning threads steal time from each other (docs/performance.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OrtEncoder:
    def __init__(self, session: Any, name: str, precision: str, device: str) -> None:
        self._session = session
        self.name, self.precision, self.device = name, precision, device
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_name = session.get_outputs()[0].name

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self._session.run([self.output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)


class OnnxRuntimeCpu:
    name = "onnxruntime-cpu"

    @staticmethod
    def precisions(machine: Machine) -> list[str]:
        return ["fp32"]

    @staticmethod
    def load(path: Path, precision: str, threads: int, instances: int = 1) -> OrtEncoder:
        import onnxruntime as ort

        if precision != "fp32":
            raise ValueError(f"{OnnxRuntimeCpu.name} runs fp32 only, not {precision}")
        session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
        return OrtEncoder(session, OnnxRuntimeCpu.name, precision, "cpu")
