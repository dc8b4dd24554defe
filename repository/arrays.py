"""The data files of a version that are not graphs or indexes: JSON id lists and the users' seen items."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
