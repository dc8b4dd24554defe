"""torchrun's environment -> this process's rank, world and device, for every trainer.

The backend follows the device: NCCL for CUDA tensors, gloo for CPU tensors (NCCL rejects CPU
tensors, gloo is slow on GPUs). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous
address, across processes and machines alike; without them this is a single process.

Tables trained with sparse gradients (CLLM4Rec's `--recipe.sparse-ids`) stay out of DDP's dense
bucketed all-reduce, which cannot hold them: `Placement.mean_sparse_grads` averages them over ranks
with two all_gathers of their rows (indices and values, padded to the longest rank's), so that a step
still moves only the rows some rank read, and ranks stay identical.
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

    def mean_sparse_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Replaces each parameter's gradient by its mean over ranks, as a sparse gradient of the rows
        any rank touched: what DDP does for dense gradients, for the tables DDP is told to leave alone
        (its bucketed all-reduce cannot hold sparse gradients, and NCCL has no sparse all-reduce). Every
        rank must call it with the same parameters in the same order. A gradient may be None (no row
        read on this rank), sparse, or dense (its non-zero rows are sent)."""
        if self.world == 1 or not params:
            return
        parts = [_rows(p) for p in params]
        counts = torch.tensor([len(rows) for rows, _ in parts], dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(counts) for _ in range(self.world)]
        dist.all_gather(gathered, counts)
        sizes = torch.stack(gathered).tolist()  # [rank][param]
        for j, (p, (rows, values)) in enumerate(zip(params, parts, strict=True)):
            per_rank = [sizes[r][j] for r in range(self.world)]
            most = max(per_rank)
            if most == 0:
                p.grad = None  # no rank read a row: as after a backward that never touched the table
                continue
            # all_gather needs equal shapes: pad to the longest, cut each rank's share back after
            pad = most - len(rows)
            rows = torch.cat([rows, rows.new_zeros(pad)])
            values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
            all_rows = [torch.empty_like(rows) for _ in range(self.world)]
            all_values = [torch.empty_like(values) for _ in range(self.world)]
            dist.all_gather(all_rows, rows)
            dist.all_gather(all_values, values)
            index = torch.cat([r[:n] for r, n in zip(all_rows, per_rank, strict=True)])
            value = torch.cat([v[:n] for v, n in zip(all_values, per_rank, strict=True)])
            # rank order, then coalesce: every rank builds the same sum for a row read on several ranks
            summed = torch.sparse_coo_tensor(index.unsqueeze(0), value, p.shape).coalesce()
            p.grad = torch.sparse_coo_tensor(summed.indices(), summed.values() / self.world, p.shape, is_coalesced=True)


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


def _rows(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, row values) of `p`'s gradient: the rows a sparse gradient holds, the non-zero rows
    of a dense one, none for no gradient."""
    g = p.grad
    if g is None:
        return torch.zeros(0, dtype=torch.int64, device=p.device), p.new_zeros(0, *p.shape[1:])
    if not g.is_sparse:
        g = g.to_sparse(1)
    elif g.sparse_dim() != 1:
        g = g.to_dense().to_sparse(1)
    g = g.coalesce()
    return g.indices()[0], g.values()
