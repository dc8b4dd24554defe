"""TCF with a DSSM user tower: a user is an embedding learned in training, so only known users can
be served; a history request is a clear FAILED_PRECONDITION, decided by its model kind (repository.kinds: history=False)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repository.manifest import Manifest


class KnownUsersOnly:
    kind = "tcf"
    user_tower = "dssm"

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self._path = path

    def payload(self, user_row: int | None, history_rows: Sequence[int],
                item_vectors: Callable[[Sequence[int]], np.ndarray]) -> Any:
        raise TypeError(f"{self._path}: a DSSM user tower encodes no histories")

    def feeds(self, payloads: Sequence[Any], input_names: Sequence[str]) -> dict[str, np.ndarray]:
        raise TypeError(f"{self._path}: a DSSM user tower encodes no histories")
