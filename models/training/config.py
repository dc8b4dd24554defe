"""The engine's options, declared once and shared by every model's train command.

A model's schedule preset (e.g. `--schedule short`) only changes the defaults these fields start
from; flags given on the command line are applied after it, so they always win (see
`common.config.parse`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Attention = Literal["auto", "sdpa", "eager"]


@dataclass
class TrainConfig:
    epochs: int = 20  # most epochs of the validated (main) stage; 0 writes the untrained model
    patience: int = 3  # stop after this many epochs without a better validation score
    batch_size: int = 16  # examples per step on each rank (DDP: the global batch is world x this)
    lr: float = 1e-3  # learning rate of the model's own parameters (ID tables, towers)
    weight_decay: float = 0.0  # AdamW decoupled weight decay of those parameters
    lm_lr: float = 1e-4  # learning rate of LM weights that train (LoRA adapters, unfrozen blocks)
    lm_weight_decay: float = 0.0  # AdamW weight decay of those LM weights
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # per step over the main stage
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule starts
    lr_min_frac: float = 0.1  # the cosine ends at this share of each group's rate
    max_grad_norm: float = 0.0  # >0 clips the global gradient norm to this value
    max_steps_per_epoch: int = 0  # >0 caps every epoch at that many steps (quick schedules, benchmarks)
    # >0: the run stops after this many minutes, checked after every step (an epoch past it is cut there,
    # validated and kept if best; `stopped: time_budget` and the epoch's `cut` in the log)
    time_budget_min: float = 0.0
    seed: int = 0  # shuffling, sampling and initialisation
    resume: bool = True  # continue from <out>/train/ when a previous run left its state there
    progress: bool = True  # progress bars (only on a terminal, only on rank 0)


@dataclass
class DeviceConfig:
    # auto: cuda:<LOCAL_RANK> when a GPU is visible, else cpu; or cpu, cuda, cuda:N
    device: str = "auto"
    threads: int = 1  # torch intra-op threads on the CPU; 1 is fastest when other processes share the cores


@dataclass
class RunConfig(DeviceConfig):
    # auto: bf16 autocast on CUDA (fp16 + loss scaling where bf16 is missing) and on CPUs with
    # AMX / avx512_bf16, fp32 elsewhere; weights and checkpoints stay fp32 either way
    precision: Precision = "auto"
    # the LM's attention kernel for training steps (validation and eval keep the model's own). auto: eager
    # where the steps run bf16 autocast on a CPU, whose fused attention backward is slow there (an sdpa
    # SmolLM2 step took 1.33x an eager one at 137 tokens; alike in fp32); the model's own (sdpa) elsewhere
    attention: Attention = "auto"
