"""Where a version came from, recorded in its manifest's `source` and `package_versions`."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from repository.files import sha256_file


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
