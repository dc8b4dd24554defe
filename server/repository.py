"""Reading the model repository (docs/model-repository.md): finding complete versions, checking their
hashes (with the exporter's torch-free `export.repository.verify_version`: one check for both sides)
and loading their arrays and tokenizer. Indexes and encoders are loaded by the backend and engine
chosen for this machine (server/indexes, server/engines).

A version is only trusted after every file listed in its manifest matches its sha256: a half-copied
or tampered folder is refused rather than served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.repository import VersionError, list_versions
from export.repository import verify_version as _export_verify
from llmrec import logs
from server.adapters import accepted, adapter_for

log = logs.get("server.repository")

__all__ = ["VersionError", "load_files", "scan", "verify_version"]


def scan(repository: Path) -> dict[str, list[int]]:
    """Model name -> sorted version numbers whose folder holds a manifest.json (not yet verified)."""
    out: dict[str, list[int]] = {}
    if not repository.is_dir():
        return out
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [v for v in list_versions(model_dir) if (model_dir / str(v) / "manifest.json").is_file()]
        if versions:
            out[model_dir.name] = versions
    return out


def verify_version(path: Path) -> dict[str, Any]:
    """Manifest of a complete, untampered version (the exporter's own check: required keys, sizes,
    sha256 of every listed file), plus what this server can serve; raises VersionError otherwise."""
    manifest = _export_verify(path)
    if adapter_for(str(manifest.get("kind")), str(manifest.get("user_tower"))) is None:
        raise VersionError(f"{path}: model kind/user tower {manifest.get('kind')}/{manifest.get('user_tower')} "
                           f"is not served here; accepted: {accepted()}")
    if manifest.get("metric", "inner_product") != "inner_product":
        raise VersionError(f"{path}: metric {manifest.get('metric')!r}; only inner_product is served")
    return manifest


@dataclass
class VersionFiles:
    """Everything read from one version folder, before any serving state is built on it."""

    path: Path
    manifest: dict[str, Any]
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


def _json_list(path: Path, required: bool = True) -> list[str]:
    if not path.is_file():
        if required:
            raise VersionError(f"{path.parent}: {path.name} is missing")
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise VersionError(f"{path}: expected a JSON list")
    return [str(x) for x in data]


def load_files(path: Path) -> VersionFiles:
    manifest = verify_version(path)
    item_ids = _json_list(path / "item_ids.json")
    item_vectors = np.ascontiguousarray(np.load(path / "item_vectors.npy"), dtype=np.float32)
    titles = _json_list(path / "item_titles.json", required=False) or [""] * len(item_ids)
    caps = manifest.get("capabilities") or {}
    user_ids = _json_list(path / "user_ids.json", required=bool(caps.get("user_id")))
    if (path / "user_vectors.npy").is_file():
        user_vectors = np.ascontiguousarray(np.load(path / "user_vectors.npy"), dtype=np.float32)
    else:
        user_vectors = np.zeros((0, item_vectors.shape[1]), np.float32)
    if (path / "user_history.npz").is_file():
        with np.load(path / "user_history.npz") as h:
            indptr, indices = h["indptr"].astype(np.int64), h["indices"].astype(np.int64)
    else:
        indptr, indices = np.zeros(len(user_ids) + 1, np.int64), np.zeros(0, np.int64)
    dim = int(manifest.get("dim", item_vectors.shape[1]))
    n = len(item_ids)
    problems = []
    if item_vectors.shape != (n, dim):
        problems.append(f"item_vectors.npy shape {item_vectors.shape} != ({n}, {dim})")
    if len(titles) != n:
        problems.append(f"item_titles.json has {len(titles)} entries for {n} items")
    if user_vectors.shape != (len(user_ids), dim):
        problems.append(f"user_vectors.npy shape {user_vectors.shape} != ({len(user_ids)}, {dim})")
    if len(indptr) != len(user_ids) + 1:
        problems.append(f"user_history.npz indptr has {len(indptr)} entries for {len(user_ids)} users")
    if len(set(item_ids)) != n:
        problems.append("item_ids.json has duplicate ids")
    if problems:
        raise VersionError(f"{path}: " + "; ".join(problems))
    files = VersionFiles(path, manifest, item_ids, item_vectors, titles, user_ids, user_vectors, indptr, indices)
    encoders = manifest.get("encoders") or {}
    for role in ("user_encoder", "item_encoder"):
        rel = (encoders.get(role) or {}).get("path") or f"{role}.onnx"
        if (path / rel).is_file():
            files.encoders[role] = path / rel
    if caps.get("history") and "user_encoder" not in files.encoders:
        raise VersionError(f"{path}: capabilities.history is true but there is no user_encoder.onnx")
    id_part = (manifest.get("tcf") or {}).get("id_part")
    if id_part:
        files.id_part = np.ascontiguousarray(np.load(path / id_part), dtype=np.float32)
        if files.id_part.ndim != 2 or files.id_part.shape[0] > n or files.id_part.shape[1] != dim:
            raise VersionError(f"{path}: {id_part} has shape {files.id_part.shape}; expected (<= {n}, {dim})")
    if caps.get("upsert_items"):
        if "item_encoder" not in files.encoders:
            raise VersionError(f"{path}: capabilities.upsert_items is true but there is no item_encoder.onnx")
        from tokenizers import Tokenizer

        tok_name = (manifest.get("tcf") or {}).get("tokenizer", "tokenizer.json")
        try:
            files.tokenizer = Tokenizer.from_file(str(path / tok_name))
        except Exception as exc:
            raise VersionError(f"{path}: cannot read tokenizer {tok_name} ({exc})") from exc
    return files
