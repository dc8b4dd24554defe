"""The data files of a version that are not graphs or indexes: JSON id lists, the known users' id
lookup and seen items.

Known-user files are plain .npy arrays opened with `np.load(mmap_mode="r")`: the operating system pages
in the rows a request touches, so a replica serving 10M known users does not hold 10M of anything in
its own memory (benchmarks/serve_memory.py measures it). The id lookup is a sorted fixed-width byte
array searched with np.searchsorted rather than a dict, which would cost ~100 bytes per user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repository import files as F
from repository.errors import VersionError


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    """A version's JSON file; VersionError when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VersionError(f"{path}: not valid JSON ({exc})") from exc


def read_json_list(path: Path, required: bool = True) -> list[str]:
    """A JSON list of ids or titles, as strings; [] for an optional file that is absent."""
    if not path.is_file():
        if required:
            raise VersionError(f"{path.parent}: {path.name} is missing")
        return []
    data = read_json(path)
    if not isinstance(data, list):
        raise VersionError(f"{path}: expected a JSON list")
    return [str(x) for x in data]


def write_user_history(path: Path, histories: Sequence[np.ndarray]) -> None:
    """CSR: user row u has seen items indices[indptr[u]:indptr[u+1]]."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = (np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
               if len(histories) else np.zeros(0, np.int64)).astype(np.int32)
    with open(path, "wb") as f:
        np.savez(f, indptr=indptr, indices=indices)


def read_user_history(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of user_history.npz."""
    with np.load(path) as data:
        return data["indptr"], data["indices"]


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """A version's .npy file, memory-mapped (read-only) unless `mmap` is false; VersionError if unreadable."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VersionError(f"{path}: not a readable .npy array ({exc})") from exc


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """Fixed-width UTF-8 bytes of the ids; refuses a NUL byte, which numpy's bytes type strips."""
    raw = [str(u).encode() for u in ids]
    if any(b"\x00" in r for r in raw):
        raise ValueError("a user id contains a NUL byte: ids are stored as fixed-width bytes")
    width = max((len(r) for r in raw), default=1) or 1
    return np.array(raw, dtype=f"S{width}")


def write_user_ids(folder: Path, ids: Sequence[str] | np.ndarray) -> list[str]:
    """USER_ID_KEYS (sorted keys) + USER_ID_ROWS (their rows); returns the file names written."""
    keys = ids if isinstance(ids, np.ndarray) and ids.dtype.kind == "S" else encode_ids(list(ids))
    order = np.argsort(keys, kind="stable")
    np.save(Path(folder) / F.USER_ID_KEYS, keys[order])
    np.save(Path(folder) / F.USER_ID_ROWS, order.astype(np.int64))
    return [F.USER_ID_KEYS, F.USER_ID_ROWS]


def write_user_history_csr(folder: Path, histories: Sequence[np.ndarray]) -> list[str]:
    """USER_HISTORY_INDPTR / USER_HISTORY_INDICES: user row u saw indices[indptr[u]:indptr[u+1]]."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    for u, h in enumerate(histories):
        indices[indptr[u]:indptr[u + 1]] = h
    np.save(Path(folder) / F.USER_HISTORY_INDPTR, indptr)
    np.save(Path(folder) / F.USER_HISTORY_INDICES, indices)
    return [F.USER_HISTORY_INDPTR, F.USER_HISTORY_INDICES]


class UserIdLookup(Mapping[str, int]):
    """External user id -> user row over the sorted key array (memory-mapped): O(log n) page touches
    per lookup and no per-user Python object."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray) -> None:
        if keys.ndim != 1 or keys.dtype.kind != "S" or rows.shape != keys.shape:
            raise VersionError(f"{F.USER_ID_KEYS} / {F.USER_ID_ROWS}: expected 1-d bytes keys and as many rows, "
                               f"got {keys.dtype} {keys.shape} and {rows.shape}")
        self.keys, self.rows = keys, rows
        self._width = keys.dtype.itemsize

    def get(self, user_id: str, default: int | None = None) -> int | None:  # type: ignore[override]
        key = str(user_id).encode()
        if not key or len(key) > self._width or b"\x00" in key or not len(self.keys):
            return default
        pos = int(np.searchsorted(self.keys, np.bytes_(key)))
        if pos < len(self.keys) and self.keys[pos] == key:
            return int(self.rows[pos])
        return default

    def __getitem__(self, user_id: str) -> int:
        row = self.get(user_id)
        if row is None:
            raise KeyError(user_id)
        return row

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self.get(user_id) is not None

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[str]:  # sorted order, not row order
        return (bytes(k).decode() for k in self.keys)
