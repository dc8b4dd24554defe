"""Reading a version for serving: its verified manifest, arrays and tokenizer, checked for consistency.

A version is only trusted after every file listed in its manifest matches its sha256: a half-copied or
tampered folder is refused rather than served. Known users' arrays of a format-2 version are memory-mapped
(never read whole): user vectors (float32 or float16), histories, CLLM4Rec user rows and the id lookup
(repository.arrays.UserIdLookup). A format-1 version (user_ids.json, user_history.npz) is still read, whole
into memory as before: re-export it to serve many users. Indexes and encoders are opened by the backend and
engine a server chooses for its machine (server/indexes, server/engines), from the paths given here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repository import files as F
from repository.arrays import UserIdLookup, load_array, read_json_list
from repository.errors import VersionError
from repository.manifest import ENCODER_NAMES, Manifest, read_manifest
from repository.versions import verify_version


@dataclass
class VersionFiles:
    """Everything read from one version folder, before any serving state is built on it."""

    path: Path
    manifest: Manifest
    item_ids: list[str]
    item_vectors: np.ndarray
    item_titles: list[str]
    user_ids: Mapping[str, int]  # external id -> user row (format 2: a memory-mapped sorted lookup)
    user_vectors: np.ndarray  # float32 or float16 [num_users, dim]; np.memmap in format 2
    history_indptr: np.ndarray
    history_indices: np.ndarray
    encoders: dict[str, Path] = field(default_factory=dict)  # role -> ONNX graph (engines load them)
    tokenizer: Any = None
    id_part: np.ndarray | None = None  # hybrid item towers: the ID part of each exported item

    @property
    def index_path(self) -> Path:
        return self.path / F.ITEMS_INDEX


def load_files(path: Path) -> VersionFiles:
    manifest = verify_version(path)
    caps = manifest.capabilities
    item_ids = read_json_list(path / F.ITEM_IDS)
    item_vectors = np.ascontiguousarray(np.load(path / F.ITEM_VECTORS), dtype=np.float32)
    titles = read_json_list(path / F.ITEM_TITLES, required=False) or [""] * len(item_ids)
    if manifest.known_users is not None:
        user_ids, user_vectors, indptr, indices = _known_users_mmap(path, manifest)
    else:
        user_ids, user_vectors, indptr, indices = _known_users_v1(path, caps.user_id, item_vectors.shape[1])
    dim, n = manifest.dim, len(item_ids)
    problems = []
    if item_vectors.shape != (n, dim):
        problems.append(f"{F.ITEM_VECTORS} shape {item_vectors.shape} != ({n}, {dim})")
    if len(titles) != n:
        problems.append(f"{F.ITEM_TITLES} has {len(titles)} entries for {n} items")
    if user_vectors.shape != (len(user_ids), dim):
        problems.append(f"{F.USER_VECTORS} shape {user_vectors.shape} != ({len(user_ids)}, {dim})")
    if len(indptr) != len(user_ids) + 1:
        problems.append(f"{F.USER_HISTORY} indptr has {len(indptr)} entries for {len(user_ids)} users")
    if len(set(item_ids)) != n:
        problems.append(f"{F.ITEM_IDS} has duplicate ids")
    prompt = manifest.cllm4rec
    if prompt is not None and prompt.user_rows:
        rows = load_array(path / prompt.user_rows)
        if rows.ndim != 2 or rows.shape[0] != len(user_ids) + 1:
            problems.append(f"{prompt.user_rows} shape {rows.shape} != ({len(user_ids)} users + 1 anonymous, hidden)")
    if problems:
        raise VersionError(f"{path}: " + "; ".join(problems))
    files = VersionFiles(path, manifest, item_ids, item_vectors, titles, user_ids, user_vectors, indptr, indices)
    for role in ENCODER_NAMES:
        spec = manifest.encoders.get(role)
        graph = path / (spec.path if spec else F.encoder_file(role))
        if graph.is_file():
            files.encoders[role] = graph
    if caps.history and "user_encoder" not in files.encoders:
        raise VersionError(f"{path}: capabilities.history is true but there is no {F.USER_ENCODER}")
    tcf = manifest.tcf
    if tcf is not None and tcf.id_part:
        files.id_part = np.ascontiguousarray(np.load(path / tcf.id_part), dtype=np.float32)
        if files.id_part.ndim != 2 or files.id_part.shape[0] > n or files.id_part.shape[1] != dim:
            raise VersionError(f"{path}: {tcf.id_part} has shape {files.id_part.shape}; expected (<= {n}, {dim})")
    if caps.upsert_items:
        if "item_encoder" not in files.encoders:
            raise VersionError(f"{path}: capabilities.upsert_items is true but there is no {F.ITEM_ENCODER}")
        from tokenizers import Tokenizer

        tok_name = (tcf.tokenizer if tcf else None) or F.TOKENIZER
        try:
            files.tokenizer = Tokenizer.from_file(str(path / tok_name))
        except Exception as exc:
            raise VersionError(f"{path}: cannot read tokenizer {tok_name} ({exc})") from exc
    return files


def _known_users_mmap(path: Path, manifest: Manifest) -> tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray]:
    """Format 2: every known-user array memory-mapped, nothing per user built in memory."""
    dim = manifest.dim
    if manifest.num_users == 0 and not (path / F.USER_ID_KEYS).is_file():
        empty = UserIdLookup(np.zeros(0, "S1"), np.zeros(0, np.int64))
        return empty, np.zeros((0, dim), np.float32), np.zeros(1, np.int64), np.zeros(0, np.int32)
    for name in (F.USER_ID_KEYS, F.USER_ID_ROWS, F.USER_VECTORS, F.USER_HISTORY_INDPTR, F.USER_HISTORY_INDICES):
        if not (path / name).is_file():
            raise VersionError(f"{path}: {name} is missing (format 2 known users)")
    lookup = UserIdLookup(load_array(path / F.USER_ID_KEYS), load_array(path / F.USER_ID_ROWS))
    vectors = load_array(path / F.USER_VECTORS)
    want = manifest.known_users.vectors_dtype if manifest.known_users else "float32"
    if vectors.dtype != np.dtype(want):
        raise VersionError(f"{path}: {F.USER_VECTORS} is {vectors.dtype}, the manifest says {want}")
    return lookup, vectors, load_array(path / F.USER_HISTORY_INDPTR), load_array(path / F.USER_HISTORY_INDICES)


def _known_users_v1(path: Path, required: bool, dim: int) -> tuple[Mapping[str, int], np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Format 1: a JSON id list and one npz, read whole (as every server before format 2 did)."""
    user_ids = read_json_list(path / F.USER_IDS, required=required)
    if (path / F.USER_VECTORS).is_file():
        user_vectors = np.ascontiguousarray(np.load(path / F.USER_VECTORS), dtype=np.float32)
    else:
        user_vectors = np.zeros((0, dim), np.float32)
    if (path / F.USER_HISTORY).is_file():
        with np.load(path / F.USER_HISTORY) as h:
            indptr, indices = h["indptr"].astype(np.int64), h["indices"].astype(np.int64)
    else:
        indptr, indices = np.zeros(len(user_ids) + 1, np.int64), np.zeros(0, np.int64)
    lookup = {u: i for i, u in enumerate(user_ids)}
    if len(lookup) != len(user_ids):
        raise VersionError(f"{path}: {F.USER_IDS} has duplicate ids")
    return lookup, user_vectors, indptr, indices


def read_known_users(version_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(user ids in row order, history indptr, history indices) of either format, read whole: for tools
    that build requests from a version (benchmarks, clients), not for serving."""
    path = Path(version_dir)
    manifest = read_manifest(path)
    if manifest.known_users is None:
        ids, _, indptr, indices = _known_users_v1(path, False, manifest.dim)
        return list(ids), np.asarray(indptr), np.asarray(indices)
    lookup, _, indptr, indices = _known_users_mmap(path, manifest)
    assert isinstance(lookup, UserIdLookup)
    ordered = np.empty(len(lookup), dtype=object)
    ordered[np.asarray(lookup.rows)] = [bytes(k).decode() for k in lookup.keys]
    return list(ordered), np.asarray(indptr), np.asarray(indices)
