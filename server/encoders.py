"""The two things a version runs its encoders for: a batch of history requests (request adapter +
the engine chosen for the user encoder) and item texts for UpsertItems (tokenizer + the engine chosen
for the item encoder).

They are objects of their own, not methods of the ModelVersion, on purpose: the batcher's worker
thread holds the history encoder, and if it held the version instead, the version and its batcher
would form a reference cycle that keeps every swapped-out version in memory until a garbage
collection happens to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from repository.item_text import configure_tokenizer, encode_texts
from repository.manifest import Manifest
from server.adapters import RequestAdapter
from server.engines import Encoder

# a batch of prompts of different lengths runs as groups, each padded to its own longest member at
# most this many times its real tokens: on a CPU a batch saves little per token, so padding a 10-token
# prompt to 128 costs more than running the two apart (measured: batching at 0.75x the QPS of
# batch size 1 on the depth-8 CLLM4Rec before this)
PAD_SLACK = 1.25


def length_groups(lengths: Sequence[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Indices into `lengths`, grouped by similar length (shortest first)."""
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):  # each new member is the group's longest
        n = lengths[i]
        if current and (len(current) + 1) * n > slack * (real + n):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    return [*groups, current] if current else groups


def input_names(manifest: Manifest, role: str, encoder: Encoder) -> list[str]:
    """The encoder's inputs in the order the manifest declares them, else the graph's own order."""
    spec = manifest.encoders.get(role)
    return (spec.input_names if spec else []) or list(encoder.input_names)


class HistoryEncoder:
    def __init__(self, adapter: RequestAdapter, encoder: Encoder, input_names: list[str]) -> None:
        self.adapter = adapter
        self.encoder = encoder
        self._inputs = input_names
        self._length = getattr(adapter, "length", None)  # optional: inputs that vary in length

    def run(self, payloads: Sequence[Any]) -> np.ndarray:
        """float32 [len(payloads), dim] (the batcher's worker calls this). Adapters whose inputs vary
        in length (`length(payload)`) run in groups of similar length."""
        length = self._length
        groups = length_groups([length(p) for p in payloads]) if length is not None and len(payloads) > 1 else []
        if len(groups) <= 1:
            return self.encoder.run(self.adapter.feeds(payloads, self._inputs)).reshape(len(payloads), -1)
        parts = [self.encoder.run(self.adapter.feeds([payloads[i] for i in g], self._inputs)).reshape(len(g), -1)
                 for g in groups]
        out = np.empty((len(payloads), parts[0].shape[1]), dtype=parts[0].dtype)
        for g, part in zip(groups, parts, strict=True):
            out[g] = part
        return out


class ItemTextEncoder:
    def __init__(self, manifest: Manifest, encoder: Encoder, tokenizer: Any) -> None:
        t = manifest.tcf
        self._max_length = (t.text_max_length if t else None) or 32
        self._pad = t.pad_token_id if t else 0
        self.encoder = encoder
        self._inputs = input_names(manifest, "item_encoder", encoder)
        self._tokenizer = configure_tokenizer(tokenizer, self._max_length)  # before any concurrent use

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self.encoder.run, self._tokenizer, texts, self._max_length, self._pad, self._inputs)
