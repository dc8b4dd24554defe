"""The student as a task of the training engine (models.training.loop), as models/tcf/train.py is: this
module supplies the batches of training prefixes, the three losses, the validation score (the teacher's own
selection score, recall@20 + recall@40 + NDCG@100 on validation users) and the checkpoint writer; the
engine does the rest (time budget, early stopping on validation, resume, the JSON log)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.cllm4rec.scoring import History
from models.cllm4rec.train import SELECTION_METRICS
from models.data.dataset import InteractionData
from models.data.splits import Split
from models.student.checkpoint import save_checkpoint
from models.student.config import DistillConfig
from models.student.loss import Targets, losses
from models.student.model import Student, left_padded
from models.student.teacher import Prefixes, TeacherOutputs
from models.training.config import TrainConfig
from models.training.distributed import Placement
from models.training.loop import Stage
from models.training.validation import evaluate_sharded


@dataclass
class StudentScorer:
    """`scorer(users, history) -> scores [B, J]` for models.metrics.evaluate: each history in time order,
    its most recent `max_seq_len` items, scored against the teacher's item vectors (as the export serves)."""

    model: Student
    hist: History
    batch_size: int = 256

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        self.model.eval()
        ordered = [self.hist.ordered(int(u), h) for u, h in zip(users, history, strict=True)]
        out = np.zeros((len(ordered), self.model.vector_dim), dtype=np.float32)
        for s in range(0, len(ordered), self.batch_size):
            rows, mask = left_padded(ordered[s: s + self.batch_size], self.model.cfg.max_seq_len)
            out[s: s + len(rows)] = self.model(rows.to(self.model.device), mask.to(self.model.device)).float().cpu().numpy()
        return out

    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        return self.user_vectors(users, history) @ self.model.teacher_items.float().cpu().numpy().T


@dataclass
class StudentTask:
    model: Student
    data: InteractionData
    split: Split
    hist: History
    prefixes: Prefixes
    teacher: TeacherOutputs | None  # None: trained without the teacher (its losses are off)
    distill: DistillConfig
    train: TrainConfig
    extra_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module: nn.Module = self.model
        if self.teacher is None and self.distill.uses_teacher():
            raise ValueError("the teacher's losses are on (rank/embed weight > 0) but no teacher outputs were given")
        if self.distill.truth_weight <= 0 and not self.distill.uses_teacher():
            raise ValueError("every loss weight is 0: nothing to train on")
        self.scorer = StudentScorer(self.model, self.hist)

    def stages(self) -> list[Stage]:
        return [Stage("train", self.train.epochs)]

    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        return [{"name": "student", "params": [p for p in self.model.parameters() if p.requires_grad],
                 "lr": self.train.lr, "weight_decay": self.train.weight_decay}]

    def prepare(self) -> None:
        """Nothing to calibrate: item rows start at the teacher's, the blocks at their own initialisation."""

    def epoch_batches(self, stage: Stage, epoch: int, rng: np.random.Generator) -> list[Callable[[], dict]]:
        order = rng.permutation(len(self.prefixes)).astype(np.int64)
        size = self.train.batch_size
        return [functools.partial(self._batch, order[s: s + size]) for s in range(0, len(order), size)]

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return losses(self.distill, net(batch["item_rows"], batch["mask"]), self.model.teacher_items,
                      batch["targets"])["total"]

    def validate(self, place: Placement) -> dict[str, float]:
        """In fp32 whatever the training autocast, as `llmrec eval student` scores the test part."""
        with torch.autocast(place.device.type, enabled=False):
            out = evaluate_sharded(self.scorer, self.split, "valid", SELECTION_METRICS, self.split.eval_users("valid"),
                                   place, batch_size=256)
        return out | {"score": sum(out[m] for m in SELECTION_METRICS)}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_trained_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(tensors), strict=True)

    def save_checkpoint(self, out: Path, log: dict[str, Any]) -> None:
        save_checkpoint(out, self.model, self.data, {**self.extra_config, "best": log["best"]})

    def _batch(self, idx: np.ndarray) -> dict[str, Any]:
        p = self.prefixes
        rows, mask = left_padded([p.history(int(i)) for i in idx], self.model.cfg.max_seq_len)
        seen = torch.zeros((len(idx), self.model.num_items), dtype=torch.bool)
        truth = torch.zeros((len(idx), self.model.num_items))
        for b, i in enumerate(idx):
            seen[b, torch.from_numpy(p.history(int(i)))] = True
            truth[b, torch.from_numpy(p.future(int(i)))] = 1.0
        targets = Targets(seen, truth)
        if self.teacher is not None:
            targets.top_items = torch.from_numpy(self.teacher.top_items[idx])
            targets.top_scores = torch.from_numpy(self.teacher.top_scores[idx])
            targets.teacher_vectors = torch.from_numpy(self.teacher.vectors[idx])
        return {"item_rows": rows, "mask": mask, "targets": targets}
