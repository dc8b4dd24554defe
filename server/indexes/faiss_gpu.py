"""FAISS on a GPU (the `gpu` install extra: faiss-gpu-cu12), for flat and IVF indexes; HNSW has no GPU
version and stays on the CPU backend. A GPU index is not safe for concurrent searches, so they are
serialised; the small exact index of items added while serving stays on the CPU. Checked against exact
search in tests/test_server_gpu.py, which skips its GPU cases where no GPU is visible (every session of
this project so far).

FAISS on a GPU returns at most 2048 neighbours per query. The catalogue asks for more when exclusions
and hidden rows fill the top (k + excluded + hidden): clamping that silently returned fewer than top_k
items (none at all once 2048 excluded rows led the ranking), so such a search runs on the CPU copy of
the same index instead, kept in host memory beside the GPU one (same nprobe, same answers).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from repository.index import ivf_part, load_index
from repository.manifest import IndexSection
from server.indexes.faiss_cpu import FaissCpu, FaissIndex
from server.machine import Machine

GPU_TYPES = ("flat", "ivf", "ivfpq")
GPU_MAX_K = 2048  # FAISS's limit on k (and nprobe) for GPU indexes


class GpuFaissIndex(FaissIndex):
    def __init__(self, index: Any, cpu: Any, max_k: int = GPU_MAX_K) -> None:
        super().__init__(index, FaissGpu.name)
        self._cpu = FaissIndex(cpu, FaissGpu.name)  # deep searches: k above the GPU's limit
        self.max_k = max_k
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > self.max_k:
            return self._cpu.search(queries, k)
        with self._lock:
            return super().search(queries, k)

    def add(self, vectors: np.ndarray) -> None:
        with self._lock:
            super().add(vectors)
            self._cpu.add(vectors)


class FaissGpu:
    name = "faiss-gpu"
    _resources: Any = None

    @staticmethod
    def supports(machine: Machine, index_type: str) -> bool:
        return machine.cuda_devices > 0 and hasattr(faiss, "StandardGpuResources") and index_type in GPU_TYPES

    @staticmethod
    def load(path: Path, manifest_index: IndexSection | None, vectors: np.ndarray) -> GpuFaissIndex:
        if FaissGpu._resources is None:
            FaissGpu._resources = faiss.StandardGpuResources()
        cpu = load_index(path, manifest_index)
        gpu = faiss.index_cpu_to_gpu(FaissGpu._resources, 0, cpu)
        ivf = ivf_part(cpu)
        if ivf is not None and hasattr(gpu, "nprobe"):  # the manifest's query-time depth, whatever the cloner copies
            gpu.nprobe = int(ivf.nprobe)
        return GpuFaissIndex(gpu, cpu)

    @staticmethod
    def exact(vectors: np.ndarray) -> FaissIndex:
        return FaissCpu.exact(vectors)
