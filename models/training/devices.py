"""Where training runs and in which precision.

bf16 autocast pays on CPUs only where the hardware multiplies bf16 natively (AMX or
avx512_bf16: about 2.2x per token measured on SmolLM2); elsewhere it is emulated and slower than
fp32, so `auto` reads /proc/cpuinfo. GPUs without bf16 (before Ampere) get fp16 with a GradScaler,
since fp16's range underflows small gradients.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from common.cpu import BF16_FLAGS, CPUINFO, cpu_flags
from models.training.config import Precision


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")


def cpu_has_bf16() -> bool:
    """Tests patch this to pretend a CPU has (or lacks) native bf16."""
    return bool(BF16_FLAGS & cpu_flags())


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """`auto|cpu|cuda|cuda:N` -> a device; under torchrun `cuda` and `auto` mean cuda:LOCAL_RANK."""
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA GPU is visible to torch; use --device cpu or auto")
        index = int(spec.split(":", 1)[1]) if ":" in spec else rank
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {spec!r}; accepted: auto, cpu, cuda, cuda:N")


def autocast_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """The autocast dtype for this device and request; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast is for CUDA only; on a CPU use bf16 or fp32")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
