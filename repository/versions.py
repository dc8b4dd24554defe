"""Versions in a model repository: listing, numbering, atomic publication and completeness checks.

A version becomes visible only by one `os.rename` of a fully written and verified folder, so a reader
never sees half a version, and a crashed exporter leaves nothing behind but (at worst) a `.tmp-*`
folder that readers ignore.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from common import logs
from repository.arrays import write_json
from repository.errors import VersionError
from repository.files import MANIFEST, TMP_PREFIX, is_version_name, sha256_file
from repository.manifest import FileEntry, Manifest, read_manifest

log = logs.get("repository")


def list_versions(model_dir: Path) -> list[int]:
    """Integer-named folders, ascending; anything else (tmp folders, junk) is ignored."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if is_version_name(p.name) and p.is_dir())


def scan(repository: Path) -> dict[str, list[int]]:
    """Model name -> sorted version numbers whose folder holds a manifest.json (not yet verified).

    A folder that cannot be read is logged and skipped for that model alone: one bad entry never
    hides the rest of the repository.
    """
    out: dict[str, list[int]] = {}
    if not repository.is_dir():
        return out
    for model_dir in sorted(p for p in repository.iterdir() if not p.name.startswith(".") and p.is_dir()):
        try:
            junk = [p.name for p in model_dir.iterdir()
                    if p.is_dir() and not is_version_name(p.name) and not p.name.startswith(".")]
            versions = [v for v in list_versions(model_dir) if (model_dir / str(v) / MANIFEST).is_file()]
        except OSError as exc:
            log.error("model folder skipped: it cannot be read", model=model_dir.name, error=str(exc))
            continue
        if junk:
            log.warning("folders that are not versions ignored (a version is a positive integer: 1, 2, ...)",
                        model=model_dir.name, folders=sorted(junk)[:10])
        if versions:
            out[model_dir.name] = versions
    return out


def next_version(model_dir: Path) -> int:
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def latest_complete_version(model_dir: Path) -> tuple[int, Manifest] | None:
    """Newest version that passes `verify_version`, with its manifest; None if there is none."""
    for v in reversed(list_versions(model_dir)):
        try:
            return v, verify_version(Path(model_dir) / str(v))
        except VersionError:
            continue
    return None


def verify_version(version_dir: Path, check_hashes: bool = True) -> Manifest:
    """The manifest of a complete version; raises VersionError naming the first problem found.

    Complete = a manifest that reads (every required field, a known format and model kind), and every
    file it lists present with the listed size and (unless check_hashes=False) sha256.
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    for name, entry in manifest.files.items():
        path = version_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise VersionError(f"{version_dir}: listed file {name!r} points outside the version folder")
        if not path.is_file():
            raise VersionError(f"{version_dir}: listed file {name} is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise VersionError(f"{version_dir}: {name} has {size} bytes, the manifest says {entry.bytes}")
        if check_hashes and sha256_file(path) != entry.sha256:
            raise VersionError(f"{version_dir}: {name} does not match its sha256 in the manifest (modified or corrupt)")
    return manifest


def file_entries(folder: Path, names: list[str]) -> dict[str, FileEntry]:
    return {n: FileEntry(sha256_file(Path(folder) / n), (Path(folder) / n).stat().st_size) for n in names}


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


def publish(tmp: Path, model_dir: Path, manifest: Manifest, max_attempts: int = 20) -> Path:
    """Writes the manifest last, verifies the folder, and renames it to the next free version number.

    A concurrent exporter may take the same number between our listing and our rename; the rename
    then fails (the target exists and is not empty) and we retry with the next number.
    """
    tmp, model_dir = Path(tmp), Path(model_dir)
    for _ in range(max_attempts):
        version = next_version(model_dir)
        manifest.version = version
        part = tmp / (MANIFEST + ".part")
        write_json(part, manifest.to_dict())
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
