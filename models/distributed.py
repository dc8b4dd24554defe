"""torchrun's environment -> this process's rank, shared by the CLLM4Rec and TCF trainers.

Both trainers keep their tensors on the CPU (the frozen LM and the towers are small enough), so
the process group is always gloo: NCCL would reject CPU tensors even on a machine with GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """torchrun sets WORLD_SIZE/RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())
