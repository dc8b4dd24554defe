"""CLLM4Rec checkpoint -> ServingBundle (see models/bundle.py, docs/model-repository.md).

The user encoder folds the trained collaborative ID rows into ONE embedding table (vocab rows,
then users, items, the anonymous user), so the ONNX graph is a plain LM with no id routing; it
returns the raw last hidden state at the last real token (right padding, torch.gather), or its mean
over the real tokens for a model trained with mean pooling.
Everything the rec head does beyond that (per-dimension feature scale, learned temperature) is
folded into the item vectors, so score = user_vector . item_vector exactly. With an item bias
the graph appends a constant 1 to the user vector and the item vectors carry the bias as their
last dimension, so the server still does one inner-product search.

A backbone trained with LoRA is exported with its adapters merged into the weights (a copy; the
known-user vectors come from the unmerged model), unfrozen blocks and reduced depth are simply
the backbone's own weights and layer count: the graph is always a plain LM, so the server needs
nothing new. The parity check compares the graph against the merged module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.bundle import EncoderExport, QualityProbe, ServingBundle
from models.cllm4rec.checkpoint import Loaded, load_checkpoint
from models.cllm4rec.model import CLLM4Rec, score_space
from models.cllm4rec.prompts import collate
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.data.splits import Split
from models.training.capacity import merged_copy

PROBE_USERS = 200
PROBE_BATCH = 16


class FoldedUserEncoder(nn.Module):
    """forward(input_ids int64 [B, L], attention_mask int64 [B, L]) -> user_vector float32 [B, H]."""

    def __init__(self, model: CLLM4Rec) -> None:
        super().__init__()
        n = model.vocab.vocab_size
        backbone = merged_copy(model.backbone)
        vocab = backbone.get_input_embeddings().weight[:n].detach().float()
        table = torch.cat([vocab, model.collab_embeddings.detach().float()])
        self.embed = nn.Embedding.from_pretrained(table, freeze=True)
        self.base = backbone.base_model
        self.item_bias = model.cfg.item_bias
        self.pooling = model.cfg.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.base(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask).last_hidden_state
        return score_space(CLLM4Rec.pool(hidden.float(), attention_mask, self.pooling), self.item_bias)


def manifest_section(loaded: Loaded) -> dict[str, Any]:
    v = loaded.tokenizer.vocab
    return {
        "vocab_size": v.total,
        "user_token_offset": v.user_offset,
        "item_token_offset": v.item_offset,
        "anonymous_user_token": v.anon_token,
        "pad_token_id": loaded.tokenizer.pad_token_id,
        "max_history": loaded.max_history,
        "template": loaded.template.manifest(),
        "padding_side": "right",
    }


def _sample_inputs(prompts: PromptBuilder, users: list[int], histories: list[np.ndarray]) -> list[tuple[torch.Tensor, ...]]:
    """Batch 1 at a short and a long prompt, an anonymous prompt, and a right-padded batch of mixed lengths."""
    by_len = sorted(range(len(users)), key=lambda i: len(histories[i]))
    short, long_ = by_len[0], by_len[-1]
    mid = by_len[len(by_len) // 2]
    rows = [prompts.rec(users[i], histories[i]) for i in (short, mid, long_)]
    out = [(b["input_ids"], b["attention_mask"]) for _, b in prompts.batches(rows[:1], 1)]
    out += [(b["input_ids"], b["attention_mask"]) for _, b in prompts.batches(rows[2:], 1)]
    out += [(b["input_ids"], b["attention_mask"]) for _, b in prompts.batches([prompts.rec(None, histories[mid])], 1)]
    picks = [by_len[k] for k in np.linspace(0, len(by_len) - 1, 4).astype(int)]
    batch = [prompts.rec(users[i], histories[i]) for i in picks]
    b = collate(batch, prompts.pad_id)
    out.append((b["input_ids"], b["attention_mask"]))
    return out


def probe_part(split: Split) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(users, history per user, targets per user) of the export gate's quality probe: up to
    PROBE_USERS validation users, their train items as the prompt, their valid items as targets.
    Never the test part: the gate decides which engine serves, a choice the test part must not see
    (it is read once per final configuration, by `llmrec eval`)."""
    users = split.eval_users("valid")
    if len(users) > PROBE_USERS:
        users = np.sort(np.random.default_rng(0).choice(users, PROBE_USERS, replace=False))
    return users, split.seen("valid"), split.valid


def load_bundle(checkpoint_dir: Path, batch_size: int = 32, known_users: bool = True) -> ServingBundle:
    loaded = load_checkpoint(Path(checkpoint_dir))
    model = loaded.model
    data, split = loaded.training_data()
    hist = History.build(data)
    prompts = PromptBuilder(loaded.template, loaded.tokenizer.vocab, loaded.max_history, loaded.tokenizer.pad_token_id)
    scorer = RecScorer(model, prompts, hist, batch_size)
    users = np.arange(data.num_users)
    histories = [hist.ordered(int(u), split.train[u]) for u in users]
    with torch.no_grad():
        item_vectors = model.item_matrix().detach().numpy().astype(np.float32)
        if known_users:
            user_vectors = scorer.user_vectors(users, split.train).astype(np.float32)
        else:
            user_vectors = np.zeros((0, model.vector_dim), np.float32)
    encoder = FoldedUserEncoder(model).eval()
    sample_users = [int(u) for u in users if len(histories[u])]
    samples = _sample_inputs(prompts, sample_users, [histories[u] for u in sample_users])
    export = EncoderExport(
        module=encoder,
        input_names=["input_ids", "attention_mask"],
        output_name="user_vector",
        dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                      "user_vector": {0: "batch"}},
        sample_inputs=samples,
    )
    probe_users, seen, targets = probe_part(split)
    rows = [prompts.rec(int(u), hist.ordered(int(u), seen[u])) for u in probe_users]
    probe = QualityProbe(
        encoder_inputs=[
            tuple(collate(rows[s : s + PROBE_BATCH], prompts.pad_id).values())
            for s in range(0, len(rows), PROBE_BATCH)
        ],
        exclude=[seen[u] for u in probe_users],
        targets=[targets[u] for u in probe_users],
        metric="recall@20",
    )
    return ServingBundle(
        kind="cllm4rec",
        user_tower="lm",
        item_tower="id",
        dim=model.vector_dim,
        item_ids=list(loaded.items.ids),
        item_vectors=item_vectors,
        item_titles=list(loaded.item_title),
        user_ids=list(loaded.users.ids) if known_users else [],
        user_vectors=user_vectors,
        user_histories=histories,
        encoders={"user_encoder": export},
        model_config=manifest_section(loaded),
        probe=probe,
    )
