"""torchrun's environment -> this process's rank, world and device, for every trainer.

The backend follows the device: NCCL for CUDA tensors, gloo for CPU tensors (NCCL rejects CPU
tensors, gloo is slow on GPUs). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous
address, across processes and machines alike; without them this is a single process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

from models.training.devices import resolve_device

T = TypeVar("T")


@dataclass
class Placement:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Only the main rank writes files and shows progress."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's equal share of `items` (every rank must take as many steps, or DDP waits forever):
        the tail that does not divide evenly is dropped, and a list shorter than the world is repeated."""
        items = list(items)
        if self.world == 1:
            return items
        if len(items) < self.world:
            items = (items * self.world)[: self.world] if items else items
        per_rank = len(items) // self.world
        return items[self.rank :: self.world][:per_rank]

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, on the device the backend needs)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: str = "cpu") -> Placement:
    """Resolves `device` (see devices.resolve_device) and joins torchrun's process group if any."""
    place = resolve_device(device)
    if place.type == "cuda":
        torch.cuda.set_device(place)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Placement(device=place)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(place))
    return Placement(dist.get_rank(), dist.get_world_size(), place)
