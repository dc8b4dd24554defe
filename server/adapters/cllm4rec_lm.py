"""CLLM4Rec: the rec prompt is built from token ids per the manifest template (no tokenizer needed),
right-padded; the graph reads the mask to take the last real token's hidden state (or the mean over
the real tokens, for a model trained with mean pooling), so padding never changes a user vector."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from repository.errors import VersionError
from repository.manifest import Manifest

# batches are padded to a multiple of this many tokens: OpenVINO's CPU plugin prepares its kernels per
# input shape, so a handful of widths served again and again beat a new width for every prompt length
# (faster at steady state on the depth-8 bf16 user encoder, although the padded prompts are longer)
PAD_TO_MULTIPLE = 16


class Cllm4recPrompt:
    kind = "cllm4rec"
    user_tower = "lm"

    def __init__(self, path: Path, manifest: Manifest) -> None:
        c = manifest.cllm4rec
        if c is None:  # its fields are checked when the manifest is read (repository.manifest.PromptSection)
            raise VersionError(f"{path}: manifest has no 'cllm4rec' section, needed for history requests")
        self._c = c
        self._pad = c.pad_token_id

    def payload(self, user_row: int | None, history_rows: Sequence[int],
                item_vectors: Callable[[Sequence[int]], np.ndarray]) -> list[int]:
        c = self._c
        # a model trained without user tokens (--model.no-user-tokens: no user rows between the offsets)
        # reads every user as its history, known or not
        known = user_row is not None and c.item_token_offset > c.user_token_offset
        user_tok = c.user_token_offset + user_row if known else c.anonymous_user_token
        offset = c.item_token_offset
        items = list(history_rows)[-c.max_history:]
        ids: list[int] = []
        for part in c.template:
            if part.get("user"):
                ids.append(user_tok)
            elif part.get("history"):
                sep = [int(x) for x in part.get("separator_ids") or []]
                for i, row in enumerate(items):
                    if i and sep:
                        ids.extend(sep)
                    ids.append(offset + int(row))
            else:
                ids.extend(int(x) for x in part.get("ids", []))
        return ids

    def length(self, payload: list[int]) -> int:
        return len(payload)

    def feeds(self, payloads: Sequence[list[int]], input_names: Sequence[str]) -> dict[str, np.ndarray]:
        longest = max(len(p) for p in payloads)
        length = -(-longest // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE
        ids = np.full((len(payloads), length), self._pad, dtype=np.int64)
        mask = np.zeros((len(payloads), length), dtype=np.int64)
        for i, p in enumerate(payloads):  # right padding: the graph finds the real tokens by the mask
            ids[i, :len(p)] = p
            mask[i, :len(p)] = 1
        return {input_names[0]: ids, input_names[1]: mask}
