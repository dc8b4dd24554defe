"""CLLM4Rec training: stage A (content warm-up, then alternating collaborative / content
epochs) and stage B (rec head with early stopping on validation), resumable and DDP-aware.

Distributed runs use torchrun's environment (RANK, WORLD_SIZE, ...): every rank builds the same
epoch (same seed), takes every world-th batch of it (equal counts, so no rank waits forever),
gradients are averaged by DistributedDataParallel, validation sums are all-reduced, and only
rank 0 writes. Gloo works on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from llmrec import logs
from models.cllm4rec import checkpoint as ckpt_io
from models.cllm4rec.model import CLLM4Rec
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
from models.distributed import DistInfo
from models.metrics import evaluate

log = logs.get(__name__)
SELECTION_METRICS = ("recall@20", "recall@40", "ndcg@100")


@dataclass
class TrainConfig:
    content_warmup_epochs: int = 1  # stage A: content-LM epochs first
    pretrain_rounds: int = 2  # stage A: then this many (collaborative, content) epoch pairs
    stage_a_plan: str = ""  # e.g. "collab,content,collab": overrides the two fields above when set
    finetune_epochs: int = 20  # stage B: at most this many rec-head epochs
    patience: int = 3  # stage B stops after this many epochs without a better validation score
    batch_size: int = 16
    lr_pretrain: float = 1e-3
    lr_finetune: float = 1e-3
    lr_head: float = 5e-2  # temperature and item bias (see CLLM4Rec.head_parameters)
    # Stage B learning rate: "cosine" decays from lr_finetune to lr_min_frac * lr_finetune over
    # finetune_epochs (set per step from the epoch counter, so a resumed run continues the curve).
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min_frac: float = 0.1
    max_history: int = 128  # most recent items kept in a prompt
    max_text_tokens: int = 48
    holdout_frac: float = 0.2  # share of a user's train items hidden from the prompt as rec targets
    anon_frac: float = 0.25  # share of rec examples whose user token is the anonymous-user token
    rec_collab_weight: float = 0.0  # >0: add the collaborative-LM loss on the rec prompt's history (same forward)
    max_steps_per_epoch: int = 0  # >0 caps every epoch at that many batches (short schedule)
    valid_users: int = 0  # >0: validate on that many users (a fixed random subset); 0 = all
    eval_batch_size: int = 32
    calibrate_users: int = 64
    time_budget_min: float = 0.0  # >0: start no new epoch after this many minutes (recorded in the log)
    seed: int = 0
    resume: bool = True  # continue from <out>/train_state.pt when present
    progress: bool = True


@dataclass
class Trainer:
    model: CLLM4Rec
    tok: IdTokenizer
    tmpl: Template
    data: InteractionData
    split: Split
    cfg: TrainConfig
    out: Path
    backbone_ref: dict[str, Any]
    extra_config: dict[str, Any] = field(default_factory=dict)
    dist: DistInfo = field(default_factory=DistInfo)

    def __post_init__(self) -> None:
        self.hist = History.build(self.data)
        self.train_hist = [self.hist.ordered(u, t) for u, t in enumerate(self.split.train)]
        self.rng = np.random.default_rng(self.cfg.seed)
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            self.net = DistributedDataParallel(self.model, find_unused_parameters=True)
        self.prompts = PromptBuilder(self.tmpl, self.tok.vocab, self.cfg.max_history, self.tok.pad_token_id)
        self.scorer = RecScorer(self.model, self.prompts, self.hist, self.cfg.eval_batch_size)
        self.text_ids = [self.tok.words(" " + t) for t in self.data.item_text]
        self.state: dict[str, Any] = {
            "stage_a_done": 0,
            "stage_b_epoch": 0,
            "best_score": -1.0,
            "bad_epochs": 0,
            "log": [],
            "wall_s": {"stage_a": 0.0, "stage_b": 0.0, "validation": 0.0},
            "stage_b_stopped": False,
        }
        self.optimizer: torch.optim.Optimizer | None = None
        self.opt_stage = ""
        self.best_tables: dict[str, torch.Tensor] | None = None

    # ---- examples ----------------------------------------------------------------------------
    def collab_examples(self) -> tuple[list[list[int]], list[list[int]]]:
        rows, labels = [], []
        for u, items in enumerate(self.train_hist):
            if len(items) == 0:
                continue
            kept = truncate_history(items, self.cfg.max_history)
            ids, lab = collab_example(self.tmpl, self.tok.vocab.user(u), self.rng.permutation(kept), self.tok.vocab.item_offset)
            rows.append(ids)
            labels.append(lab)
        return rows, labels

    def content_examples(self) -> tuple[list[list[int]], list[list[int]]]:
        rows, labels = [], []
        v = self.tok.vocab
        if self.data.review is not None:
            train_sets = [set(map(int, t)) for t in self.split.train]
            for k, (u, j) in enumerate(zip(self.data.user, self.data.item, strict=True)):
                text = self.data.review[k]
                if text and int(j) in train_sets[int(u)]:
                    prefix = review_prefix(self.tmpl, v.user(int(u)), v.item(int(j)))
                    ids, lab = content_example(prefix, self.tok.words(" " + text), self.cfg.max_text_tokens)
                    rows.append(ids)
                    labels.append(lab)
        else:
            for j, text_ids in enumerate(self.text_ids):
                if text_ids:
                    ids, lab = content_example(movie_prefix(self.tmpl, v.item(j)), text_ids, self.cfg.max_text_tokens)
                    rows.append(ids)
                    labels.append(lab)
        return rows, labels

    def rec_examples(self) -> tuple[list[list[int]], list[np.ndarray], list[list[int]]]:
        """Rec prompts with 20% of the train items held out as targets, and history labels."""
        rows, targets, labels = [], [], []
        v = self.tok.vocab
        head = 1 + len(self.tmpl.has_interacted)
        tail = len(self.tmpl.comma) + 1 + len(self.tmpl.will_interact)
        for u, items in enumerate(self.train_hist):
            n = len(items)
            if n == 0:
                continue
            n_out = max(1, round(self.cfg.holdout_frac * n)) if n > 1 else 1
            held = np.zeros(n, dtype=bool)
            held[self.rng.choice(n, n_out, replace=False)] = True
            shown = self.rng.permutation(truncate_history(items[~held], self.cfg.max_history))
            user_token = v.anon_token if self.rng.random() < self.cfg.anon_frac else v.user(u)
            rows.append(rec_prompt(self.tmpl, user_token, shown + v.item_offset))
            targets.append(items[held])
            labels.append([IGNORE] * head + [int(j) for j in shown] + [IGNORE] * tail)
        return rows, targets, labels

    def _local_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        batches = bucket_batches(lengths, self.cfg.batch_size, self.rng)
        if self.cfg.max_steps_per_epoch > 0:
            batches = batches[: self.cfg.max_steps_per_epoch * self.dist.world]
        if len(batches) < self.dist.world:  # every rank needs at least one batch, or DDP waits forever
            batches = (batches * self.dist.world)[: self.dist.world]
        per_rank = len(batches) // self.dist.world
        return batches[self.dist.rank :: self.dist.world][:per_rank]

    # ---- epochs ------------------------------------------------------------------------------
    def _ensure_optimizer(self, stage: str) -> torch.optim.Optimizer:
        if self.optimizer is None or self.opt_stage != stage:
            lr = self.cfg.lr_pretrain if stage == "A" else self.cfg.lr_finetune
            groups = [{"params": self.model.id_parameters(), "base_lr": lr}]
            if self.model.head_parameters():
                groups.append({"params": self.model.head_parameters(), "base_lr": self.cfg.lr_head})
            self.optimizer = torch.optim.Adam([{**g, "lr": g["base_lr"]} for g in groups])
            self.opt_stage = stage
        return self.optimizer

    def _stage_b_lr_factor(self, progress: float) -> float:
        """Multiplier of each group's base rate; progress in [0, 1] = share of stage B done."""
        if self.cfg.lr_schedule == "constant":
            return 1.0
        floor = self.cfg.lr_min_frac
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def run_epoch(self, task: str, stage: str) -> float:
        opt = self._ensure_optimizer(stage)
        if task == "rec":
            rows, targets, labels = self.rec_examples()
        else:
            rows, labels = self.collab_examples() if task == "collab" else self.content_examples()
        batches = self._local_batches(np.array([len(r) for r in rows]))
        self.model.train()
        total, steps = 0.0, 0
        bar = tqdm(batches, desc=f"{stage}:{task}", disable=not (self.cfg.progress and self.dist.main), leave=False)
        for step, idx in enumerate(bar):
            if stage == "B":
                done = self.state["stage_b_epoch"] + step / len(batches)
                factor = self._stage_b_lr_factor(done / max(self.cfg.finetune_epochs, 1))
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * factor
            if task == "rec":
                batch = collate([rows[i] for i in idx], self.tok.pad_token_id)
                y = torch.zeros(len(idx), self.model.cfg.num_items)
                for b, i in enumerate(idx):
                    y[b, torch.as_tensor(targets[i])] = 1.0
                batch["targets"] = y
                if self.cfg.rec_collab_weight > 0:
                    batch["labels"] = collate([rows[i] for i in idx], 0, [labels[i] for i in idx])["labels"]
                    batch["collab_weight"] = self.cfg.rec_collab_weight  # type: ignore[assignment]
                loss = self.net("rec", **batch, reg=stage == "B" and self._pretrained())
            else:
                batch = collate([rows[i] for i in idx], self.tok.pad_token_id, [labels[i] for i in idx])
                loss = self.net(task, **batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        return total / max(steps, 1)

    def _pretrained(self) -> bool:
        """Mutual regularization in stage B only makes sense once the content tables were trained."""
        return "content" in self.stage_a_plan()

    def stage_a_plan(self) -> list[str]:
        if self.cfg.stage_a_plan:
            plan = [t.strip() for t in self.cfg.stage_a_plan.split(",") if t.strip()]
            bad = [t for t in plan if t not in ("collab", "content")]
            if bad:
                raise ValueError(f"stage_a_plan has unknown task(s) {bad}; accepted: collab, content")
            return plan
        return ["content"] * self.cfg.content_warmup_epochs + ["collab", "content"] * self.cfg.pretrain_rounds

    # ---- evaluation --------------------------------------------------------------------------
    def eval_users(self, part: str, limit: int = 0) -> np.ndarray:
        users = self.split.eval_users(part)
        if limit and limit < len(users):
            users = np.sort(np.random.default_rng(self.cfg.seed + 1).choice(users, limit, replace=False))
        hist = self.split.seen(part)
        return users[np.argsort([len(hist[u]) for u in users], kind="stable")]

    def validate(self) -> dict[str, float]:
        """Validation metrics over all ranks' shards (sums all-reduced)."""
        t0 = time.time()
        users = self.eval_users("valid", self.cfg.valid_users)[self.dist.rank :: self.dist.world]
        res = evaluate(self.scorer, self.split, "valid", SELECTION_METRICS, batch_size=64, users=users)
        sums = torch.tensor([res[m] * res["users"] for m in SELECTION_METRICS] + [res["users"]], dtype=torch.float64)
        if self.dist.world > 1:
            dist.all_reduce(sums)
        n = max(float(sums[-1]), 1.0)
        out = {m: float(sums[i]) / n for i, m in enumerate(SELECTION_METRICS)}
        out["score"] = sum(out[m] for m in SELECTION_METRICS)
        self.state["wall_s"]["validation"] += time.time() - t0
        return out

    # ---- state -------------------------------------------------------------------------------
    def _train_state(self) -> dict[str, Any]:
        return {
            **self.state,
            "tables": self.model.trained_state(),
            "best_tables": self.best_tables,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "opt_stage": self.opt_stage,
            "rng_numpy": self.rng.bit_generator.state,
            "rng_torch": torch.get_rng_state(),
        }

    def _restore(self, saved: dict[str, Any]) -> None:
        for k in self.state:
            self.state[k] = saved[k]
        self.model.load_trained_state(saved["tables"])
        self.best_tables = saved["best_tables"]
        self.rng.bit_generator.state = saved["rng_numpy"]
        torch.set_rng_state(saved["rng_torch"])
        if saved["optimizer"] is not None:
            self._ensure_optimizer(saved["opt_stage"]).load_state_dict(saved["optimizer"])

    def save(self) -> None:
        if not self.dist.main:
            return
        keep = self.model.trained_state()
        if self.best_tables is not None:
            self.model.load_trained_state(self.best_tables)
        extra = {**self.extra_config, "training_log": self.state["log"], "wall_time_s": self.state["wall_s"]}
        ckpt_io.save_checkpoint(
            self.out, self.model, self.tok, self.tmpl, self.data, self.backbone_ref, self.cfg.max_history, extra
        )
        self.model.load_trained_state(keep)
        ckpt_io.save_train_state(self.out, self._train_state())

    def calibrate(self) -> None:
        users = [u for u, t in enumerate(self.train_hist) if len(t)]
        pick = np.random.default_rng(self.cfg.seed).choice(users, min(self.cfg.calibrate_users, len(users)), replace=False)
        prompts = [self.prompts.rec(int(u), self.train_hist[u]) for u in pick]
        batches = [collate(prompts[i : i + 16], self.tok.pad_token_id) for i in range(0, len(prompts), 16)]
        counts = np.bincount(np.concatenate([t for t in self.split.train if len(t)]), minlength=self.data.num_items)
        self.model.calibrate(batches, torch.from_numpy(counts))

    # ---- the schedule ------------------------------------------------------------------------
    def _out_of_time(self) -> bool:
        budget = self.cfg.time_budget_min * 60
        out = budget > 0 and time.time() - self._fit_start > budget
        if out and self.dist.main:
            log.info("time budget reached: no new epoch", budget_min=self.cfg.time_budget_min)
            self.state["log"].append({"stopped": "time_budget", "budget_min": self.cfg.time_budget_min})
        return out

    def fit(self) -> dict[str, Any]:
        saved = ckpt_io.load_train_state(self.out) if self.cfg.resume else None
        if saved is not None:
            self._restore(saved)
            log.info("resumed", stage_a_done=self.state["stage_a_done"], stage_b_epoch=self.state["stage_b_epoch"])
        else:
            self.calibrate()
        plan = self.stage_a_plan()
        self._fit_start = time.time()
        while self.state["stage_a_done"] < len(plan) and not self._out_of_time():
            task = plan[self.state["stage_a_done"]]
            t0 = time.time()
            loss = self.run_epoch(task, "A")
            self.state["wall_s"]["stage_a"] += time.time() - t0
            self.state["stage_a_done"] += 1
            self.state["log"].append({"stage": "A", "epoch": self.state["stage_a_done"], "task": task, "loss": loss})
            log.info("stage A epoch", task=task, epoch=self.state["stage_a_done"], of=len(plan), loss=round(loss, 4))
            self.save()
        while (
            not self.state["stage_b_stopped"]
            and self.state["stage_b_epoch"] < self.cfg.finetune_epochs
            and not self._out_of_time()
        ):
            t0 = time.time()
            loss = self.run_epoch("rec", "B")
            self.state["wall_s"]["stage_b"] += time.time() - t0
            self.state["stage_b_epoch"] += 1
            val = self.validate()
            entry = {"stage": "B", "epoch": self.state["stage_b_epoch"], "loss": loss, "valid": val}
            self.state["log"].append(entry)
            if val["score"] > self.state["best_score"]:
                self.state["best_score"], self.state["bad_epochs"] = val["score"], 0
                self.best_tables = self.model.trained_state()
            else:
                self.state["bad_epochs"] += 1
                self.state["stage_b_stopped"] = self.state["bad_epochs"] >= self.cfg.patience
            log.info("stage B epoch", epoch=self.state["stage_b_epoch"], loss=round(loss, 4),
                     **{k: round(v, 4) for k, v in val.items()}, best=round(self.state["best_score"], 4))
            self.save()
        if self.best_tables is not None:
            self.model.load_trained_state(self.best_tables)
        if self.dist.world > 1:
            dist.barrier()
        return self.state
