"""The ONNX encoders of one model version: the user encoder behind history requests and the item
encoder behind UpsertItems.

They are separate objects from the ModelVersion on purpose: the batcher's worker thread holds the
user encoder, and if it held the version instead (a bound method of it), the version and its
batcher would form a reference cycle that keeps every swapped-out version in memory until a
garbage collection happens to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.item_text import configure_tokenizer, encode_texts
from export.repository import VersionError


def io_names(manifest: dict[str, Any], role: str, session: Any) -> tuple[list[str], str]:
    """Input names and output name of an encoder: the manifest's, else the graph's own."""
    spec = (manifest.get("encoders") or {}).get(role) or {}
    inputs = [i["name"] for i in spec.get("inputs", [])] or [i.name for i in session.get_inputs()]
    output = (spec.get("output") or {}).get("name") or session.get_outputs()[0].name
    return inputs, output


class UserEncoder:
    """A request's history -> encoder payload -> (batched) user vectors."""

    def __init__(self, path: Path, manifest: dict[str, Any], session: Any) -> None:
        self.kind: str = manifest["kind"]
        self._session = session
        self.engine = f"onnxruntime/{session.get_providers()[0]}"
        self._inputs, self._output = io_names(manifest, "user_encoder", session)
        section = manifest.get(self.kind)
        if not isinstance(section, dict):
            raise VersionError(f"{path}: manifest has no '{self.kind}' section, needed for history requests")
        if self.kind == "cllm4rec":
            missing = [k for k in ("item_token_offset", "anonymous_user_token", "template", "max_history")
                       if k not in section]
            if missing:
                raise VersionError(f"{path}: cllm4rec section lacks {', '.join(missing)}")
        self._section = section
        self.dim = int(manifest["dim"])

    def payload(self, user_row: int | None, history_rows: Sequence[int], item_vectors: Any) -> Any:
        """What one request contributes to a batch. `item_vectors(rows)` gives vectors of rows."""
        if self.kind == "cllm4rec":
            return self._cllm_prompt(user_row, history_rows)
        max_len = int(self._section.get("max_seq_len", 20))
        return item_vectors(list(history_rows)[-max_len:])

    def _cllm_prompt(self, user_row: int | None, history_rows: Sequence[int]) -> list[int]:
        c = self._section
        user_tok = int(c["anonymous_user_token"]) if user_row is None else int(c["user_token_offset"]) + user_row
        offset = int(c["item_token_offset"])
        items = list(history_rows)[-int(c["max_history"]):]
        ids: list[int] = []
        for part in c["template"]:
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

    def feeds(self, payloads: Sequence[Any]) -> dict[str, np.ndarray]:
        """The graph's input arrays for a batch of payloads, padded as the graph expects."""
        if self.kind == "cllm4rec":
            length = max(len(p) for p in payloads)
            ids = np.full((len(payloads), length), int(self._section.get("pad_token_id", 0)), dtype=np.int64)
            mask = np.zeros((len(payloads), length), dtype=np.int64)
            for i, p in enumerate(payloads):  # right padding: the graph gathers the last real token
                ids[i, :len(p)] = p
                mask[i, :len(p)] = 1
        else:
            seq = int(self._section.get("max_seq_len", 20))
            ids = np.zeros((len(payloads), seq, self.dim), dtype=np.float32)
            mask = np.zeros((len(payloads), seq), dtype=np.int64)
            for i, p in enumerate(payloads):  # left padding: the newest item is last
                ids[i, seq - len(p):] = p
                mask[i, seq - len(p):] = 1
        return {self._inputs[0]: ids, self._inputs[1]: mask}

    def run(self, payloads: Sequence[Any]) -> np.ndarray:
        """float32 [len(payloads), dim] (the batcher's worker calls this)."""
        result = self._session.run([self._output], self.feeds(payloads))[0]
        return np.asarray(result, dtype=np.float32).reshape(len(payloads), -1)


class ItemTextEncoder:
    """Item text -> item vector, for items added while serving."""

    def __init__(self, manifest: dict[str, Any], session: Any, tokenizer: Any) -> None:
        t = manifest.get("tcf") or {}
        self._max_length = int(t.get("text_max_length") or 32)
        self._pad = int(t.get("pad_token_id", 0))
        self._session = session
        self._tokenizer = configure_tokenizer(tokenizer, self._max_length)  # before any concurrent use
        self._inputs, self._output = io_names(manifest, "item_encoder", session)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self._session, self._tokenizer, texts, self._max_length, self._pad, self._inputs,
                            self._output)
