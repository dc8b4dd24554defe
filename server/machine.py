"""What this machine offers the inference engines, read once: CPU flags, ONNX Runtime providers,
GPUs, which optional runtimes are installed. Engines decide from these facts, never by asking a
runtime to try (OpenVINO's bf16 hint on a CPU without bf16 does not fall back: it emulates bf16 and
ran 44-53x slower than fp32, see docs/performance.md). Tests build a Machine by hand.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

from common.cpu import BF16_FLAGS, cpu_flags
from common.openvino import installed as openvino_installed


@dataclass(frozen=True)
class Machine:
    cpu_flags: frozenset[str] = frozenset()
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    cuda_devices: int = 0  # GPUs FAISS can use
    openvino: bool = False
    nncf: bool = False  # OpenVINO weight compression (int8 weights)
    cpus: int = 1  # cores this process may use (usable_cpus): sizes the encoder instances in auto mode

    @property
    def cpu_bf16(self) -> bool:
        return bool(self.cpu_flags & BF16_FLAGS)

    @property
    def cuda_provider(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers


def usable_cpus() -> int:
    """Cores this process may use: the least of the machine's physical cores, its CPU affinity and a
    container's CPU quota (cgroup v1 / v2), via joblib's loky, which reads all three. A pod limited to 2
    CPUs on a 64-core node sees 64 in os.cpu_count(); sizing workers from that oversubscribes the quota
    and the kernel throttles the whole pod. Physical cores, because one inference thread per core is
    what the engines are tuned for (a hyperthread sibling shares the core's AMX / AVX-512 units)."""
    import warnings

    import joblib

    with warnings.catch_warnings():  # no lscpu in a slim image: loky warns, then counts logical cores
        warnings.simplefilter("ignore")
        return max(1, int(joblib.cpu_count(only_physical_cores=True)))


@functools.cache
def detect() -> Machine:
    import faiss
    import onnxruntime as ort

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return Machine(cpu_flags=cpu_flags(), ort_providers=tuple(ort.get_available_providers()), cuda_devices=gpus,
                   openvino=openvino_installed(),
                   nncf=importlib.util.find_spec("nncf") is not None, cpus=usable_cpus())
