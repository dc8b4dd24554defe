"""The checkpoint folder every model writes, and the one rule for naming the LM it was trained on.

    config.json          kind, format_version, weights_sha256, the model's own sections
    weights.safetensors  only what was trained (ID tables, heads, adapters or unfrozen blocks)
    <model files>        ID maps, item texts, splits: whatever the model needs to rebuild itself
    train/               resume state and the JSON training log (see models.training.state);
                         kept out of the folder's top level so that resuming never changes what
                         the exporter hashes as the checkpoint's identity

Every file is written to a temporary name and renamed, config.json last, so a crash leaves either
the previous checkpoint or the new one. Loading checks the kind, the format version and the
weights' sha256, and never unpickles anything.

A checkpoint records the sha256 of its exact train/valid/test assignment (`split_record`); whoever
rebuilds or reloads the split checks it (`check_split`), so an evaluation never silently scores a
model on a split it was not trained on (a changed data file, loader or split order).

A frozen LM is referenced, not copied: by its path and the sha256 of its weight files' content
(size and mtime change when a file is merely copied; the content hash does not, and it does
change when the weights do).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str, ensure_ascii=False))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def content_sha256(path: Path) -> str:
    """sha256 of one file, or of a folder's weight files (name + content); computed once per process
    for an unchanged file, since an LM's weights are hashed at every load."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {path}")
    if len(files) == 1 and path.is_file():
        st = path.stat()
        return _cached_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(p.name.encode() + b"\0" + _cached_sha256(str(p.resolve()), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()


def lm_identity(path: Path) -> dict[str, str]:
    """What a checkpoint records about an LM it references: where it was and what it was."""
    return {"path": str(Path(path).resolve()), "sha256": content_sha256(path)}


def check_lm_identity(recorded: dict[str, str], path: Path) -> None:
    digest = content_sha256(path)
    if digest != recorded["sha256"]:
        raise ValueError(
            f"the LM at {path} has weights sha256 {digest[:12]}..., the checkpoint was trained on "
            f"{recorded['sha256'][:12]}... ({recorded['path']}); pass the original LM"
        )


def split_record(split: Any) -> dict[str, Any]:
    """What a checkpoint's config says about its split: protocol, seed, counts and the sha256 of the
    exact assignment (models.data.splits.Split.fingerprint)."""
    return {"protocol": split.protocol, "seed": split.seed, **split.counts(), "sha256": split.fingerprint()}


def check_split(recorded: dict[str, Any], split: Any, folder: Path) -> None:
    """Raises a one-line CheckpointError when `split` is not the one the checkpoint recorded. A
    checkpoint written before the hash was recorded has none: nothing to check against."""
    from common.errors import CheckpointError

    want = recorded.get("sha256")
    if want is None:
        return
    got = split.fingerprint()
    if got != want:
        raise CheckpointError(
            f"{folder}: the split evaluated here (sha256 {got[:12]}...) is not the one the checkpoint was trained on "
            f"({want[:12]}...): the data, its preparation or the split code changed since; evaluate with the "
            "original data or retrain")


def write_checkpoint(out: Path, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                     files: dict[str, Any]) -> None:
    """weights, then the model's JSON side files, then config.json (with the weights' hash) last."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / WEIGHTS, tensors)
    for name, payload in files.items():
        atomic_write_json(out / name, payload)
    head = {"kind": kind, "format_version": FORMAT_VERSION, "weights_sha256": file_sha256(out / WEIGHTS)}
    atomic_write_json(out / CONFIG, {**head, **config})


def read_config(folder: Path, kind: str) -> dict[str, Any]:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint: {CONFIG} is missing")
    config = json.loads(path.read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{path}: kind is {config.get('kind')!r}, expected {kind!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r}, this version reads "
                         f"{FORMAT_VERSION}; retrain with this version (checkpoints are cheap to rebuild, "
                         "weights are not migrated)")
    return config


def read_weights(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint: {WEIGHTS} is missing")
    if file_sha256(path) != config.get("weights_sha256"):
        raise ValueError(f"{path} does not match the sha256 in {CONFIG} (modified or half-copied?)")
    return load_file(str(path))


def read_json(folder: Path, name: str) -> Any:
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: {name} is missing")
    return json.loads(path.read_text())


def load_strict(module: torch.nn.Module, keys: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """Copies `tensors` into the module's parameters/buffers named `keys`: every key present,
    nothing extra, every shape equal."""
    missing = [k for k in keys if k not in tensors]
    unexpected = [k for k in tensors if k not in keys]
    if missing or unexpected:
        raise ValueError(f"checkpoint weights mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    own = dict(module.named_parameters()) | dict(module.named_buffers())
    for k in keys:
        if tuple(tensors[k].shape) != tuple(own[k].shape):
            raise ValueError(f"checkpoint weight {k!r} has shape {tuple(tensors[k].shape)}, expected {tuple(own[k].shape)}")
    with torch.no_grad():
        for k in keys:
            own[k].copy_(tensors[k].to(own[k].dtype))
