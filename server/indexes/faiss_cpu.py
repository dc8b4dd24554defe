"""FAISS on the CPU: every exported index type (flat, IVF, HNSW, IVF-PQ)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from repository.index import load_index
from repository.manifest import IndexSection
from server.machine import Machine


class FaissIndex:
    def __init__(self, index: Any, name: str) -> None:
        self._index = index
        self.name = name

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def add(self, vectors: np.ndarray) -> None:
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))


class FaissCpu:
    name = "faiss-cpu"

    @staticmethod
    def supports(machine: Machine, index_type: str) -> bool:
        return True

    @staticmethod
    def load(path: Path, manifest_index: IndexSection | None, vectors: np.ndarray) -> FaissIndex:
        # load_index sets nprobe / efSearch once, from the manifest: never per request
        return FaissIndex(load_index(path, manifest_index), FaissCpu.name)

    @staticmethod
    def exact(vectors: np.ndarray) -> FaissIndex:
        index = FaissIndex(faiss.IndexFlatIP(int(vectors.shape[1])), FaissCpu.name)
        index.add(vectors)
        return index
