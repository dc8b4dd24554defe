"""The three CLLM4Rec prompts, built straight from token ids.

Template pieces are tokenized once; prompts are concatenations of ids, so no user or item
word is ever re-parsed from a string. Prompts used:
- collaborative: "user_i has interacted with" + the user's items (shuffled);
- content (MovieLens, no reviews): "item_j is the movie:" + " <title> (<year>), genres: <genres>"
  (the `InteractionData.item_text`); with reviews: "user_i wrote the following review for item_j:" + review;
- rec: "user_i has interacted with <items>, user_i will interact with".
Long histories lose their OLDEST items; the suffix ", user_i will interact with" is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.cllm4rec.tokens import IdTokenizer

IGNORE = -100


@dataclass
class Template:
    has_interacted: list[int]
    comma: list[int]
    will_interact: list[int]
    is_movie: list[int]
    wrote_review: list[int]
    colon: list[int]

    @classmethod
    def build(cls, tok: IdTokenizer) -> Template:
        return cls(
            has_interacted=tok.words(" has interacted with"),
            comma=tok.words(","),
            will_interact=tok.words(" will interact with"),
            is_movie=tok.words(" is the movie:"),
            wrote_review=tok.words(" wrote the following review for"),
            colon=tok.words(":"),
        )

    def manifest(self) -> list[dict[str, Any]]:
        """The rec prompt as the manifest's id segments (docs/model-repository.md)."""
        return [
            {"user": True},
            {"ids": list(self.has_interacted)},
            {"history": True, "separator_ids": []},
            {"ids": list(self.comma)},
            {"user": True},
            {"ids": list(self.will_interact)},
        ]


def truncate_history(items: np.ndarray | list[int], max_history: int) -> np.ndarray:
    """Keeps the most recent `max_history` items (items are oldest first)."""
    items = np.asarray(items, dtype=np.int64)
    if max_history <= 0:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    return items[-max_history:]


def rec_prompt(tmpl: Template, user_token: int, item_tokens: np.ndarray | list[int]) -> list[int]:
    return [
        user_token,
        *tmpl.has_interacted,
        *(int(t) for t in item_tokens),
        *tmpl.comma,
        user_token,
        *tmpl.will_interact,
    ]


def collab_example(
    tmpl: Template, user_token: int, items: np.ndarray, item_offset: int
) -> tuple[list[int], list[int]]:
    """ids and labels: each item position is labelled with its item index (item-space softmax)."""
    prefix = [user_token, *tmpl.has_interacted]
    ids = prefix + [item_offset + int(j) for j in items]
    labels = [IGNORE] * len(prefix) + [int(j) for j in items]
    return ids, labels


def content_example(prefix: list[int], text_ids: list[int], max_text: int) -> tuple[list[int], list[int]]:
    """ids and labels: the text after the prompt is labelled with its vocabulary ids."""
    main = list(text_ids[:max_text])
    return prefix + main, [IGNORE] * len(prefix) + main


def movie_prefix(tmpl: Template, item_token: int) -> list[int]:
    return [item_token, *tmpl.is_movie]


def review_prefix(tmpl: Template, user_token: int, item_token: int) -> list[int]:
    return [user_token, *tmpl.wrote_review, item_token, *tmpl.colon]


def collate(
    rows: list[list[int]], pad_id: int, labels: list[list[int]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask (1 = real token) and labels (IGNORE on pads)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("collate needs at least one row and no empty rows")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
    out["input_ids"], out["attention_mask"] = ids, mask
    if labels is not None:
        lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for b, r in enumerate(labels):
            lab[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        out["labels"] = lab
    return out


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length (little padding), in random order; ties broken at random."""
    lengths = np.asarray(lengths)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
