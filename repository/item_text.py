"""Item text -> item vector through an exported item encoder (ONNX Runtime + tokenizers), torch-free.

One function for the server (UpsertItems, journal replay) and the exporter (folding the item journal
into a new version), so a folded item gets bit for bit the vector the server would have given it.
Texts are encoded in chunks: ONNX Runtime's memory arena grows to the largest batch it has seen and
never shrinks, so one call with thousands of texts would keep that memory for the process's life.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CHUNK = 32


def configure_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """Once, before any concurrent use: no padding (we pad to the graph's length), truncation on."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode_texts(run: Callable[[dict[str, np.ndarray]], np.ndarray], tokenizer: Any, texts: Sequence[str],
                 max_length: int, pad_token_id: int, input_names: Sequence[str], chunk: int = CHUNK) -> np.ndarray:
    """float32 [len(texts), dim] from `run(feeds)` (any engine running the item encoder); the tokenizer
    must come from `configure_tokenizer`."""
    out = []
    for start in range(0, len(texts), chunk):
        part = list(texts[start:start + chunk])
        encs = tokenizer.encode_batch(part)
        ids = np.full((len(part), max_length), pad_token_id, dtype=np.int64)
        mask = np.zeros((len(part), max_length), dtype=np.int64)
        for i, e in enumerate(encs):
            n = min(len(e.ids), max_length)
            ids[i, :n] = e.ids[:n]
            mask[i, :n] = 1
        result = run({input_names[0]: ids, input_names[1]: mask})
        out.append(np.asarray(result, dtype=np.float32).reshape(len(part), -1))
    return np.ascontiguousarray(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)
