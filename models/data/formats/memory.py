"""Refusing work that cannot fit in memory before it starts, in one line that says how much it needs.

A data file several times bigger than the machine's memory does not fail at once: the reader fills
memory for minutes, then the kernel kills it (or swaps it to a crawl) with nothing said. The loaders
and EASE therefore estimate what they will hold, compare it with the memory available now, and
refuse with both figures. The estimates are measured, not derived (see LOAD_BYTES_PER_FILE_BYTE).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from common.errors import ConfigError, DataError

# Peak RSS growth of loading a text table, per byte of (uncompressed) text: 9.3 at 100k users
# (112 MB CSV -> 1.04 GB) and 10.3 at 10k users (6.4 MB -> 66 MB), measured on `llmrec data synth`
# output with `interactions`: every row is kept as Python strings until the ids are indexed.
LOAD_BYTES_PER_FILE_BYTE = 11.0
# Parquet is read whole and turned into Python values: the same rows as the CSV above cost ~207
# bytes each; a row count is in the file's footer, so the estimate needs no read of the data.
LOAD_BYTES_PER_PARQUET_ROW = 230.0
# a gzip member stores its uncompressed size modulo 2^32; below this ratio it has wrapped around
GZIP_MIN_RATIO = 2.0


def available_bytes() -> int:
    """Memory a new allocation can get now without swapping (Linux MemAvailable), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gib(n: float) -> str:
    """A byte count as people read it (GiB down to kB, so a small figure does not read 0.0 GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} kB"


def require(need: float, what: str, remedy: str, available: int | None = None,
            error: type[Exception] = ConfigError) -> None:
    """Raises `error` naming `what`, the bytes it needs and those available, when it would not fit."""
    have = available_bytes() if available is None else available
    if need > have:
        raise error(f"{what} needs about {gib(need)} of memory but {gib(have)} is available; {remedy}")


def text_bytes(path: Path) -> int:
    """Uncompressed size of a text file, plain or gzipped (the gzip trailer, or 4x when it has wrapped)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return size
        f.seek(-4, os.SEEK_END)
        stored = struct.unpack("<I", f.read(4))[0]
    return stored if stored >= GZIP_MIN_RATIO * size else 4 * size


def load_estimate(path: Path) -> float:
    """Bytes of memory loading `path` takes at its peak (measured factors above)."""
    if ".parquet" in [s.lower() for s in path.suffixes]:
        import pyarrow.parquet as pq  # imported here: only Parquet users pay for pyarrow's import

        return pq.ParquetFile(path).metadata.num_rows * LOAD_BYTES_PER_PARQUET_ROW
    return text_bytes(path) * LOAD_BYTES_PER_FILE_BYTE


def check_loadable(path: Path, available: int | None = None) -> None:
    """Refuses a data file whose loading would not fit in the memory available, before reading it."""
    try:
        need = load_estimate(path)
    except (OSError, ValueError):  # unreadable (a broken gzip or Parquet footer): the reader says so, with its file
        return
    require(need, f"{path} ({gib(path.stat().st_size)} on disk)",
            "split it, filter it (fewer users or items), or load it on a machine with more memory",
            available, error=DataError)
