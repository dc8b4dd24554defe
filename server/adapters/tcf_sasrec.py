"""TCF with a SASRec user tower: the history's item vectors (upserted items included), most recent
`max_seq_len`, left-padded so the newest item is last."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from repository.errors import VersionError
from repository.manifest import Manifest


class SasrecSequence:
    kind = "tcf"
    user_tower = "sasrec"

    def __init__(self, path: Path, manifest: Manifest) -> None:
        if manifest.tcf is None:
            raise VersionError(f"{path}: manifest has no 'tcf' section, needed for history requests")
        self._seq = manifest.tcf.max_seq_len
        self._dim = manifest.dim

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
