"""ONNX Runtime's CUDA execution provider (the `gpu` install extra), fp32 or fp16.

fp16 converts the graph at load (onnxconverter-common, inputs and outputs kept fp32); the quality
gate decides whether that precision may serve. Checked against the exact answers in
tests/test_server_gpu.py, which skips its GPU cases where no GPU is visible (every session of this
project so far).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from server.engines.onnxruntime_cpu import OrtEncoder, session_options
from server.machine import Machine


class OnnxRuntimeCuda:
    name = "onnxruntime-cuda"

    @staticmethod
    def precisions(machine: Machine) -> list[str]:
        if not machine.cuda_provider:
            return []
        return ["fp32", "fp16"] if importlib.util.find_spec("onnxconverter_common") else ["fp32"]

    @staticmethod
    def load(path: Path, precision: str, threads: int, instances: int = 1) -> OrtEncoder:
        import onnx
        import onnxruntime as ort

        model: str | bytes = str(path)
        if precision == "fp16":
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True).SerializeToString()
        elif precision != "fp32":
            raise ValueError(f"{OnnxRuntimeCuda.name} runs fp32 or fp16, not {precision}")
        session = ort.InferenceSession(model, sess_options=session_options(threads),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"{path}: ONNX Runtime did not place the graph on the GPU "
                               f"(providers {session.get_providers()})")
        return OrtEncoder(session, OnnxRuntimeCuda.name, precision, "cuda:0")
