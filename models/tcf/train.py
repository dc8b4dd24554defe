"""TCF as a task of the training engine (models.training.loop): IBCE batches over a leave-one-out
split, AdamW groups for the LM's unfrozen blocks, the text tower's MLP and the rest, early stopping
on validation HR@10. This module supplies only the batches, the loss, the score and the checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.data.dataset import InteractionData
from models.data.splits import Split, make_split
from models.tcf import text_encoder as te
from models.tcf.checkpoint import save_checkpoint
from models.tcf.data import Batch, dssm_batch, keep_recent, log_popularity, sasrec_batch, sasrec_windows
from models.tcf.model import TCFModel
from models.training.capacity import CapacityConfig
from models.training.config import TrainConfig
from models.training.distributed import Placement
from models.training.loop import Stage
from models.training.validation import evaluate_sharded, sample_users

METRICS = ("hr@10", "ndcg@10")
# a step's scores are [queries, items] (64 windows x 50 positions x 50k items: 640 MB in fp32)
FULL_SOFTMAX_MAX_ITEMS = 50_000


@dataclass
class RecipeConfig:
    # the text tower's MLP: the paper trains it at the LM's 5e-5; on ML-100K at D=64 that reached valid
    # HR@10 0.075 after 39 epochs vs 0.10+ within 15 epochs at 1e-3 (chosen on validation)
    mlp_lr: float = 1e-3
    keep_last: int = -1  # interactions kept per user; -1 = max_seq_len + 3 (the paper), 0 = all
    # "softmax": cross-entropy over every item (every item's vector and score computed each step);
    # "ibce": in-batch softmax with logQ correction (scales to any catalogue); "auto": softmax up to
    # FULL_SOFTMAX_MAX_ITEMS items, ibce above
    loss: Literal["auto", "ibce", "softmax"] = "auto"

    preinfer_batch: int = 64  # item texts per forward pass of the frozen LM part
    # cold-start protocol (models.tcf.holdout): this share of the items, drawn with holdout_seed, is kept
    # out of training with all its interactions and stays a test target; 0 = off
    holdout_items: float = 0.0
    holdout_seed: int = 0
    # validation (the epoch choice, early stopping) on a fixed sample of this many validation users drawn
    # with valid_seed, so that at 100k users it stays a small share of an epoch; 0: every user. The test
    # part is always complete. On ML-100K (943 users) the default sample is every user.
    valid_users: int = 2000
    valid_seed: int = 0

    def full_softmax(self, num_items: int) -> bool:
        return self.loss == "softmax" or (self.loss == "auto" and num_items <= FULL_SOFTMAX_MAX_ITEMS)


def prepared_split(data: InteractionData, max_seq_len: int, keep_last: int, seed: int) -> tuple[InteractionData, Split]:
    keep = max_seq_len + 3 if keep_last < 0 else keep_last
    prepared = keep_recent(data, keep)
    return prepared, make_split(prepared, "leave_one_out", seed)


def make_scorer(model: TCFModel, new_items: np.ndarray | None = None) -> Callable[[np.ndarray, list[np.ndarray]],
                                                                                  np.ndarray]:
    """scorer(users, history) for models.metrics.evaluate; item vectors computed once per call site.

    `new_items` (rows that were not trained on) are scored as the server scores items added by text:
    a hybrid tower's through their text part alone, a text tower's as usual; an ID tower has nothing
    to score them with, so they rank last (-inf)."""
    model.eval()
    item_vecs = model.all_item_vectors()
    new = np.asarray(new_items if new_items is not None else [], dtype=np.int64)
    if len(new) and model.cfg.item_tower == "hybrid":
        rows = torch.from_numpy(new).to(item_vecs.device)
        with torch.no_grad():
            item_vecs[rows] = model.item_tower.text(rows).to(item_vecs.dtype)
    unscorable = new if model.cfg.item_tower == "id" else new[:0]

    def scorer(users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        scores = (model.user_vectors(users, history, item_vecs) @ item_vecs.T).float().cpu().numpy()
        scores[:, unscorable] = -np.inf
        return scores

    return scorer


def masking(scorer: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
            extra: list[np.ndarray] | None) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    """`scorer` with each user's `extra` items (held-out items it watched) at -inf, as eval masks them."""
    if extra is None or not any(len(x) for x in extra):
        return scorer

    def masked(users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        scores = scorer(users, history)
        for i, u in enumerate(users):
            scores[i, extra[int(u)]] = -np.inf
        return scores

    return masked


@dataclass
class TCFTask:
    model: TCFModel
    data: InteractionData
    split: Split
    text: te.TextEncoderConfig
    lm_cfg: CapacityConfig
    recipe: RecipeConfig
    train: TrainConfig
    extra_config: dict[str, Any]
    held_out: np.ndarray | None = None  # item rows kept out of training (cold-start protocol)
    held_seen: list[np.ndarray] | None = None  # per user: held-out items it watched (masked at eval)

    def __post_init__(self) -> None:
        self.module: nn.Module = self.model
        self.candidates = None if self.held_out is None or not len(self.held_out) else \
            np.setdiff1d(np.arange(self.data.num_items), self.held_out)
        self.log_q = log_popularity(self.split.train, self.data.num_items)
        self.pairs_u = np.concatenate([np.full(len(t), u) for u, t in enumerate(self.split.train)]).astype(np.int64)
        self.pairs_i = np.concatenate(self.split.train).astype(np.int64)
        self.windows = sasrec_windows(self.split.train, self.model.cfg.max_seq_len)
        every = self.split.eval_users("valid")
        self.valid_users = sample_users(every, self.recipe.valid_users, self.recipe.valid_seed)
        self.extra_config["validation_users"] = {"sampled": len(self.valid_users), "of": len(every),
                                                 "seed": self.recipe.valid_seed}

    def stages(self) -> list[Stage]:
        return [Stage("train", self.train.epochs)]

    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        lm, mlp, rest = [], [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                part = name.removeprefix("item_tower.").removeprefix("text.") if name.startswith("item_tower.") else ""
                (lm if part.startswith("top.") else mlp if part.startswith("mlp.") else rest).append(p)  # hybrid: text.
        t = self.train
        return [{"name": "lm", "params": lm, "lr": t.lm_lr, "weight_decay": t.lm_weight_decay},
                {"name": "mlp", "params": mlp, "lr": self.recipe.mlp_lr, "weight_decay": t.lm_weight_decay},
                {"name": "rest", "params": rest, "lr": t.lr, "weight_decay": t.weight_decay}]

    def prepare(self) -> None:
        """Nothing to calibrate: the towers start from their own initialisation."""

    def units(self) -> int:
        """Training examples of an epoch: SASRec windows or DSSM interactions."""
        return len(self.windows) if self.model.cfg.user_tower == "sasrec" else len(self.pairs_u)

    def epoch_batches(self, stage: Stage, epoch: int, rng: np.random.Generator) -> list[Callable[[], Batch]]:
        """Windows of each user's sequence (SASRec: every training item a target once) or interactions
        (DSSM), shuffled."""
        units = rng.permutation(self.units()).astype(np.int64)
        size = self.train.batch_size
        return [functools.partial(self._batch, units[s : s + size]) for s in range(0, len(units), size)]

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        return net(batch)

    def validate(self, place: Placement) -> dict[str, float]:
        """Validation HR@10 on the sampled validation users, in fp32, the precision `llmrec eval tcf` scores the test part in: the engine
        runs validation inside the training autocast, and under bf16 the top-10 ties and near-ties
        fall differently, enough to swap variants that differ by a handful of users."""
        with torch.autocast(place.device.type, enabled=False):
            scorer = masking(make_scorer(self.model, self.held_out), self.held_seen)
            out = evaluate_sharded(scorer, self.split, "valid", METRICS, self.valid_users, place, batch_size=256)
        return out | {"score": out["hr@10"]}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_trained_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(tensors), strict=True)

    def save_checkpoint(self, out: Path, log: dict[str, Any]) -> None:
        d = self.data
        save_checkpoint(out, self.model, self.text, self.lm_cfg, d.users, d.items, d.item_text, d.item_title,
                        self.split, {**self.extra_config, "best": log["best"]}, d.catalogue_only,
                        self.held_seen)

    def _batch(self, units: np.ndarray) -> Batch:
        full = self.recipe.full_softmax(self.data.num_items)
        if self.model.cfg.user_tower == "sasrec":
            return sasrec_batch(self.windows[units], self.split.train, self.model.cfg.max_seq_len, self.log_q, full,
                                self.candidates)
        return dssm_batch(self.pairs_u[units], self.pairs_i[units], self.split.train, self.log_q, full,
                          self.candidates)
