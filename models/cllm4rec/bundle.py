"""CLLM4Rec checkpoint -> ServingBundle (see models/bundle.py, docs/model-repository.md).

The user encoder folds the vocabulary and the trained item and anonymous-user ID rows into ONE
embedding table (vocab rows, then items, then the anonymous user), so the ONNX graph is a plain LM
with no id routing. No user's row is in the graph: its size does not grow with the number of users.
A prompt's user slot carries the anonymous token and the graph input `user_embedding` [B, H]
replaces that position's embedding with the user's collaborative row (a known user's, or the
anonymous row), which the version stores as a memory-mapped data file (`user_rows.npy`). Prompt
token ids are therefore in the graph's space: items at N + j, the anonymous/user slot at N + J
(`GraphSpace` converts the training layout). A model trained without user tokens has no user rows
at all and its graph takes no `user_embedding`. The graph returns the raw last hidden state at the
last real token (right padding, torch.gather), or its mean over the real tokens for a model
trained with mean pooling.
Everything the rec head does beyond that (per-dimension feature scale, learned temperature) is
folded into the item vectors, so score = user_vector . item_vector exactly. With an item bias
the graph appends a constant 1 to the user vector and the item vectors carry the bias as their
last dimension, so the server still does one inner-product search.

Known users' vectors are not computed here: the bundle carries their prompts (`PromptInputs`) and
the exporter runs them through the exported, parity-checked graph in resumable shards, so a known
user is served exactly what the graph computes for their prompt.

A backbone trained with LoRA is exported with its adapters merged into the weights (a copy),
unfrozen blocks and reduced depth are simply
the backbone's own weights and layer count: the graph is always a plain LM, so the server needs
nothing new. The parity check compares the graph against the merged module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.bundle import EncoderExport, QualityProbe, ServingBundle
from models.cllm4rec.checkpoint import Loaded, load_checkpoint
from models.cllm4rec.model import CLLM4Rec, score_space
from models.cllm4rec.prompts import collate
from models.cllm4rec.scoring import History, PromptBuilder
from models.cllm4rec.tokens import IdVocab
from models.data.splits import Split
from models.training.capacity import merged_copy

USER_ROWS_FILE = "user_rows.npy"  # repository.files.USER_ROWS (models do not import the repository)
USER_INPUT = "user_embedding"

PROBE_USERS = 200
PROBE_BATCH = 16


class FoldedUserEncoder(nn.Module):
    """forward(input_ids int64 [B, L], attention_mask int64 [B, L], user_embedding float32 [B, H]) ->
    user_vector float32 [B, H'] with ids in the graph's space (`graph_space`); a model without user
    tokens takes no user_embedding."""

    def __init__(self, model: CLLM4Rec) -> None:
        super().__init__()
        v = model.vocab
        backbone = merged_copy(model.backbone)
        vocab = backbone.get_input_embeddings().weight[:v.vocab_size].detach().float()
        # ID rows: users (with user tokens), items, anonymous; the graph keeps items and the anonymous row
        ids = model.collab_embeddings.detach().float()[v.user_rows:]
        self.embed = nn.Embedding.from_pretrained(torch.cat([vocab, ids]), freeze=True)
        self.user_slot = v.vocab_size + v.num_items  # the anonymous token, in the graph's space
        self.takes_user = v.user_tokens
        self.base = backbone.base_model
        self.item_bias = model.cfg.item_bias
        self.pooling = model.cfg.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                user_embedding: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.embed(input_ids)
        if user_embedding is not None:
            slot = (input_ids == self.user_slot).unsqueeze(-1)
            embeds = torch.where(slot, user_embedding.to(embeds.dtype).unsqueeze(1), embeds)
        hidden = self.base(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return score_space(CLLM4Rec.pool(hidden.float(), attention_mask, self.pooling), self.item_bias)


def user_rows(model: CLLM4Rec) -> np.ndarray | None:
    """float32 [U + 1, H]: each user's collaborative row, then the anonymous row; None without user tokens."""
    v = model.vocab
    if not v.user_tokens:
        return None
    table = model.collab_embeddings.detach().float()
    return torch.cat([table[: v.user_rows], table[-1:]]).numpy().astype(np.float32)


@dataclass
class GraphSpace:
    """Training-layout prompts (ids with user tokens) -> the graph's inputs: user tokens become the user
    slot (the anonymous token), item ids move down by the number of user rows, and each prompt's user
    row rides in `user_embedding` (the anonymous row for a prompt without a user token)."""

    vocab: IdVocab
    rows: np.ndarray | None

    def convert(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        v = self.vocab
        if self.rows is None:
            return input_ids, attention_mask
        u = v.user_rows
        is_user = (input_ids >= v.user_offset) & (input_ids < v.item_offset)
        ids = torch.where(input_ids >= v.item_offset, input_ids - u, input_ids)
        ids = torch.where(is_user, torch.full_like(ids, v.anon_token - u), ids)
        row = torch.where(is_user, input_ids - v.user_offset, torch.full_like(ids, -1)).max(1).values
        row = torch.where(row < 0, torch.full_like(row, u), row)  # no user token: the anonymous row
        return ids, attention_mask, torch.from_numpy(self.rows)[row]

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *([USER_INPUT] if self.rows is not None else [])]


@dataclass
class PromptInputs:
    """Known users' rec prompts over their train items, a batch at a time (models.bundle.KnownUserInputs)."""

    prompts: PromptBuilder
    hist: History
    train: list[np.ndarray]
    space: GraphSpace

    @property
    def count(self) -> int:
        return len(self.train)

    def key(self) -> str:
        spec = {"template": self.prompts.tmpl.manifest(), "max_history": self.prompts.max_history,
                "pad": self.prompts.pad_id, "users": self.count, "names": self.space.input_names}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def batches(self, users: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        rows = [self.prompts.rec(int(u), self.hist.ordered(int(u), self.train[int(u)])) for u in users]
        for idx, batch in self.prompts.batches(rows, batch_size):
            inputs = self.space.convert(batch["input_ids"], batch["attention_mask"])
            yield idx, {n: t.numpy() for n, t in zip(self.space.input_names, inputs, strict=True)}


def manifest_section(loaded: Loaded) -> dict[str, Any]:
    """Token ids of the graph's space: no user tokens (user offset = item offset), items right after the
    vocabulary, the anonymous token (the user slot) after the items."""
    v = loaded.tokenizer.vocab
    rows = v.user_tokens
    return {
        "vocab_size": v.vocab_size + v.num_items + 1,
        "user_token_offset": v.vocab_size,
        "item_token_offset": v.vocab_size,
        "anonymous_user_token": v.vocab_size + v.num_items,
        "pad_token_id": loaded.tokenizer.pad_token_id,
        "max_history": loaded.max_history,
        "template": loaded.template.manifest(),
        "padding_side": "right",
        "user_rows": USER_ROWS_FILE if rows else None,
        "user_input": USER_INPUT if rows else None,
    }


def _sample_inputs(prompts: PromptBuilder, space: GraphSpace, users: list[int],
                   histories: list[np.ndarray]) -> list[tuple[torch.Tensor, ...]]:
    """Batch 1 at a short and a long prompt, an anonymous prompt, and a right-padded batch of mixed lengths."""
    by_len = sorted(range(len(users)), key=lambda i: len(histories[i]))
    short, long_ = by_len[0], by_len[-1]
    mid = by_len[len(by_len) // 2]
    rows = [prompts.rec(users[i], histories[i]) for i in (short, mid, long_)]
    singles = [rows[0], rows[2], prompts.rec(None, histories[mid])]
    picks = [by_len[k] for k in np.linspace(0, len(by_len) - 1, 4).astype(int)]
    batches = [[r] for r in singles] + [[prompts.rec(users[i], histories[i]) for i in picks]]
    return [space.convert(*collate(b, prompts.pad_id).values()) for b in batches]


def probe_part(split: Split) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(users, history per user, targets per user) of the export gate's quality probe: up to
    PROBE_USERS validation users, their train items as the prompt, their valid items as targets.
    Never the test part: the gate decides which engine serves, a choice the test part must not see
    (it is read once per final configuration, by `llmrec eval`)."""
    users = split.eval_users("valid")
    if len(users) > PROBE_USERS:
        users = np.sort(np.random.default_rng(0).choice(users, PROBE_USERS, replace=False))
    return users, split.seen("valid"), split.valid


def load_bundle(checkpoint_dir: Path, known_users: bool = True) -> ServingBundle:
    """known_users: the known users' ids, histories and user rows, with their prompts for the exporter
    (models.bundle.KnownUserInputs; their vectors come from the exported graph)."""
    loaded = load_checkpoint(Path(checkpoint_dir))
    model = loaded.model
    data, split = loaded.training_data()
    hist = History.build(data)
    vocab = loaded.tokenizer.vocab
    prompts = PromptBuilder(loaded.template, vocab, loaded.max_history, loaded.tokenizer.pad_token_id)
    users = np.arange(data.num_users)
    histories = [hist.ordered(int(u), split.train[u]) for u in users]
    with torch.no_grad():
        item_vectors = model.item_matrix().detach().numpy().astype(np.float32)
    space = GraphSpace(vocab, user_rows(model))
    encoder = FoldedUserEncoder(model).eval()
    sample_users = [int(u) for u in users if len(histories[u])]
    samples = _sample_inputs(prompts, space, sample_users, [histories[u] for u in sample_users])
    names = space.input_names
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "length"},
                                       "attention_mask": {0: "batch", 1: "length"}, "user_vector": {0: "batch"}}
    if USER_INPUT in names:
        axes[USER_INPUT] = {0: "batch"}
    export = EncoderExport(module=encoder, input_names=names, output_name="user_vector", dynamic_axes=axes,
                           sample_inputs=samples)
    probe_users, seen, targets = probe_part(split)
    rows = [prompts.rec(int(u), hist.ordered(int(u), seen[u])) for u in probe_users]
    probe = QualityProbe(
        encoder_inputs=[
            space.convert(*collate(rows[s : s + PROBE_BATCH], prompts.pad_id).values())
            for s in range(0, len(rows), PROBE_BATCH)
        ],
        exclude=[seen[u] for u in probe_users],
        targets=[targets[u] for u in probe_users],
        metric="recall@20",
        users=np.asarray(probe_users, dtype=np.int64),
    )
    rows_all = space.rows
    if not known_users and rows_all is not None:
        rows_all = rows_all[-1:]  # the anonymous row only
    return ServingBundle(
        kind="cllm4rec",
        user_tower="lm",
        item_tower="id",
        dim=model.vector_dim,
        item_ids=list(loaded.items.ids),
        item_vectors=item_vectors,
        item_titles=list(loaded.item_title),
        user_ids=list(loaded.users.ids) if known_users else [],
        user_vectors=None if known_users else np.zeros((0, model.vector_dim), np.float32),
        user_histories=histories if known_users else [],
        encoders={"user_encoder": export},
        model_config=manifest_section(loaded),
        probe=probe,
        known_user_inputs=PromptInputs(prompts, hist, list(split.train), space) if known_users else None,
        user_rows=rows_all,
    )
