"""CLLM4Rec as a task of the training engine (models.training.loop).

Stages: "pretrain" (the paper's stage A: content warm-up epochs, then alternating collaborative /
content epochs; every epoch is kept, no validation, constant rate) and "rec" (stage B: the rec
head, with early stopping on validation and the LR schedule). This module supplies only the
examples, the batches, the losses, the validation score and the checkpoint writer.

Two training levers keep a step's cost independent of the number of users and items (off by default;
see models.cllm4rec.model): `--recipe.sparse-ids` (the ID tables get sparse gradients of the batch's
rows, updated row-wise) and `--recipe.item-negatives K` (a sampled softmax over the batch's own items
plus K negatives drawn from the training popularity, with the logQ correction). The negatives of each
batch come from a seed drawn with the epoch's shuffling, so a resumed run draws the same ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.cllm4rec import checkpoint as ckpt_io
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import (
    IGNORE,
    Template,
    bucket_batches,
    collab_example,
    collate,
    content_example,
    movie_prefix,
    rec_prompt,
    review_prefix,
    truncate_history,
)
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.cllm4rec.tokens import IdTokenizer
from models.data.dataset import InteractionData
from models.data.splits import Split
from models.training.capacity import CapacityConfig
from models.training.config import TrainConfig
from models.training.distributed import Placement
from models.training.loop import Stage
from models.training.validation import evaluate_sharded

SELECTION_METRICS = ("recall@20", "recall@40", "ndcg@100")
Examples = tuple[list[list[int]], list[list[int]]]


@dataclass
class RecipeConfig:
    content_warmup_epochs: int = 1  # stage A: content-LM epochs first
    pretrain_rounds: int = 2  # stage A: then this many (collaborative, content) epoch pairs
    stage_a_plan: str = ""  # e.g. "collab,content,collab": overrides the two fields above when set
    pretrain_lr: float = 1e-3  # stage A learning rate of the ID tables (stage B uses --train.lr)
    head_lr: float = 5e-2  # temperature and item bias (see CLLM4Rec.head_parameters)
    # "title": item rows start at the mean vocabulary embedding of the item's title (items without
    # one stay random); "random": N(0, init_std^2) everywhere, as in the paper
    item_init: Literal["title", "random"] = "title"
    max_text_tokens: int = 48  # content-LM text tokens kept per item or review
    holdout_frac: float = 0.2  # share of a user's train items hidden from the prompt as rec targets
    anon_frac: float = 0.25  # share of rec examples whose user token is the anonymous-user token
    rec_collab_weight: float = 0.0  # >0: add the collaborative-LM loss on the rec prompt's history (same forward)
    valid_users: int = 0  # >0: validate on that many users (a fixed random subset); 0 = all
    eval_batch_size: int = 32  # prompts per forward pass when scoring users
    calibrate_users: int = 64  # users whose prompts set the feature scale and temperature at the start
    # >0: the collaborative loss (and with sampled_rec the rec loss) scores only the batch's own items plus
    # this many negatives drawn from Q (sampled softmax, logits corrected by -log Q); 0: every item (the paper's)
    item_negatives: int = 0
    # share of the negatives' proposal Q that is uniform over the items, the rest by training popularity
    # (log Q corrects for both): popularity alone rarely draws a tail item as a negative
    negatives_uniform: float = 0.0
    # with item_negatives: False (default) samples only the collaborative loss (a row per history position,
    # nearly all of the softmax's cost) and the rec loss (one pooled row per prompt) keeps every item; True
    # samples both, as runs before this setting did: at 10k synthetic users, 5 epochs, one seed, test
    # Recall@20 against dense tables and the full softmax: -0.016 +- 0.003 sampling both, +0.008 +- 0.002
    # sampling the collaborative loss only (benchmarks/results/quality_cllm4rec_synthetic10k_levers.md)
    sampled_rec: bool = False
    # the ID tables get sparse gradients (only the batch's rows) and row-wise Adam updates, so a step's
    # cost does not grow with the table; False: dense gradients and AdamW over the whole tables
    sparse_ids: bool = False
    # how the sparse ID rows are updated (with sparse_ids): "adam" (lazy row-wise Adam, two moments as large as
    # the tables) or "adagrad" (row-wise Adagrad, one value per row: the tables' optimizer state shrinks by
    # 2 x hidden, e.g. 43 GiB -> 0.04 GiB at 10M users)
    id_optimizer: Literal["adam", "adagrad"] = "adam"
    # Sizes from which the two step-cost levers switch on by themselves (0: never). Below them the dense
    # tables and the full softmax cost little (MovieLens-100K's default stays as measured); above, they
    # dominate the step (100k users / 20k items, bf16, longest prompts: 4.17 s per step dense, 1.34 s with
    # both; benchmarks/results/bench_cllm4rec_step_scale_bf16.md). ID rows: users with a token + items.
    sparse_ids_from_rows: int = 50_000  # sparse_ids on from this many ID rows
    sampled_items_from: int = 10_000  # item_negatives = scale_negatives from this many items (when left at 0)
    scale_negatives: int = 1024

    def stage_a_plan_tasks(self) -> list[str]:
        if self.stage_a_plan:
            plan = [t.strip() for t in self.stage_a_plan.split(",") if t.strip()]
            bad = [t for t in plan if t not in ("collab", "content")]
            if bad:
                raise ValueError(f"stage_a_plan has unknown task(s) {bad}; accepted: collab, content")
            return plan
        return ["content"] * self.content_warmup_epochs + ["collab", "content"] * self.pretrain_rounds


def at_scale(recipe: RecipeConfig, id_rows: int, items: int) -> tuple[RecipeConfig, dict[str, Any]]:
    """The recipe with the step-cost levers its sizes call for switched on, and what was switched (for the log)."""
    changes: dict[str, Any] = {}
    if not recipe.sparse_ids and 0 < recipe.sparse_ids_from_rows <= id_rows:
        changes["sparse_ids"] = True
    if recipe.item_negatives == 0 and 0 < recipe.sampled_items_from <= items:
        changes["item_negatives"] = recipe.scale_negatives
    return dataclasses.replace(recipe, **changes), changes


def with_content_table(model: ModelConfig, recipe: RecipeConfig) -> ModelConfig:
    """The model config with `content_table` decided: asked for explicitly, or else only when the recipe has a
    stage A (its content LM and collaborative LM both read the content table through the mutual regularizer).
    The default schedule has none, and at 10M users the table would be ~23 GB of weights nothing reads."""
    if model.content_table is not None:
        return model
    return dataclasses.replace(model, content_table=bool(recipe.stage_a_plan_tasks()))


@dataclass
class CLLM4RecTask:
    model: CLLM4Rec
    tok: IdTokenizer
    tmpl: Template
    data: InteractionData
    split: Split
    recipe: RecipeConfig
    train: TrainConfig
    backbone_ref: dict[str, Any]
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    extra_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module: nn.Module = self.model
        self.hist = History.build(self.data)
        self.train_hist = [self.hist.ordered(u, t) for u, t in enumerate(self.split.train)]
        self.prompts = PromptBuilder(self.tmpl, self.tok.vocab, self.model.cfg.max_history, self.tok.pad_token_id)
        self.scorer = RecScorer(self.model, self.prompts, self.hist, self.recipe.eval_batch_size)
        self.plan = self.recipe.stage_a_plan_tasks()
        if self.plan and self.model.content_embeddings is None:
            raise ValueError(f"the recipe's stage A ({','.join(self.plan)}) reads the content table, which this model "
                             "was built without: drop --model.content-table False")
        if self.recipe.id_optimizer != "adam" and not self.recipe.sparse_ids:
            raise ValueError(f"--recipe.id-optimizer {self.recipe.id_optimizer} updates sparse ID rows: add "
                             "--recipe.sparse-ids")
        if self.recipe.item_negatives < 0:
            raise ValueError(f"item_negatives must be >= 0, got {self.recipe.item_negatives}")
        self.model.sparse_ids = self.recipe.sparse_ids
        if not 0.0 <= self.recipe.negatives_uniform <= 1.0:
            raise ValueError(f"negatives_uniform is a share in [0, 1], got {self.recipe.negatives_uniform}")
        # the negatives' proposal Q: training popularity (+1 so that every item can be drawn), mixed with uniform
        counts = np.bincount(np.concatenate([np.asarray(t, dtype=np.int64) for t in self.split.train] or [np.zeros(0, np.int64)]),
                             minlength=self.data.num_items) + 1.0
        u = self.recipe.negatives_uniform
        q = (1.0 - u) * counts / counts.sum() + u / self.data.num_items
        self.item_cdf = np.cumsum(q)
        self.item_log_q = np.log(q).astype(np.float32)

    # ---- the engine's interface -----------------------------------------------------------------
    def stages(self) -> list[Stage]:
        pretrain = [Stage("pretrain", len(self.plan), validate=False, scheduled=False, tasks=tuple(self.plan))]
        return (pretrain if self.plan else []) + [Stage("rec", self.train.epochs)]

    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        lr = self.recipe.pretrain_lr if stage.name == "pretrain" else self.train.lr
        return [
            {"name": "ids", "params": self.model.id_parameters(), "lr": lr, "weight_decay": self.train.weight_decay,
             "row_rule": self.recipe.id_optimizer},
            {"name": "head", "params": self.model.head_parameters(), "lr": self.recipe.head_lr, "weight_decay": 0.0},
            {"name": "lm", "params": self.model.lm_parameters(), "lr": self.train.lm_lr,
             "weight_decay": self.train.lm_weight_decay},
        ]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The ID tables when they get sparse gradients: under DDP the loop averages them, not DDP."""
        return self.model.id_parameters() if self.recipe.sparse_ids else []

    def prepare(self) -> None:
        """Feature scale, temperature and item-bias prior from real prompts (see CLLM4Rec.calibrate)."""
        users = [u for u, t in enumerate(self.train_hist) if len(t)]
        rng = np.random.default_rng(self.train.seed)
        pick = rng.choice(users, min(self.recipe.calibrate_users, len(users)), replace=False)
        prompts = [self.prompts.rec(int(u), self.train_hist[u]) for u in pick]
        device = self.model.device
        batches = [{k: v.to(device) for k, v in collate(prompts[i : i + 16], self.tok.pad_token_id).items()}
                   for i in range(0, len(prompts), 16)]
        counts = np.bincount(np.concatenate([t for t in self.split.train if len(t)]), minlength=self.data.num_items)
        self.model.calibrate(batches, torch.from_numpy(counts))

    def epoch_batches(self, stage: Stage, epoch: int, rng: np.random.Generator) -> list[Callable[[], dict]]:
        task = stage.task(epoch)
        if task == "rec":
            rows, targets, labels = self.rec_examples(rng)
            make = functools.partial(self._rec_batch, rows, targets, labels)
        else:
            rows, labels = self.collab_examples(rng) if task == "collab" else self.content_examples()
            make = functools.partial(self._lm_batch, task, rows, labels)
        batches = bucket_batches(np.array([len(r) for r in rows]), self.train.batch_size, rng)
        if self.recipe.item_negatives > 0 and task in ("rec", "collab"):
            seeds = rng.integers(0, 2**62, len(batches))  # drawn only then: the default run's generator is untouched
            return [functools.partial(make, idx, seed=int(s)) for idx, s in zip(batches, seeds, strict=True)]
        return [functools.partial(make, idx) for idx in batches]

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        task = batch.pop("task")
        return net(task, **batch)

    def validate(self, place: Placement) -> dict[str, float]:
        users = self.eval_users("valid", self.recipe.valid_users)
        out = evaluate_sharded(self.scorer, self.split, "valid", SELECTION_METRICS, users, place)
        return out | {"score": sum(out[m] for m in SELECTION_METRICS)}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.model.trained_state()

    def load_trained_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.model.load_trained_state(tensors)

    def save_checkpoint(self, out: Path, log: dict[str, Any]) -> None:
        extra = {**self.extra_config, "best": log["best"]}
        ckpt_io.save_checkpoint(out, self.model, self.tok, self.tmpl, self.data, self.backbone_ref, self.capacity,
                                extra)

    # ---- examples -------------------------------------------------------------------------------
    def collab_examples(self, rng: np.random.Generator) -> Examples:
        rows, labels = [], []
        for u, items in enumerate(self.train_hist):
            if len(items) == 0:
                continue
            kept = truncate_history(items, self.model.cfg.max_history)
            ids, lab = collab_example(self.tmpl, self.tok.vocab.user(u), rng.permutation(kept), self.tok.vocab.item_offset)
            rows.append(ids)
            labels.append(lab)
        return rows, labels

    def content_examples(self) -> Examples:
        rows, labels = [], []
        v, limit = self.tok.vocab, self.recipe.max_text_tokens
        if self.data.review is not None:
            train_sets = [set(map(int, t)) for t in self.split.train]
            for k, (u, j) in enumerate(zip(self.data.user, self.data.item, strict=True)):
                text = self.data.review[k]
                if text and int(j) in train_sets[int(u)]:
                    prefix = review_prefix(self.tmpl, v.user(int(u)), v.item(int(j)))
                    ids, lab = content_example(prefix, self.tok.words(" " + text), limit)
                    rows.append(ids)
                    labels.append(lab)
        else:
            for j, text in enumerate(self.data.item_text):
                text_ids = self.tok.words(" " + text)
                if text_ids:
                    ids, lab = content_example(movie_prefix(self.tmpl, v.item(j)), text_ids, limit)
                    rows.append(ids)
                    labels.append(lab)
        return rows, labels

    def rec_examples(self, rng: np.random.Generator) -> tuple[list[list[int]], list[np.ndarray], list[list[int]]]:
        """Rec prompts with `holdout_frac` of the train items held out as targets, and history labels."""
        rows, targets, labels = [], [], []
        v = self.tok.vocab
        head = 1 + len(self.tmpl.has_interacted)
        tail = len(self.tmpl.comma) + 1 + len(self.tmpl.will_interact)
        for u, items in enumerate(self.train_hist):
            n = len(items)
            if n == 0:
                continue
            n_out = max(1, round(self.recipe.holdout_frac * n)) if n > 1 else 1
            held = np.zeros(n, dtype=bool)
            held[rng.choice(n, n_out, replace=False)] = True
            shown = rng.permutation(truncate_history(items[~held], self.model.cfg.max_history))
            user_token = v.anon_token if rng.random() < self.recipe.anon_frac else v.user(u)
            rows.append(rec_prompt(self.tmpl, user_token, shown + v.item_offset))
            targets.append(items[held])
            labels.append([IGNORE] * head + [int(j) for j in shown] + [IGNORE] * tail)
        return rows, targets, labels

    # ---- batches --------------------------------------------------------------------------------
    def candidates(self, positives: np.ndarray, seed: int) -> np.ndarray:
        """A batch's sampled-softmax items, sorted: its positives and `item_negatives` draws from Q
        (with replacement; duplicates and draws that are positives count once)."""
        draws = np.random.default_rng(seed).random(self.recipe.item_negatives)
        negatives = np.minimum(np.searchsorted(self.item_cdf, draws, side="right"), self.data.num_items - 1)
        return np.unique(np.concatenate([np.asarray(positives, dtype=np.int64), negatives]))

    def _sampled(self, batch: dict[str, Any], positives: np.ndarray, seed: int) -> np.ndarray:
        """Adds candidates and their log Q to `batch`, its labels re-indexed into them; the candidates."""
        cand = self.candidates(positives, seed)
        batch["candidates"] = torch.from_numpy(cand)
        batch["log_q"] = torch.from_numpy(self.item_log_q[cand])
        if "labels" in batch:
            lab = batch["labels"]
            keep = lab != IGNORE
            lab[keep] = torch.from_numpy(np.searchsorted(cand, lab[keep].numpy()))
        return cand

    def _lm_batch(self, task: str, rows: list[list[int]], labels: list[list[int]], idx: np.ndarray,
                  seed: int | None = None) -> dict[str, Any]:
        batch = {"task": task, **collate([rows[i] for i in idx], self.tok.pad_token_id, [labels[i] for i in idx])}
        if seed is not None:
            lab = batch["labels"]
            self._sampled(batch, lab[lab != IGNORE].numpy(), seed)
        return batch

    def _rec_batch(self, rows: list[list[int]], targets: list[np.ndarray], labels: list[list[int]],
                   idx: np.ndarray, seed: int | None = None) -> dict[str, Any]:
        batch: dict[str, Any] = {"task": "rec", **collate([rows[i] for i in idx], self.tok.pad_token_id)}
        if self.recipe.rec_collab_weight > 0:
            batch["labels"] = collate([rows[i] for i in idx], 0, [labels[i] for i in idx])["labels"]
            batch["collab_weight"] = self.recipe.rec_collab_weight
        history = ([np.asarray([j for j in labels[i] if j != IGNORE], dtype=np.int64) for i in idx]
                   if seed is not None else [])
        if seed is None or not self.recipe.sampled_rec:
            y = torch.zeros(len(idx), self.model.num_items)
            for b, i in enumerate(idx):
                y[b, torch.as_tensor(targets[i])] = 1.0
            if seed is not None and "labels" in batch:  # only the collaborative loss samples
                self._sampled(batch, np.concatenate(history), seed)
                batch["rec_full"] = True
        else:
            cand = self._sampled(batch, np.concatenate([targets[i] for i in idx] + history), seed)
            y = torch.zeros(len(idx), len(cand))
            for b, i in enumerate(idx):
                y[b, torch.from_numpy(np.searchsorted(cand, targets[i]))] = 1.0
        batch["targets"] = y
        batch["reg"] = "content" in self.plan  # mutual regularization once the content tables trained
        return batch

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_users(self, part: str, limit: int = 0) -> np.ndarray:
        """The users of `part` (a fixed random subset of `limit` when > 0), shortest history first."""
        users = self.split.eval_users(part)
        if limit and limit < len(users):
            users = np.sort(np.random.default_rng(self.train.seed + 1).choice(users, limit, replace=False))
        hist = self.split.seen(part)
        return users[np.argsort([len(hist[u]) for u in users], kind="stable")]
