"""The training loop every model runs through.

A model supplies a `Task`: its stages, its batches, its loss, its validation score and its
checkpoint writer. The loop does the rest, the same way for every model:
- puts the model on the device, wraps it in DDP under torchrun (each rank takes its shard of
  every epoch's batches; gradients are averaged; validation sums are all-reduced, so every rank
  takes the same early-stopping decision; only rank 0 writes); the task's sparse-gradient parameters
  (`sparse_parameters`, optional) stay out of DDP and are averaged by Placement.mean_sparse_grads;
- AdamW over the task's parameter groups, a per-step LR schedule (constant or cosine, with
  linear warm-up), gradient clipping, autocast for the steps (bf16, or fp16 with a GradScaler);
  validation always in fp32, the precision `llmrec eval` scores the test part in;
- early stopping on the task's validation score, keeping the best epoch's tensors, and a time
  budget checked after every step: an epoch that runs past it stops there (one epoch on a large data
  set can take hours, so a budget checked only between epochs could not stop the first one); that
  partial epoch is validated and logged like a whole one (with its step count and `cut`), and the run
  ends with the checkpoint of the best epoch so far, the resume state and `stopped: time_budget`;
- after every epoch: the checkpoint (when the epoch is the best so far, or the stage does not
  validate), the resume state and the JSON training log.
Resuming restores the trained tensors, the optimizer, the schedule, the grad scaler and every
random generator, so an interrupted run ends where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

from common import logs
from models.training import state as saved_state
from models.training.checkpoint import CONFIG
from models.training.config import Attention, RunConfig, TrainConfig
from models.training.devices import (
    attention_implementation,
    autocast,
    autocast_dtype,
    hf_models,
    precision_name,
    step_attention,
)
from models.training.distributed import Placement, init_distributed
from models.training.optim import RowAdamW

log = logs.get(__name__)
Batch = Any


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    validate: bool = True  # early stopping on the validation score; False keeps every epoch's model
    scheduled: bool = True  # the LR schedule applies; False trains at the constant base rates
    tasks: tuple[str, ...] = ()  # one sub-task name per epoch (CLLM4Rec's stage A), empty = the stage's name

    def task(self, epoch: int) -> str:
        return self.tasks[epoch] if self.tasks else self.name


class Task(Protocol):
    module: nn.Module  # what moves to the device, what DDP wraps

    def stages(self) -> list[Stage]: ...

    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        """AdamW groups: {"name", "params", "lr", "weight_decay"}."""
        ...

    def prepare(self) -> None:
        """Once before the first epoch of a fresh (not resumed) run, on the device."""
        ...

    def epoch_batches(self, stage: Stage, epoch: int, rng: np.random.Generator) -> list[Callable[[], Batch]]:
        """All ranks' batches of one epoch, in order, as builders; every rank gets the same list."""
        ...

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss of one batch through `net` (the module, or its DDP wrapper)."""
        ...

    def validate(self, place: Placement) -> dict[str, float]:
        """Validation metrics over all ranks, with the early-stopping "score" (higher is better)."""
        ...

    def trained_state(self) -> dict[str, torch.Tensor]: ...

    def load_trained_state(self, tensors: Mapping[str, torch.Tensor]) -> None: ...

    def save_checkpoint(self, out: Path, log: dict[str, Any]) -> None:
        """Writes the checkpoint of the module as it is now (see models.training.checkpoint)."""
        ...

    # Optional: `sparse_parameters() -> list[nn.Parameter]`, the parameters whose gradients are sparse
    # (read with F.embedding(sparse=True)). Under DDP the loop keeps them out of DDP's all-reduce and
    # averages them itself; a task without the method has none.


def show_progress(requested: bool) -> bool:
    """Progress bars only when asked for and a person is watching (stdout is a terminal): in logs
    and CI they are carriage-return noise."""
    return requested and sys.stdout.isatty()


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Tensors inside dicts, dataclasses, lists and tuples moved to `device`; anything else kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch)})
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@dataclass
class Progress:
    """The loop's counters: what resume restores and what the log reports."""

    stage: int = 0  # index into task.stages()
    epoch: int = 0  # epochs done in that stage
    best_score: float = float("-inf")
    best: dict[str, Any] = field(default_factory=dict)  # {"stage", "epoch", "valid"} of the best epoch
    bad_epochs: int = 0
    stopped: str = ""  # why the run ended early: "patience", "time_budget"
    epochs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)


