"""CLLM4Rec: the rec prompt is built from token ids per the manifest template (no tokenizer needed),
right-padded; the graph reads the mask to take the last real token's hidden state (or the mean over
the real tokens, for a model trained with mean pooling), so padding never changes a user vector.

Format 2 graphs hold no user rows: the prompt's user slot carries the anonymous token and the graph input
named by `cllm4rec.user_input` replaces its embedding with the user's row, read here from the
memory-mapped `cllm4rec.user_rows` file (its last row is the anonymous user's). Format 1 graphs had
every user's row baked in and take the user's token id instead."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from repository.arrays import load_array
from repository.errors import VersionError
from repository.manifest import Manifest

# batches are padded to a multiple of this many tokens: OpenVINO's CPU plugin prepares its kernels per
# input shape, so a handful of widths served again and again beat a new width for every prompt length
# (faster at steady state on the depth-8 bf16 user encoder, although the padded prompts are longer)
PAD_TO_MULTIPLE = 16


class Prompt(list[int]):
    """A prompt's token ids, plus the row of the user-rows file fed beside them (format 2; -1: the
    anonymous row)."""

    def __init__(self, ids: list[int], user_row: int = -1) -> None:
        super().__init__(ids)
        self.user_row = user_row


class Cllm4recPrompt:
    kind = "cllm4rec"
    user_tower = "lm"
    _rows: np.ndarray | None = None  # format 2: the memory-mapped user rows (set from the manifest)

    def __init__(self, path: Path, manifest: Manifest) -> None:
        c = manifest.cllm4rec
        if c is None:  # its fields are checked when the manifest is read (repository.manifest.PromptSection)
            raise VersionError(f"{path}: manifest has no 'cllm4rec' section, needed for history requests")
        self._c = c
        self._pad = c.pad_token_id
        self._rows = load_array(path / c.user_rows) if c.user_rows else None  # memory-mapped

    def payload(self, user_row: int | None, history_rows: Sequence[int],
                item_vectors: Callable[[Sequence[int]], np.ndarray]) -> Prompt:
        c = self._c
        # a model trained without user tokens (--model.no-user-tokens: no user rows between the offsets)
        # reads every user as its history, known or not; format 2 puts the row beside the anonymous token
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
        return Prompt(ids, user_row if user_row is not None and self._rows is not None else -1)

    def length(self, payload: Prompt) -> int:
        return len(payload)

    def feeds(self, payloads: Sequence[list[int]], input_names: Sequence[str]) -> dict[str, np.ndarray]:
        longest = max(len(p) for p in payloads)
        length = -(-longest // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE
        ids = np.full((len(payloads), length), self._pad, dtype=np.int64)
        mask = np.zeros((len(payloads), length), dtype=np.int64)
        for i, p in enumerate(payloads):  # right padding: the graph finds the real tokens by the mask
            ids[i, :len(p)] = p
            mask[i, :len(p)] = 1
        feeds = {input_names[0]: ids, input_names[1]: mask}
        if self._rows is not None:
            rows = np.array([getattr(p, "user_row", -1) for p in payloads], dtype=np.int64)  # -1: the last (anonymous) row
            feeds[self._c.user_input or input_names[2]] = np.asarray(self._rows[rows], dtype=np.float32)
        return feeds
