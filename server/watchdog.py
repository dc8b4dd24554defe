"""Supervises the encoder workers of every loaded version, and of swapped-out versions still finishing
requests (Registry.draining: their requests wait on a worker like any other).

A worker thread that died, or has been inside one batch for longer than `encoder_stall_seconds`,
is replaced (DynamicBatcher.restart: its requests and the queued ones get UNAVAILABLE at once), the
restart is counted, and the model reports NOT_SERVING on grpc.health until a probe request has
gone through the new worker. A stuck thread cannot be killed from Python; it is abandoned, and
whatever it returns later is dropped.

Why back-off and a limit: an encoder that hangs for good (a wedged driver, a dead NFS mount under its
files) would take each new worker too, and one abandoned thread per restart added up to ~120 threads an
hour at the defaults while the pod stayed Ready. So a restart whose probe did not succeed doubles the wait
before the next (`restart_backoff_seconds` .. `restart_backoff_max_seconds`), and after
`max_failed_restarts` of them in a row the watchdog stops restarting and `healthy` turns False: /healthz
answers 503 and the orchestrator replaces the pod. Threads stay bounded by instances x (limit + 1).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from common import logs
from server.batching import DynamicBatcher
from server.model_version import ModelVersion
from server.periodic import Periodic

log = logs.get("server.watchdog")


@dataclass(eq=False)
class _Probe:
    name: str
    payload: Any
    future: Future


@dataclass(eq=False)
class _Backoff:
    failed: int = 0  # restarts in a row whose probe has not succeeded
    not_before: float = 0.0  # monotonic time before which no new restart happens
    gave_up: bool = False


class Watchdog:
    def __init__(self, loaded: Callable[[], dict[str, dict[int, ModelVersion]]], metrics: Any,
                 on_health: Callable[[str], None], interval: float, stall_seconds: float,
                 draining: Callable[[], list[ModelVersion]] | None = None, backoff_seconds: float = 1.0,
                 backoff_max_seconds: float = 60.0, max_failed_restarts: int = 5) -> None:
        self._loaded = loaded
        self._draining = draining or (lambda: [])
        self._metrics = metrics
        self._on_health = on_health
        self.interval = interval
        self.stall_seconds = stall_seconds
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_failed_restarts = max_failed_restarts
        # Weak keys: neither a pending probe nor the back-off state keeps a retired batcher (and the encoder
        # it holds) alive once its version is gone.
        self._probes: weakref.WeakKeyDictionary[DynamicBatcher, _Probe] = weakref.WeakKeyDictionary()
        self._backoff: weakref.WeakKeyDictionary[DynamicBatcher, _Backoff] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._given_up: set[str] = set()  # "model vN" whose encoder the watchdog no longer restarts
        self._task = Periodic("watchdog", interval, self.check_once, log)

    def start(self) -> None:
        self._task.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._task.stop(timeout)

    @property
    def healthy(self) -> bool:
        """False once some encoder failed max_failed_restarts restarts in a row: /healthz turns 503."""
        with self._lock:
            return not self._given_up

    @property
    def given_up(self) -> list[str]:
        with self._lock:
            return sorted(self._given_up)

    def check_once(self) -> None:
        changed: set[str] = set()
        now = time.monotonic()
        loaded = [(name, mv, True) for name, versions in self._loaded().items() for mv in versions.values()]
        draining = [(mv.name, mv, False) for mv in self._draining()]
        for name, mv, serving in loaded + draining:
            b = mv.batcher
            if b is None:
                continue
            reason = b.check(self.stall_seconds)
            if reason is None:
                continue
            state = self._backoff.setdefault(b, _Backoff())
            if state.gave_up or now < state.not_before:
                continue
            if b in self._probes:  # restarted before, and it broke again before its probe succeeded
                del self._probes[b]
                state.failed += 1
            if self.max_failed_restarts and state.failed >= self.max_failed_restarts:
                self._give_up(name, mv, b, state, reason)
                continue
            self._metrics.worker_restarts.labels(model=name, reason=reason).inc()
            b.mark_unavailable(reason)
            if serving:
                self._on_health(name)  # NOT_SERVING before any client hears of the restart
            b.restart(reason)
            state.not_before = now + min(self.backoff_seconds * 2 ** state.failed, self.backoff_max_seconds)
            self._probe(name, b, mv.probe_payload())
        for b, probe in list(self._probes.items()):
            if not probe.future.done():
                if b.closed:  # retired meanwhile: nobody needs the answer
                    probe.future.cancel()
                    self._probes.pop(b, None)
                continue
            self._probes.pop(b, None)
            if probe.future.cancelled():
                continue
            if probe.future.exception() is None:
                b.mark_available()
                self._backoff.pop(b, None)
                changed.add(probe.name)
                log.info("encoder worker serving again", model=probe.name, restarts=b.restarts)
            elif b.check(self.stall_seconds) is None:  # failed without a stall (the encoder raises): again
                self._probe(probe.name, b, probe.payload)
        for name in changed:
            self._on_health(name)

    def _give_up(self, name: str, mv: ModelVersion, b: DynamicBatcher, state: _Backoff, reason: str) -> None:
        state.gave_up = True
        with self._lock:
            self._given_up.add(f"{name} v{mv.version}")
        b.mark_unavailable(f"{reason}, and {state.failed} restarts did not recover it")
        self._metrics.watchdog_gave_up.labels(model=name).set(1)
        log.error("encoder not restarted any more: it did not recover after repeated restarts; /healthz now "
                  "fails so that the orchestrator replaces this process", model=name, version=mv.version,
                  reason=reason, failed_restarts=state.failed, threads=b.threads)

    def _probe(self, name: str, b: DynamicBatcher, payload: Any) -> None:
        try:
            self._probes[b] = _Probe(name, payload, b.submit(payload, probe=True))
        except Exception:  # closed meanwhile (unloaded): nothing to probe
            log.warning("restarted worker not probed", model=name, exc_info=True)
