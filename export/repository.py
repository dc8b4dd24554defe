"""Versions in a model repository: numbering, atomic publication, and completeness checks.

Torch-free: the server imports `verify_version`, `list_versions` and `read_user_history` from here.
A version becomes visible only by one `os.rename` of a fully written and verified folder, so a
reader never sees half a version, and a crashed exporter leaves nothing behind but (at worst) a
`.tmp-*` folder that readers ignore.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import FORMAT_VERSION, MANIFEST, REQUIRED_KEYS, TMP_PREFIX, is_version_name, sha256_file


class VersionError(ValueError):
    """A version folder that must not be served: incomplete, tampered with, or of an unknown format."""


def list_versions(model_dir: Path) -> list[int]:
    """Integer-named folders, ascending; anything else (tmp folders, junk) is ignored."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name))


def next_version(model_dir: Path) -> int:
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def latest_complete_version(model_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """Newest version that passes `verify_version`, with its manifest; None if there is none."""
    for v in reversed(list_versions(model_dir)):
        try:
            return v, verify_version(Path(model_dir) / str(v))
        except VersionError:
            continue
    return None


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST
    if not path.is_file():
        raise VersionError(f"{version_dir}: no {MANIFEST} (an incomplete or foreign folder)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VersionError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise VersionError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def verify_version(version_dir: Path, check_hashes: bool = True) -> dict[str, Any]:
    """The manifest of a complete version; raises VersionError naming the first problem found.

    Complete = manifest present with every required key and a known format_version, and every
    file it lists present with the listed size and (unless check_hashes=False) sha256.
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise VersionError(f"{version_dir}/{MANIFEST}: missing key(s) {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise VersionError(
            f"{version_dir}: format_version {manifest['format_version']!r} is not supported; accepted: {FORMAT_VERSION}"
        )
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise VersionError(f"{version_dir}/{MANIFEST}: 'files' must be a non-empty object")
    for name, entry in files.items():
        path = version_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise VersionError(f"{version_dir}: listed file {name!r} points outside the version folder")
        if not path.is_file():
            raise VersionError(f"{version_dir}: listed file {name} is missing")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise VersionError(f"{version_dir}: {name} has {size} bytes, the manifest says {entry['bytes']}")
        if check_hashes and sha256_file(path) != entry.get("sha256"):
            raise VersionError(f"{version_dir}: {name} does not match its sha256 in the manifest (modified or corrupt)")
    return manifest


def file_entries(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(Path(folder) / n), "bytes": (Path(folder) / n).stat().st_size} for n in names}


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


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


def checkpoint_sha256(checkpoint_dir: Path) -> tuple[str, int]:
    """One hash over the checkpoint's top-level files (name + content), and how many were hashed.

    Config, ID maps and weights identify what was exported; sub-folders (the training state and
    log under `train/`) are skipped, so resuming training alone does not change the identity.
    """
    root = Path(checkpoint_dir)
    h = hashlib.sha256()
    files = sorted(p for p in root.iterdir() if p.is_file())
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest(), len(files)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for label, dist in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                        ("faiss", "faiss-cpu"), ("numpy", "numpy"), ("transformers", "transformers")):
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = None
    return out


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def staging_folder(model_dir: Path) -> Iterator[Path]:
    """A fresh `<model>/.tmp-<uuid>/` that is removed on any exception (and if left unpublished).

    The model folder itself is removed too when this call created it and nothing else is in it,
    so a failed first export leaves the repository as it was.
    """
    model_dir = Path(model_dir)
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                model_dir.rmdir()  # only succeeds when empty


def publish(tmp: Path, model_dir: Path, manifest: dict[str, Any], max_attempts: int = 20) -> Path:
    """Writes the manifest last, verifies the folder, and renames it to the next free version number.

    A concurrent exporter may take the same number between our listing and our rename; the rename
    then fails (the target exists and is not empty) and we retry with the next number.
    """
    tmp, model_dir = Path(tmp), Path(model_dir)
    for _ in range(max_attempts):
        version = next_version(model_dir)
        manifest["version"] = version
        part = tmp / (MANIFEST + ".part")
        write_json(part, manifest)
        os.replace(part, tmp / MANIFEST)
        verify_version(tmp)
        target = model_dir / str(version)
        if target.exists():
            continue
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return target
    raise RuntimeError(f"{model_dir}: could not claim a free version number after {max_attempts} attempts")
