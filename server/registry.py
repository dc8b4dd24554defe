"""Which model versions are served. Swaps are reference replacements under one lock; a request
takes a counted reference to its version, so a swapped-out version finishes its in-flight work.

Retired versions that still finish requests are listed by `draining()`, weakly (a closed version is
freed as before): the watchdog supervises their encoder workers too, since a request held by a
swapped-out version waits on its worker like any other.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from server import errors
from server.model_version import ModelVersion


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._default: dict[str, int] = {}
        self.ready = False  # set after the first repository scan
        self._retired: weakref.WeakSet[ModelVersion] = weakref.WeakSet()

    @contextmanager
    def use(self, name: str, version: int = 0) -> Iterator[ModelVersion]:
        """A counted reference for the block: the version cannot close under it, even if swapped out."""
        mv = self.acquire(name, version)
        try:
            yield mv
        finally:
            mv.release()

    def acquire(self, name: str, version: int) -> ModelVersion:
        """A counted reference; the caller must call mv.release() (or use `use`)."""
        with self._lock:
            versions = self._versions.get(name)
            if not versions:
                if not self.ready:
                    raise errors.unavailable(f"model {name!r} is not loaded yet: the server is still loading the "
                                             "repository; retry shortly")
                known = ", ".join(sorted(self._versions)) or "none"
                raise errors.not_found(f"unknown model {name!r}; loaded models: {known}")
            if version < 0:
                raise errors.invalid(f"version must be >= 0 (0 = newest), got {version}")
            v = version or self._default[name]
            mv = versions.get(v)
            if mv is None:
                raise errors.not_found(f"model {name!r} has no loaded version {version}; loaded versions: "
                                       f"{', '.join(str(x) for x in sorted(versions))} (0 = newest)")
            mv.acquire()
            return mv

    def install(self, mv: ModelVersion, make_default: bool) -> ModelVersion | None:
        """Adds mv; returns the version it replaced under the same number, if any (to be retired)."""
        with self._lock:
            versions = dict(self._versions.get(mv.name, {}))
            old = versions.get(mv.version)
            versions[mv.version] = mv
            self._versions = {**self._versions, mv.name: versions}
            if make_default or mv.name not in self._default:
                self._default[mv.name] = mv.version
        if old is not None and old is not mv:
            self._retire(old)
        return old

    def set_default(self, name: str, version: int) -> None:
        with self._lock:
            if version in self._versions.get(name, {}):
                self._default[name] = version

    def remove(self, name: str, version: int) -> None:
        with self._lock:
            versions = dict(self._versions.get(name, {}))
            mv = versions.pop(version, None)
            if versions:
                self._versions = {**self._versions, name: versions}
                if self._default.get(name) == version:
                    self._default[name] = max(versions)
            else:
                self._versions = {k: v for k, v in self._versions.items() if k != name}
                self._default.pop(name, None)
        if mv is not None:
            self._retire(mv)

    def _retire(self, mv: ModelVersion) -> None:
        with self._lock:
            self._retired.add(mv)
        mv.retire()

    def draining(self) -> list[ModelVersion]:
        """Retired versions whose encoder still has work: requests that took them before the swap."""
        with self._lock:
            retired = list(self._retired)
        return [mv for mv in retired if mv.batcher is not None and not mv.batcher.closed]

    def loaded(self) -> dict[str, dict[int, ModelVersion]]:
        with self._lock:
            return {k: dict(v) for k, v in self._versions.items()}

    def default(self, name: str) -> int | None:
        with self._lock:
            return self._default.get(name)

    def close_all(self) -> None:
        for name, versions in self.loaded().items():
            for v in versions:
                self.remove(name, v)
