"""FAISS on a GPU (the `gpu` install extra: faiss-gpu-cu12), for flat and IVF indexes; HNSW has no GPU
version and stays on the CPU backend. A GPU index is not safe for concurrent searches, so they are
serialised; the small exact index of items added while serving stays on the CPU. Checked against exact
search in tests/test_server_gpu.py, which skips its GPU cases where no GPU is visible (every session of
this project so far).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from export.index import ivf_part, load_index
from server.indexes.faiss_cpu import FaissCpu, FaissIndex
from server.machine import Machine

GPU_TYPES = ("flat", "ivf", "ivfpq")


class GpuFaissIndex(FaissIndex):
    def __init__(self, index: Any) -> None:
        super().__init__(index, FaissGpu.name)
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return super().search(queries, min(k, 2048))  # FAISS GPU's k limit

    def add(self, vectors: np.ndarray) -> None:
        with self._lock:
            super().add(vectors)


class FaissGpu:
    name = "faiss-gpu"
    _resources: Any = None

    @staticmethod
    def supports(machine: Machine, index_type: str) -> bool:
        return machine.cuda_devices > 0 and hasattr(faiss, "StandardGpuResources") and index_type in GPU_TYPES

    @staticmethod
    def load(path: Path, manifest_index: dict[str, Any] | None, vectors: np.ndarray) -> GpuFaissIndex:
        if FaissGpu._resources is None:
            FaissGpu._resources = faiss.StandardGpuResources()
        cpu = load_index(path, manifest_index)
        gpu = faiss.index_cpu_to_gpu(FaissGpu._resources, 0, cpu)
        ivf = ivf_part(cpu)
        if ivf is not None and hasattr(gpu, "nprobe"):  # the manifest's query-time depth, whatever the cloner copies
            gpu.nprobe = int(ivf.nprobe)
        return GpuFaissIndex(gpu)

    @staticmethod
    def exact(vectors: np.ndarray) -> FaissIndex:
        return FaissCpu.exact(vectors)
