"""What this CPU multiplies natively, read from /proc/cpuinfo once per call.

Training's precision, the server's engines and the exporter's known-user pass all decide bf16 from
these flags, never by asking a runtime to try: where the hardware lacks bf16, PyTorch emulates it
(slower than fp32) and OpenVINO's bf16 hint does not fall back but emulates it, 44-53x slower than fp32
(docs/performance.md). Tests pass a cpuinfo file or mock the flags.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # bf16 matrix products in hardware (AMX tiles or AVX-512)


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's feature flags (x86 `flags`, Arm `Features`); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()
