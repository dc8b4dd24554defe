"""Tiny ServingBundles with the exact encoder signatures of the contract, for tests and smoke runs.

The server's tests can build a real (tiny) model repository with
`export_bundle(tiny_bundle("cllm4rec", tmp), repo, "m")` without any checkpoint or weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.bundle import EncoderExport, QualityProbe, ServingBundle
from models.tiny import llama_config, word_tokenizer
from repository import files as F

VOCAB_WORDS = ["[PAD]", "[UNK]", "the", "a", "movie", "story", "of", "love", "war", "space", "comedy", "drama",
               "night", "day", "city", "king", "dog", "cat", "man", "woman"]


class LastTokenLM(nn.Module):
    """A tiny Llama + last-real-token gather: CLLM4Rec's user encoder (right padding)."""

    def __init__(self, vocab_size: int, dim: int = 32, seed: int = 0):
        super().__init__()
        from transformers import LlamaModel

        torch.manual_seed(seed)
        self.lm = LlamaModel(llama_config(vocab_size, dim, max_position_embeddings=128))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        return h.gather(1, last.view(-1, 1, 1).expand(-1, 1, h.size(-1))).squeeze(1)


class UserSlotLM(LastTokenLM):
    """LastTokenLM whose user-slot token takes its embedding from the `user_embedding` input: CLLM4Rec's
    format-2 user encoder, whose graph holds no user rows."""

    def __init__(self, vocab_size: int, user_slot: int, dim: int = 32, seed: int = 0):
        super().__init__(vocab_size, dim, seed)
        self.user_slot = user_slot

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                user_embedding: torch.Tensor) -> torch.Tensor:
        emb = self.lm.embed_tokens(input_ids)
        emb = torch.where((input_ids == self.user_slot).unsqueeze(-1), user_embedding.unsqueeze(1), emb)
        h = self.lm(inputs_embeds=emb, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        return h.gather(1, last.view(-1, 1, 1).expand(-1, 1, h.size(-1))).squeeze(1)


@dataclass
class TinyPrompts:
    """models.bundle.KnownUserInputs of the tiny CLLM4Rec bundle; `fail_after` raises after that many
    batches (a simulated kill, for the shard-resume tests)."""

    histories: list[np.ndarray]
    rows: np.ndarray
    words: int
    slot: int
    fail_after: int | None = None
    calls: int = 0

    @property
    def count(self) -> int:
        return len(self.histories)

    def key(self) -> str:
        return f"tiny-{self.count}-{self.words}"

    def prompt(self, u: int) -> list[int]:
        return [self.slot, 5, 6] + [self.words + int(j) for j in self.histories[u]] + [7, self.slot, 8]

    def batch(self, users: list[int]) -> tuple[torch.Tensor, ...]:
        seqs = [self.prompt(u) for u in users]
        width = max(map(len, seqs))
        ids = torch.zeros(len(users), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        return ids, mask, torch.from_numpy(self.rows[users])

    def batches(self, users: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        for s in range(0, len(users), batch_size):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.calls += 1
            part = [int(u) for u in users[s : s + batch_size]]
            yield np.arange(s, s + len(part)), dict(zip(("input_ids", "attention_mask", "user_embedding"),
                                                        (t.numpy() for t in self.batch(part)), strict=True))


class TinySASRec(nn.Module):
    """Causal self-attention over item vectors (left padded, newest last); returns the last position."""

    def __init__(self, dim: int = 16, max_len: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seq = item_vectors.shape[1]
        x = item_vectors + self.pos[self.max_len - seq:]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        allowed = causal.unsqueeze(0) & mask.bool().unsqueeze(1)
        scores = scores.masked_fill(~allowed, -1e9)  # finite: fully padded rows stay NaN-free
        h = x + torch.softmax(scores, dim=-1) @ v
        h = self.norm(h + self.ff(h))
        return h[:, -1]


class TinyTextEncoder(nn.Module):
    """Token embedding, masked mean pooling, projection: TCF's text item tower."""

    def __init__(self, vocab_size: int, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab_size, 24)
        self.proj = nn.Sequential(nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        pooled = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.proj(pooled)


def write_tokenizer(path: Path) -> Path:
    """A word-level `tokenizers` JSON with a lower-casing normalizer and right padding/truncation."""
    tok = word_tokenizer(VOCAB_WORDS, lowercase=True)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=12)
    tok.save(str(path))
    return Path(path)


def _right_padded(rng: np.random.Generator, lengths: list[int], low: int, high: int) -> tuple[torch.Tensor, ...]:
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(low, high, size=n)
        mask[r, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _left_padded(vectors: np.ndarray, histories: list[np.ndarray], seq: int) -> tuple[torch.Tensor, ...]:
    x = np.zeros((len(histories), seq, vectors.shape[1]), dtype=np.float32)
    mask = np.zeros((len(histories), seq), dtype=np.int64)
    for r, h in enumerate(histories):
        h = h[-seq:]
        x[r, seq - len(h):] = vectors[h]
        mask[r, seq - len(h):] = 1
    return torch.from_numpy(x), torch.from_numpy(mask)


def _run(module: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(*b).numpy() for b in batches]).astype(np.float32)


def tiny_bundle(kind: str, workdir: Path, num_items: int = 60, num_users: int = 25, seed: int = 0,
                user_tower: str | None = None, lazy_users: bool = False) -> ServingBundle:
    """A consistent tiny bundle: item/user vectors are what the encoders compute, with a probe.
    `lazy_users` (cllm4rec): no user_vectors; the exporter computes them from `known_user_inputs`."""
    rng = np.random.default_rng(seed)
    histories = [np.sort(rng.choice(num_items, size=int(rng.integers(2, 8)), replace=False)) for _ in range(num_users)]
    targets = [rng.choice(np.setdiff1d(np.arange(num_items), h), size=2, replace=False) for h in histories]
    item_ids = [f"i{j}" for j in range(num_items)]
    user_ids = [f"u{u}" for u in range(num_users)]
    titles = [f"Item {j}" if j % 7 else "" for j in range(num_items)]
    if kind == "cllm4rec":
        # the graph's token space: words, item tokens, the user slot (the anonymous token); no user rows
        words, dim = 30, 32
        slot = words + num_items
        vocab = slot + 1
        module = UserSlotLM(vocab, slot, dim=dim, seed=seed).eval()
        table = module.lm.embed_tokens.weight.detach().numpy()
        item_vectors = np.ascontiguousarray(table[words: words + num_items], dtype=np.float32)
        user_rows = np.concatenate([rng.normal(0, 0.02, (num_users, dim)), table[slot:slot + 1]]).astype(np.float32)
        prompts = TinyPrompts(histories, user_rows, words, slot)
        user_batches = [prompts.batch(list(range(s, min(s + 8, num_users)))) for s in range(0, num_users, 8)]
        user_vectors = None if lazy_users else _run(module, user_batches)

        def anonymous(ids: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.repeat(user_rows[-1:], len(ids), axis=0))

        random_cases = [_right_padded(rng, lengths, 1, vocab) for lengths in ([3, 9, 5, 12], [20], [1, 4])]
        samples = [prompts.batch([0]), prompts.batch([1, 2, 3]),
                   *[(ids, mask, anonymous(ids)) for ids, mask in random_cases]]
        encoders = {"user_encoder": EncoderExport(
            module, ["input_ids", "attention_mask", "user_embedding"], "user_vector",
            {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
             "user_embedding": {0: "batch"}, "user_vector": {0: "batch"}}, samples)}
        config = {"vocab_size": vocab, "user_token_offset": words, "item_token_offset": words,
                  "anonymous_user_token": slot, "pad_token_id": 0, "max_history": 16,
                  "template": [{"user": True}, {"ids": [5, 6]}, {"history": True, "separator_ids": []},
                               {"ids": [7]}, {"user": True}, {"ids": [8]}], "padding_side": "right",
                  "user_rows": F.USER_ROWS, "user_input": "user_embedding"}
        probe = QualityProbe(user_batches, histories, targets, "recall@20", users=np.arange(num_users))
        return ServingBundle("cllm4rec", "lm", "id", dim, item_ids, item_vectors, titles, user_ids, user_vectors,
                             histories, encoders, config, {}, probe, known_user_inputs=prompts, user_rows=user_rows)
    if kind != "tcf":
        raise ValueError(f"unknown kind {kind!r}; accepted: cllm4rec, tcf")
    user_tower = user_tower or "sasrec"
    dim, seq, text_len = 16, 8, 12
    tok_path = write_tokenizer(Path(workdir) / F.TOKENIZER)
    text_enc = TinyTextEncoder(len(VOCAB_WORDS), dim, seed).eval()
    item_batch = _right_padded(rng, [int(rng.integers(2, text_len)) for _ in range(num_items)], 2, len(VOCAB_WORDS))
    item_vectors = _run(text_enc, [item_batch])
    item_samples = [_right_padded(rng, [5], 2, len(VOCAB_WORDS)), _right_padded(rng, [3, 12, 7], 2, len(VOCAB_WORDS)),
                    _right_padded(rng, [1, 2], 2, len(VOCAB_WORDS))]
    ids_axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                "item_vector": {0: "batch"}}
    encoders = {"item_encoder": EncoderExport(text_enc, ["input_ids", "attention_mask"], "item_vector", ids_axes,
                                              item_samples)}
    probe = None
    if user_tower == "sasrec":
        sas = TinySASRec(dim, seq, seed).eval()
        user_batches = [_left_padded(item_vectors, histories[s: s + 8], seq) for s in range(0, num_users, 8)]
        user_vectors = _run(sas, user_batches)
        samples = [_left_padded(item_vectors, [histories[0]], seq), _left_padded(item_vectors, histories[1:4], seq),
                   _left_padded(item_vectors, [h[-2:] for h in histories[4:9]], 4),
                   _left_padded(item_vectors, histories[9:11], 6)]
        encoders["user_encoder"] = EncoderExport(
            sas, ["item_vectors", "mask"], "user_vector",
            {"item_vectors": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "user_vector": {0: "batch"}},
            samples)
        probe = QualityProbe(user_batches, histories, targets, "recall@20")
    else:
        user_vectors = rng.normal(size=(num_users, dim)).astype(np.float32)
    config = {"max_seq_len": seq, "text_max_length": text_len, "tokenizer": F.TOKENIZER, "pad_token_id": 0}
    return ServingBundle("tcf", user_tower, "text", dim, item_ids, item_vectors, titles, user_ids, user_vectors,
                         histories, encoders, config, {F.TOKENIZER: tok_path}, probe)
