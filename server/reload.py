"""Hot reload: scan the repository (every poll_seconds and on ReloadModels), load + warm up each new
complete version off the request path, bring it up to date with the model's item journal, then swap
it in. A version that fails (hash, ONNX, warm-up) is refused, logged and counted while the old
version keeps serving; it is tried again when any of its files changes (a copy that was still in
progress when it was first seen), and on every ReloadModels. A version refused only because its item
journal could not be reached (a Redis outage: nothing wrong with the version) is retried by later scans
with exponential back-off, so an outage delays a rollout instead of stopping it until someone calls
ReloadModels. Pinned versions (name:version) stay loaded beside the newest.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import logs
from repository.errors import VersionError
from repository.files import MANIFEST
from repository.journal import JournalUnavailable
from repository.reader import load_files
from repository.versions import scan
from server.config import ServeConfig
from server.item_journal import ItemJournals
from server.machine import Machine, detect
from server.memory import release_later
from server.model_version import ModelVersion
from server.registry import Registry

log = logs.get("server.reload")


@dataclass
class ReloadResult:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)


class Reloader:
    def __init__(self, cfg: ServeConfig, registry: Registry, journals: ItemJournals, metrics: Any,
                 on_health: Callable[[str], None], machine: Machine | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.journals = journals
        self.metrics = metrics
        self.on_health = on_health  # recompute the health of a model ("" = the whole server)
        self.machine = machine or detect()
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, int], tuple] = {}  # -> fingerprint of the folder when refused
        self._identities: dict[tuple[str, int], tuple] = {}  # -> _identity of the loaded folder
        # versions refused for a transient reason (journal unreachable): (next try, seconds of back-off)
        self._retry: dict[tuple[str, int], tuple[float, float]] = {}
        self.clock: Callable[[], float] = time.monotonic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Initial load, then polling, on a background thread (health says when it is done)."""
        self._thread = threading.Thread(target=self._run, name="reloader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Does not wait for a load in progress beyond `timeout`: shutdown must not hang on it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        try:
            if not self.reload_now().serving:
                log.warning("no model version could be loaded: nothing is served until one is exported into the "
                            "repository (see docs/model-repository.md)", repository=str(self.cfg.repository))
        except Exception:
            log.exception("initial repository scan failed")
        self.registry.ready = True
        while self.cfg.reload.poll_seconds > 0 and not self._stop.wait(self.cfg.reload.poll_seconds):
            try:
                self.reload_now()
            except Exception:
                log.exception("repository scan failed")

    def _try_load(self, name: str, version: int, pinned: bool, result: ReloadResult) -> ModelVersion | None:
        path = Path(self.cfg.repository) / name / str(version)
        fingerprint = _fingerprint(path)
        if not fingerprint or self._refused.get((name, version)) == fingerprint:
            return None
        retry = self._retry.get((name, version))
        if retry is not None and self.clock() < retry[0]:
            return None
        identity = _identity(path)
        try:
            files = load_files(path)
            mv = ModelVersion.load(name, files, self.cfg, self.metrics, pinned=pinned, machine=self.machine)
            try:
                mv.warm_up(self.cfg.reload.warmup_users)
            except Exception:
                mv.retire()
                raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, VersionError) else f"{type(exc).__name__}: {exc}"
            self._refuse(name, version, fingerprint, reason, result)
            return None
        self._refused.pop((name, version), None)
        mv.identity = identity  # as read before loading: a replacement during the load is seen at the next scan
        return mv

    def reload_now(self, retry_refused: bool = False) -> ReloadResult:
        with self._lock:
            if retry_refused:
                self._refused.clear()
                self._retry.clear()
            return self._scan()

    def _scan(self) -> ReloadResult:
        result = ReloadResult()
        found = scan(Path(self.cfg.repository))
        pins = self.cfg.reload.pinned()
        loaded = self.registry.loaded()
        for name, versions in found.items():
            have = loaded.get(name, {})
            default = None
            for v in sorted(versions, reverse=True):
                if v in have and not self._replaced(have[v]):
                    default = v
                    break
                mv = self._try_load(name, v, v in pins.get(name, set()), result)
                if mv is not None and self._install(mv, True, result):
                    default = v
                    break
                if v in have:  # replaced in place but the new content was refused: the loaded one keeps serving
                    default = v
                    break
            keep = {default} if default is not None else set()
            for v in sorted(pins.get(name, set()) & set(versions)):
                if (v not in have or self._replaced(have[v])) and v != default:
                    mv = self._try_load(name, v, True, result)
                    if mv is not None:
                        self._install(mv, False, result)
                keep.add(v)
            if default is not None:
                self.registry.set_default(name, default)
            for v in list(self.registry.loaded().get(name, {})):
                if v not in keep or v not in versions:
                    self.registry.remove(name, v)
                    self._set_loaded(name, v, False)
                    result.unloaded.append(f"{name}:{v}")
                    log.info("version unloaded", model=name, version=v)
            self.on_health(name)
        for name in set(loaded) - set(found):  # model folder removed
            for v in loaded[name]:
                self.registry.remove(name, v)
                self._set_loaded(name, v, False)
                result.unloaded.append(f"{name}:{v}")
            self.on_health(name)
        now = self.registry.loaded()
        result.serving = [f"{n}:{v}" for n in sorted(now) for v in sorted(now[n])]
        if result.loaded or result.unloaded:  # something was retired: give its memory back
            release_later()
        self.on_health("")
        return result

    def _replaced(self, mv: ModelVersion) -> bool:
        """Whether mv's folder now holds another version under the same number (replaced in place)."""
        now = _identity(mv.path)
        return bool(now) and now != self._identities.get((mv.name, mv.version), now)

    def _install(self, mv: ModelVersion, make_default: bool, result: ReloadResult) -> bool:
        """Swaps mv in once it holds every journalled item change; refuses it if it cannot."""
        self.metrics.init_model(mv.name)
        try:
            with self.journals.up_to_date(mv):
                self.registry.install(mv, make_default=make_default)
        except JournalUnavailable as exc:  # nothing wrong with the version: try again later, backing off
            mv.retire()
            self._refuse_for_now(mv.name, mv.version, f"item journal unreachable: {exc}", result)
            return False
        except Exception as exc:
            mv.retire()
            self._refuse(mv.name, mv.version, _fingerprint(mv.path), f"item journal replay failed: {exc}", result)
            return False
        self._retry.pop((mv.name, mv.version), None)
        self._identities[(mv.name, mv.version)] = mv.identity
        self._set_loaded(mv.name, mv.version, True, mv)
        self.metrics.reloads.labels(model=mv.name, result="success").inc()
        log.info("version loaded", model=mv.name, version=mv.version, kind=mv.kind, items=mv.catalogue.num_items,
                 users=len(mv.user_ids), pinned=mv.pinned, journal_seq=mv.applied_seq,
                 encoder_instances=mv.encoder_instances)
        result.loaded.append(f"{mv.name}:{mv.version}")
        return True

    def _refuse(self, name: str, version: int, fingerprint: tuple, reason: str, result: ReloadResult) -> None:
        self._refused[(name, version)] = fingerprint
        log.error("version refused", model=name, version=version, reason=reason)
        self.metrics.reloads.labels(model=name, result="failure").inc()
        result.refused.append(f"{name}:{version}: {reason}")

    def _refuse_for_now(self, name: str, version: int, reason: str, result: ReloadResult) -> None:
        """Refuses a version until a later scan: the first retry after one poll interval (at least 1 s),
        each further one after twice the last wait, at most `reload.retry_max_seconds`."""
        key = (name, version)
        floor = max(1.0, self.cfg.reload.poll_seconds)
        wait = min(self.cfg.reload.retry_max_seconds, self._retry[key][1] * 2 if key in self._retry else floor)
        self._retry[key] = (self.clock() + wait, wait)
        log.error("version refused for now", model=name, version=version, reason=reason, retry_in_s=round(wait, 1))
        self.metrics.reloads.labels(model=name, result="failure").inc()
        result.refused.append(f"{name}:{version}: {reason} (retried in {wait:.0f} s)")

    def _set_loaded(self, name: str, version: int, on: bool, mv: ModelVersion | None = None) -> None:
        if on:
            self.metrics.loaded.labels(model=name, version=str(version)).set(1)
            for component, engine, precision in mv.components() if mv is not None else ():
                self.metrics.engine_info.labels(model=name, version=str(version), component=component,
                                                engine=engine, precision=precision).set(1)
            return
        with contextlib.suppress(KeyError):
            self.metrics.loaded.remove(name, str(version))
        for labels in [s.labels for m in self.metrics.engine_info.collect() for s in m.samples]:
            if labels["model"] == name and labels["version"] == str(version):
                self.metrics.engine_info.remove(*(labels[k] for k in ("model", "version", "component", "engine",
                                                                       "precision")))


def _identity(path: Path) -> tuple:
    """What a loaded version folder is: its inode, its manifest's inode and mtime, and the manifest's hash (which
    names every file's hash). A folder replaced in place under the same number differs; () if unreadable."""
    try:
        manifest = path / MANIFEST
        st = manifest.stat()
        return path.stat().st_ino, st.st_ino, st.st_mtime_ns, hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        return ()


def _fingerprint(path: Path) -> tuple:
    """(name, size, mtime) of every file in a version folder; () when it has no manifest yet."""
    if not (path / MANIFEST).is_file():
        return ()
    try:
        return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in path.rglob("*") if p.is_file()))
    except OSError:  # a file vanished while we looked: something is still writing
        return ()
