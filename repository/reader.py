"""Reading a version for serving: its verified manifest, arrays and tokenizer, checked for consistency.

A version is only trusted after every file listed in its manifest matches its sha256: a half-copied or
tampered folder is refused rather than served. Indexes and encoders are opened by the backend and
engine a server chooses for its machine (server/indexes, server/engines), from the paths given here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repository import files as F
from repository.arrays import read_json_list
from repository.errors import VersionError
from repository.manifest import ENCODER_NAMES, Manifest
from repository.versions import verify_version


@dataclass
class VersionFiles:
    """Everything read from one version folder, before any serving state is built on it."""

    path: Path
    manifest: Manifest
    item_ids: list[str]
    item_vectors: np.ndarray
    item_titles: list[str]
    user_ids: list[str]
    user_vectors: np.ndarray
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
    user_ids = read_json_list(path / F.USER_IDS, required=caps.user_id)
    if (path / F.USER_VECTORS).is_file():
        user_vectors = np.ascontiguousarray(np.load(path / F.USER_VECTORS), dtype=np.float32)
    else:
        user_vectors = np.zeros((0, item_vectors.shape[1]), np.float32)
    if (path / F.USER_HISTORY).is_file():
        with np.load(path / F.USER_HISTORY) as h:
            indptr, indices = h["indptr"].astype(np.int64), h["indices"].astype(np.int64)
    else:
        indptr, indices = np.zeros(len(user_ids) + 1, np.int64), np.zeros(0, np.int64)
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
