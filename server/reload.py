"""Hot reload: scan the repository (every poll_seconds and on ReloadModels), load + warm up each new
complete version off the request path, then swap it in. A version that fails (hash, ONNX, warm-up)
is refused, logged and counted, and is not retried until its manifest changes; the old version keeps
serving. Pinned versions (name:version) stay loaded beside the newest."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec import logs
from server import repository
from server.config import ServeConfig
from server.models_runtime import ModelVersion
from server.registry import Registry

log = logs.get("server.reload")


@dataclass
class ReloadResult:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)


class Reloader:
    def __init__(self, cfg: ServeConfig, registry: Registry, metrics: Any,
                 on_health: Callable[[str, bool], None]) -> None:
        self.cfg = cfg
        self.registry = registry
        self.metrics = metrics
        self.on_health = on_health  # (service name, serving?)
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, int], float] = {}  # -> manifest mtime when refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Initial load, then polling, on a background thread (health says when it is done)."""
        self._thread = threading.Thread(target=self._run, name="reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            self.reload_now()
        except Exception:
            log.exception("initial repository scan failed")
        self.registry.ready = True
        while self.cfg.poll_seconds > 0 and not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.reload_now()
            except Exception:
                log.exception("repository scan failed")

    def _try_load(self, name: str, version: int, pinned: bool, result: ReloadResult) -> ModelVersion | None:
        path = Path(self.cfg.repository) / name / str(version)
        manifest = path / "manifest.json"
        try:
            mtime = manifest.stat().st_mtime
        except OSError:
            return None
        if self._refused.get((name, version)) == mtime:
            return None
        try:
            files = repository.load_files(path, self.cfg.ort_threads, self.cfg.ort_providers)
            mv = ModelVersion(name, files, self.cfg, self.metrics, pinned=pinned)
            try:
                mv.warm_up(self.cfg.warmup_users)
            except Exception:
                mv.retire()
                raise
        except Exception as exc:
            self._refused[(name, version)] = mtime
            reason = str(exc) if isinstance(exc, repository.VersionError) else f"{type(exc).__name__}: {exc}"
            log.error("version refused", model=name, version=version, reason=reason)
            self.metrics.reloads.labels(model=name, result="failure").inc()
            result.refused.append(f"{name}:{version}: {reason}")
            return None
        self._refused.pop((name, version), None)
        self.metrics.reloads.labels(model=name, result="success").inc()
        log.info("version loaded", model=name, version=version, kind=mv.kind, items=len(mv.catalogue.item_ids),
                 users=len(mv.user_ids), pinned=pinned)
        result.loaded.append(f"{name}:{version}")
        return mv

    def reload_now(self) -> ReloadResult:
        with self._lock:
            return self._scan()

    def _scan(self) -> ReloadResult:
        result = ReloadResult()
        found = repository.scan(Path(self.cfg.repository))
        pins = self.cfg.pinned()
        loaded = self.registry.loaded()
        for name, versions in found.items():
            have = loaded.get(name, {})
            default = None
            for v in sorted(versions, reverse=True):
                if v in have:
                    default = v
                    break
                mv = self._try_load(name, v, v in pins.get(name, set()), result)
                if mv is not None:
                    self.registry.install(mv, make_default=True)
                    self._set_loaded(name, v, True)
                    default = v
                    break
            keep = {default} if default is not None else set()
            for v in sorted(pins.get(name, set()) & set(versions)):
                if v not in have and v != default:
                    mv = self._try_load(name, v, True, result)
                    if mv is not None:
                        self.registry.install(mv, make_default=False)
                        self._set_loaded(name, v, True)
                keep.add(v)
            if default is not None:
                self.registry.set_default(name, default)
            for v in list(self.registry.loaded().get(name, {})):
                if v not in keep or v not in versions:
                    self.registry.remove(name, v)
                    self._set_loaded(name, v, False)
                    result.unloaded.append(f"{name}:{v}")
                    log.info("version unloaded", model=name, version=v)
            self.on_health(name, bool(self.registry.loaded().get(name)))
        for name in set(loaded) - set(found):  # model folder removed
            for v in loaded[name]:
                self.registry.remove(name, v)
                self._set_loaded(name, v, False)
                result.unloaded.append(f"{name}:{v}")
            self.on_health(name, False)
        now = self.registry.loaded()
        result.serving = [f"{n}:{v}" for n in sorted(now) for v in sorted(now[n])]
        self.on_health("", bool(now))
        return result

    def _set_loaded(self, name: str, version: int, on: bool) -> None:
        if on:
            self.metrics.loaded.labels(model=name, version=str(version)).set(1)
        else:
            with contextlib.suppress(KeyError):
                self.metrics.loaded.remove(name, str(version))
