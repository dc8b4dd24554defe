"""Item index backends: where a version's item vectors are searched. One module per backend plus one
line in BACKENDS. A backend class has
- `name` (registry key; shown in ListModels and the `recsys_engine_info` metric),
- `supports(machine, index_type) -> bool`,
- `load(path, manifest_index, vectors) -> ItemIndex` for the exported index (FAISS backends read the
  file, another store could take the vectors), `exact(vectors) -> ItemIndex` for
  the small exact index of items added while serving.
An ItemIndex offers `search`, `add`, `ntotal` and `dim`. Replacing or deleting an item never touches
an index: the catalogue hides the old row and adds the new vector beside it (server/catalogue.py),
which works the same on every backend (HNSW cannot remove vectors at all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from repository.manifest import IndexSection
from server.indexes.faiss_cpu import FaissCpu
from server.indexes.faiss_gpu import FaissGpu
from server.machine import Machine


class ItemIndex(Protocol):
    name: str

    @property
    def ntotal(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, vectors: np.ndarray) -> None: ...


class IndexBackend(Protocol):
    name: str

    @staticmethod
    def supports(machine: Machine, index_type: str) -> bool: ...

    @staticmethod
    def load(path: Path, manifest_index: IndexSection | None, vectors: np.ndarray) -> ItemIndex: ...

    @staticmethod
    def exact(vectors: np.ndarray) -> ItemIndex: ...


BACKENDS: dict[str, type[IndexBackend]] = {FaissGpu.name: FaissGpu, FaissCpu.name: FaissCpu}  # preference order


def choose_backend(machine: Machine, index_type: str, requested: str = "auto",
                   backends: dict[str, type[IndexBackend]] | None = None) -> type[IndexBackend]:
    """The requested backend, or the first in preference order that supports this machine and index."""
    backends = BACKENDS if backends is None else backends
    if requested != "auto":
        if requested not in backends:
            raise ValueError(f"unknown index backend {requested!r}; accepted: auto, {', '.join(backends)}")
        if not backends[requested].supports(machine, index_type):
            raise ValueError(f"index backend {requested} cannot serve a {index_type} index on this machine")
        return backends[requested]
    for backend in backends.values():
        if backend.supports(machine, index_type):
            return backend
    raise ValueError(f"no index backend can serve a {index_type} index here; accepted: {', '.join(backends)}")
