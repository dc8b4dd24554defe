"""TCF with a SASRec user tower: the history's item vectors (upserted items included), most recent
`max_seq_len`, left-padded so the newest item is last."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.repository import VersionError


class SasrecSequence:
    kind = "tcf"
    user_tower = "sasrec"
    history = True
    item_towers = ("id", "text", "hybrid")

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        t = manifest.get("tcf")
        if not isinstance(t, dict):
            raise VersionError(f"{path}: manifest has no 'tcf' section, needed for history requests")
        self._seq = int(t.get("max_seq_len", 20))
        self._dim = int(manifest["dim"])

    def payload(self, user_row: int | None, history_rows: Sequence[int],
                item_vectors: Callable[[Sequence[int]], np.ndarray]) -> np.ndarray:
        return item_vectors(list(history_rows)[-self._seq:])

    def feeds(self, payloads: Sequence[np.ndarray], input_names: Sequence[str]) -> dict[str, np.ndarray]:
        seq = self._seq
        vecs = np.zeros((len(payloads), seq, self._dim), dtype=np.float32)
        mask = np.zeros((len(payloads), seq), dtype=np.int64)
        for i, p in enumerate(payloads):
            vecs[i, seq - len(p):] = p
            mask[i, seq - len(p):] = 1
        return {input_names[0]: vecs, input_names[1]: mask}
