"""Where training runs and in which precision.

bf16 autocast pays on CPUs only where the hardware multiplies bf16 natively (AMX or
avx512_bf16: about 2.2x per token measured on SmolLM2); elsewhere it is emulated and slower than
fp32, so `auto` reads /proc/cpuinfo. GPUs without bf16 (before Ampere) get fp16 with a GradScaler,
since fp16's range underflows small gradients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from common.cpu import BF16_FLAGS, CPUINFO, cpu_flags
from models.training.config import Attention, Precision


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


def step_attention(device: torch.device, dtype: torch.dtype | None, requested: Attention) -> str | None:
    """The attention implementation training steps run with; None keeps the model's own."""
    if requested != "auto":
        return requested
    return "eager" if device.type == "cpu" and dtype is torch.bfloat16 else None


def hf_models(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost Hugging Face models inside `module`, one per config (a Llama model and its
    ...ForCausalLM share one, and setting it on the outer one reaches the inner)."""
    found, seen = [], set()
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if hasattr(sub, "set_attn_implementation") and config is not None and id(config) not in seen:
            seen.add(id(config))
            found.append(sub)
    return found


@contextlib.contextmanager
def attention_implementation(models: list[torch.nn.Module], name: str | None) -> Iterator[None]:
    """Runs the block with every model in `models` on attention `name`, then puts each one's back."""
    if name is None or not models:
        yield
        return
    before = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation(name)
    try:
        yield
    finally:
        for m, b in zip(models, before, strict=True):
            m.set_attn_implementation(b)