class Loop:
    def __init__(self, task: Task, cfg: TrainConfig, out: Path, place: Placement,
                 amp_dtype: torch.dtype | None, meta: dict[str, Any] | None = None,
                 attention: Attention = "auto") -> None:
        self.task, self.cfg, self.out, self.place, self.amp = task, cfg, Path(out), place, amp_dtype
        self.meta = meta or {}
        self.module = task.module.to(place.device)
        self.attention = step_attention(place.device, amp_dtype, attention)
        self._hf_models = hf_models(self.module)
        self.net: nn.Module = self.module  # wrapped in DDP by fit(), once the task has prepared it
        self.sparse_params: list[nn.Parameter] = []  # under DDP: averaged over ranks by the loop, not DDP
        self.progress = Progress()
        self.rng = np.random.default_rng(cfg.seed)
        self.best_tensors: dict[str, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = torch.amp.GradScaler(place.device.type, enabled=amp_dtype is torch.float16)
        self._resumed: dict[str, Any] | None = None
        self._t0 = time.time()

    # ---- optimizer and schedule -------------------------------------------------------------
    def _new_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        groups = [g for g in self.task.param_groups(stage) if g["params"]]
        return RowAdamW(groups)  # AdamW; row-wise for parameters with sparse gradients (models.training.optim)

    def _new_scheduler(self, stage: Stage, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
        assert self.optimizer is not None
        warmup = self.cfg.warmup_steps if stage.scheduled else 0
        if stage.scheduled and self.cfg.lr_schedule == "cosine":
            return get_cosine_with_min_lr_schedule_with_warmup(
                self.optimizer, warmup, max(steps_per_epoch * stage.epochs, warmup + 1), min_lr_rate=self.cfg.lr_min_frac)
        return get_constant_schedule_with_warmup(self.optimizer, warmup)

    # ---- one epoch ----------------------------------------------------------------------------
    def _clip(self) -> None:
        """clip_grad_norm_ over every group, sparse gradients (the row-wise ID tables) included: torch's
        own refuses those."""
        assert self.optimizer is not None
        grads = [q.grad for g in self.optimizer.param_groups for q in g["params"] if q.grad is not None]
        dense = [g for g in grads if not g.is_sparse]
        sparse = [g.coalesce() for g in grads if g.is_sparse]
        sq = sum((float(g.detach().float().pow(2).sum()) for g in dense), 0.0)
        sq += sum((float(g.values().float().pow(2).sum()) for g in sparse), 0.0)
        scale = self.cfg.max_grad_norm / (sq**0.5 + 1e-6)
        if scale < 1.0:
            for g in dense:
                g.mul_(scale)
            for q in (q for g in self.optimizer.param_groups for q in g["params"]):
                if q.grad is not None and q.grad.is_sparse:
                    q.grad = q.grad.coalesce() * scale

    def _epoch(self, stage: Stage) -> tuple[float, int, bool, tuple[float, float]]:
        """(mean loss, steps, whether the time budget cut the epoch short, seconds before the first step:
        the epoch's examples and batches, which a cut epoch's seconds per step must not be charged with)."""
        p = self.progress
        t0, cpu0 = time.time(), time.process_time()
        builders = self.task.epoch_batches(stage, p.epoch, self.rng)
        if self.cfg.max_steps_per_epoch > 0:
            builders = builders[: self.cfg.max_steps_per_epoch * self.place.world]
        builders = self.place.shard(builders)
        if self.scheduler is None:
            self.scheduler = self._new_scheduler(stage, len(builders))
            if self._resumed and self._resumed["scheduler"]:
                self.scheduler.load_state_dict(self._resumed["scheduler"])
                # a new scheduler has just set every rate to its first step's; put back the saved ones
                for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                    group["lr"] = lr
        assert self.optimizer is not None
        self.module.train()
        bar = tqdm(builders, desc=f"{stage.name}:{stage.task(p.epoch)} {p.epoch + 1}/{stage.epochs}",
                   disable=not (self.place.main and show_progress(self.cfg.progress)), leave=False)
        total, steps, cut = 0.0, 0, False
        setup = time.time() - t0, time.process_time() - cpu0
        for build in bar:
            total += self.step(build())
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
            if steps < len(builders) and self._out_of_time(steps):
                cut = True
                break
        mean = self.place.all_sum([total, float(steps)])
        return mean[0] / max(mean[1], 1.0), steps, cut, setup

    def step(self, batch: Batch) -> float:
        """One optimizer step on one batch (what an epoch repeats; benchmarks time it alone); its loss."""
        assert self.optimizer is not None and self.scheduler is not None
        batch = to_device(batch, self.place.device)
        with attention_implementation(self._hf_models, self.attention):
            with autocast(self.place.device, self.amp):
                loss = self.task.loss(self.net, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.place.mean_sparse_grads(self.sparse_params)
        if self.cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            if any(q.grad is not None and q.grad.is_sparse for g in self.optimizer.param_groups for q in g["params"]):
                self._clip()
            else:
                params = [q for g in self.optimizer.param_groups for q in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    # ---- state --------------------------------------------------------------------------------
    def _state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model.{k}": v for k, v in self.task.trained_state().items()}
        tensors |= {f"best.{k}": v for k, v in (self.best_tensors or {}).items()}
        scalars: dict[str, Any] = {}
        if self.optimizer is not None:
            opt_tensors, scalars = saved_state.split_optimizer(self.optimizer.state_dict())
            tensors |= opt_tensors
        return tensors | saved_state.rng_tensors(), scalars

    def _save(self, checkpoint: bool) -> None:
        if not self.place.main:
            return
        log_payload = self.log()
        if checkpoint:
            self.task.save_checkpoint(self.out, log_payload)
        tensors, optimizer = self._state_tensors()
        scalars = {
            "progress": dataclasses.asdict(self.progress),
            "numpy_rng": self.rng.bit_generator.state,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        saved_state.save(self.out, tensors, scalars)
        saved_state.write_log(self.out, log_payload)

    def _restore(self) -> bool:
        loaded = saved_state.load(self.out) if self.cfg.resume else None
        if loaded is None:
            return False
        tensors, scalars = loaded
        prog = scalars["progress"]
        self.progress = Progress(**prog)
        self.rng.bit_generator.state = scalars["numpy_rng"]
        try:
            self.task.load_trained_state({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{self.out / saved_state.FOLDER} was written by a different model setup ({exc}); "
                             "use another --out or --train.no-resume") from exc
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_tensors = best or None
        saved_state.restore_rng(tensors)
        if scalars["scaler"]:
            self.scaler.load_state_dict(scalars["scaler"])
        self._resumed = {"optimizer": scalars["optimizer"] and saved_state.join_optimizer(tensors, scalars["optimizer"]),
                         "scheduler": scalars["scheduler"]}
        log.info("resumed", out=str(self.out), stage=self.progress.stage, epoch=self.progress.epoch)
        return True

    def log(self) -> dict[str, Any]:
        """The JSON training log: every epoch, the best one, why it stopped, where and how it ran."""
        p = self.progress
        return {**self.meta, "device": str(self.place.device), "precision": precision_name(self.amp),
                "attention": self.attention or "model's own",
                "world_size": self.place.world, "train": dataclasses.asdict(self.cfg), "epochs": p.epochs,
                "best": p.best, "stopped": p.stopped, "wall_s": p.wall_s}

    # ---- the run -------------------------------------------------------------------------------
    def _out_of_time(self, step: int | None = None) -> bool:
        """Whether the budget is spent; `step` (within an epoch) says the check is a step's. Under DDP
        every rank must stop at the same step (or the next all-reduce waits forever), so rank 0's clock
        decides, shared through one all-reduce of a flag."""
        budget = self.cfg.time_budget_min * 60
        if budget <= 0:
            return False
        over = float(time.time() - self._t0 > budget and self.place.main)
        if self.place.world > 1:
            over = self.place.all_sum([over])[0]
        if over:
            self.progress.stopped = "time_budget"
            where = {"after_step": step} if step is not None else {}
            log.info("time budget reached: " + ("epoch cut short" if step is not None else "no new epoch"),
                     budget_min=self.cfg.time_budget_min, **where)
            return True
        return False

    def _add_time(self, key: str, seconds: float) -> None:
        self.progress.wall_s[key] = self.progress.wall_s.get(key, 0.0) + seconds

    def _run_stage(self, stage: Stage) -> None:
        p = self.progress
        self.optimizer = self._new_optimizer(stage)
        self.scheduler = None
        if self._resumed and self._resumed["optimizer"]:
            self.optimizer.load_state_dict(self._resumed["optimizer"])
        while p.epoch < stage.epochs and not self._out_of_time():
            t0, cpu0 = time.time(), time.process_time()
            loss, steps, cut, setup = self._epoch(stage)
            self._resumed = None
            seconds = time.time() - t0
            self._add_time(stage.name, seconds)
            p.epoch += 1
            # CPU seconds beside the wall: on a shared machine the wall also counts other jobs' turns
            entry: dict[str, Any] = {"stage": stage.name, "epoch": p.epoch, "task": stage.task(p.epoch - 1),
                                     "loss": loss, "seconds": seconds, "cpu_seconds": time.process_time() - cpu0,
                                     "steps": steps,
                                     "setup_seconds": round(setup[0], 3), "setup_cpu_seconds": round(setup[1], 3),
                                     "lr": [g["lr"] for g in self.optimizer.param_groups]}
            if cut:
                entry["cut"] = "time_budget"  # a partial epoch: `steps` of it ran
            improved = not stage.validate
            if stage.validate:
                t1 = time.time()
                # outside the training autocast: `llmrec eval` scores the test part in fp32, and under bf16
                # the top-K ties fall differently, enough to change the chosen epoch or variant
                entry["valid"] = self.task.validate(self.place)
                self._add_time("validation", time.time() - t1)
                improved = entry["valid"]["score"] > p.best_score
                if improved:
                    p.best_score, p.bad_epochs = entry["valid"]["score"], 0
                    p.best = {"stage": stage.name, "epoch": p.epoch, "valid": entry["valid"]}
                    self.best_tensors = self.task.trained_state()
                else:
                    p.bad_epochs += 1
            p.epochs.append(entry)
            if self.place.main:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items() if k not in ("valid", "lr")}
                log.info("epoch", **shown, **{k: round(v, 4) for k, v in entry.get("valid", {}).items()})
            stop = cut or (stage.validate and p.bad_epochs >= self.cfg.patience)
            if stop and not cut:
                p.stopped = "patience"
            self._save(checkpoint=improved)
            if stop:
                break
        self._resumed = None  # what was saved belongs to this stage; the next one starts fresh

    def _wrap_ddp(self) -> nn.Module:
        """DDP over the dense parameters; the task's sparse-gradient ones are left out of it (its buckets
        cannot hold sparse gradients) and start equal on every rank as DDP's own do (rank 0's)."""
        ids = {id(q) for q in getattr(self.task, "sparse_parameters", list)()}
        named = [(n, q) for n, q in self.module.named_parameters() if id(q) in ids]  # one order on every rank
        if len(named) != len(ids):
            raise ValueError("the task's sparse_parameters() must be parameters of its module")
        # DDP spells a parameter's name two ways: as named_parameters() does ("collab_embeddings") when it
        # picks its parameters, and as f"{module}.{param}" (".collab_embeddings" at the root) when it
        # builds its reducer; both must be ignored
        spelt = [f"{m}.{n}" for m, sub in self.module.named_modules() for n, q in sub.named_parameters(recurse=False)
                 if id(q) in ids]
        ignored = sorted({*spelt, *(n.removeprefix(".") for n in spelt)})
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.module, ignored)
        self.sparse_params = [q for _, q in named]
        for q in self.sparse_params:
            dist.broadcast(q.data, 0)
        devices = [self.place.device.index] if self.place.device.type == "cuda" else None
        return DistributedDataParallel(self.module, device_ids=devices, find_unused_parameters=True,
                                       broadcast_buffers=False)

    def fit(self) -> dict[str, Any]:
        """Runs (or resumes) every stage; leaves the best epoch's tensors in the module and on disk."""
        if not self._restore():
            self.task.prepare()
        if self.place.world > 1:
            self.net = self._wrap_ddp()
        stages = self.task.stages()
        p = self.progress
        while p.stage < len(stages) and not p.stopped:
            self._run_stage(stages[p.stage])
            if p.stopped:
                break
            p.stage, p.epoch, p.bad_epochs = p.stage + 1, 0, 0
        if self.best_tensors is not None:
            self.task.load_trained_state(self.best_tensors)
        if self.place.main and not (self.out / CONFIG).is_file():
            self._save(checkpoint=True)  # no epoch ran (epochs 0, or no time): the initial model
        elif self.place.main:
            saved_state.write_log(self.out, self.log())
        self.place.barrier()
        return self.log()


def run(task: Task, run_cfg: RunConfig, cfg: TrainConfig, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Joins torchrun's process group (if any) on `run_cfg.device` and runs the loop in
    `run_cfg.precision`; returns the training log."""
    place = init_distributed(run_cfg.device)
    return Loop(task, cfg, out, place, autocast_dtype(place.device, run_cfg.precision), meta,
                run_cfg.attention).fit()
