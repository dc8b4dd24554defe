"""Scoring users with the rec head: rec prompts from histories (time order, most recent kept),
length-sorted batches, scores = last hidden state . item vectors. Used by validation, the eval
command and the serving bundle alike, so all three build exactly the same prompts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.cllm4rec.model import CLLM4Rec
from models.cllm4rec.prompts import Template, collate, rec_prompt, truncate_history
from models.cllm4rec.tokens import IdVocab
from models.data.dataset import InteractionData


@dataclass
class History:
    """Per-user time positions of items: the random split keeps items sorted by index, prompts
    need them oldest first so that truncation drops the oldest."""

    time_pos: list[dict[int, int]]

    @classmethod
    def build(cls, data: InteractionData) -> History:
        pos = []
        for seq in data.sequences():
            d: dict[int, int] = {}
            for k, j in enumerate(seq):
                d[int(j)] = k  # a repeated item keeps its latest position
            pos.append(d)
        return cls(pos)

    def ordered(self, user: int, items: np.ndarray) -> np.ndarray:
        d = self.time_pos[user]
        big = len(d) + 1
        return np.asarray(sorted((int(j) for j in items), key=lambda j: d.get(j, big)), dtype=np.int64)


@dataclass
class PromptBuilder:
    tmpl: Template
    vocab: IdVocab
    max_history: int
    pad_id: int

    def rec(self, user: int | None, items: np.ndarray) -> list[int]:
        """Rec prompt of `user` (None: the anonymous user) over `items` (oldest first)."""
        token = self.vocab.anon_token if user is None else self.vocab.user(int(user))
        kept = truncate_history(items, self.max_history) if len(items) else np.zeros(0, dtype=np.int64)
        return rec_prompt(self.tmpl, token, kept + self.vocab.item_offset)

    def batches(self, prompts: list[list[int]], batch_size: int) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """(row indices, batch) in length order, so little padding is computed."""
        order = np.argsort([len(p) for p in prompts], kind="stable")
        return [
            (order[s : s + batch_size], collate([prompts[i] for i in order[s : s + batch_size]], self.pad_id))
            for s in range(0, len(order), batch_size)
        ]


@dataclass
class RecScorer:
    """`scorer(users, history) -> scores [B, J]` for models.metrics.evaluate."""

    model: CLLM4Rec
    prompts: PromptBuilder
    hist: History
    batch_size: int = 32

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        self.model.eval()
        rows = [self.prompts.rec(int(u), self.hist.ordered(int(u), h)) for u, h in zip(users, history, strict=True)]
        out = np.zeros((len(rows), self.model.vector_dim), dtype=np.float32)
        device = self.model.device
        for idx, batch in self.prompts.batches(rows, self.batch_size):
            vectors = self.model.user_vectors(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[idx] = vectors.float().cpu().numpy()
        return out

    @torch.no_grad()
    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        items = self.model.item_matrix().detach().float().cpu().numpy()
        return self.user_vectors(users, history) @ items.T
