"""The distilled student of CLLM4Rec (kind "student", SASRec user tower): a history is its item rows, the
most recent `max_seq_len`, left-padded with row 0 so the newest is last; the graph gathers the rows itself,
so a request costs one small SASRec pass instead of the teacher's LM over a rec prompt. A known user without
a history is served from the vector the exporter precomputed from that user's train history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from repository.errors import VersionError
from repository.manifest import Manifest, StudentSection

# batches are padded to a multiple of this many items, so an engine that prepares kernels per input shape
# (OpenVINO) sees a handful of widths, as the CLLM4Rec adapter does for prompts
PAD_TO_MULTIPLE = 8


class StudentSequence:
    kind = "student"
    user_tower = "sasrec"

    def __init__(self, path: Path, manifest: Manifest) -> None:
        if not isinstance(manifest.section, StudentSection):
            raise VersionError(f"{path}: manifest has no 'student' section, needed for history requests")
        self._seq = manifest.section.max_seq_len
        self._pad = manifest.section.pad_row

    def payload(self, user_row: int | None, history_rows: Sequence[int],
                item_vectors: Callable[[Sequence[int]], np.ndarray]) -> np.ndarray:
        return np.asarray(list(history_rows)[-self._seq:], dtype=np.int64)

    def length(self, payload: np.ndarray) -> int:
        return len(payload)

    def feeds(self, payloads: Sequence[np.ndarray], input_names: Sequence[str]) -> dict[str, np.ndarray]:
        longest = max(1, max(len(p) for p in payloads))
        width = min(-(-longest // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE, max(self._seq, longest))
        rows = np.full((len(payloads), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(payloads), width), dtype=np.int64)
        for i, p in enumerate(payloads):  # left padding: the newest item is last
            if len(p):
                rows[i, width - len(p):] = p
                mask[i, width - len(p):] = 1
        return {input_names[0]: rows, input_names[1]: mask}
