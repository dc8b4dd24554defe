"""Supervises the encoder workers of every loaded version.

A worker thread that died, or has been inside one batch for longer than `encoder_stall_seconds`,
is replaced (DynamicBatcher.restart: its requests and the queued ones get UNAVAILABLE at once), the
restart is counted, and the model reports NOT_SERVING on grpc.health until a probe request has
gone through the new worker. A stuck thread cannot be killed from Python; it is abandoned, and
whatever it returns later is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from llmrec import logs
from server.batching import DynamicBatcher
from server.models_runtime import ModelVersion
from server.periodic import Periodic

log = logs.get("server.watchdog")


class Watchdog:
    def __init__(self, loaded: Callable[[], dict[str, dict[int, ModelVersion]]], metrics: Any,
                 on_health: Callable[[str], None], interval: float, stall_seconds: float) -> None:
        self._loaded = loaded
        self._metrics = metrics
        self._on_health = on_health
        self.interval = interval
        self.stall_seconds = stall_seconds
        self._probes: dict[int, tuple[str, DynamicBatcher, Any, Future]] = {}  # id(batcher) -> probe
        self._task = Periodic("watchdog", interval, self.check_once, log)

    def start(self) -> None:
        self._task.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._task.stop(timeout)

    def check_once(self) -> None:
        changed: set[str] = set()
        for name, versions in self._loaded().items():
            for mv in versions.values():
                b = mv.batcher
                if b is None:
                    continue
                reason = b.check(self.stall_seconds)
                if reason is None:
                    continue
                self._metrics.worker_restarts.labels(model=name, reason=reason).inc()
                b.mark_unavailable(reason)
                self._on_health(name)  # NOT_SERVING before any client hears of the restart
                b.restart(reason)
                self._probe(name, b, mv.probe_payload())
        for name, b, payload, fut in list(self._probes.values()):
            if not fut.done():
                continue
            del self._probes[id(b)]
            if fut.exception() is None:
                b.mark_available()
                changed.add(name)
                log.info("encoder worker serving again", model=name, restarts=b.restarts)
            elif b.check(self.stall_seconds) is None:  # failed without a stall (the encoder raises): again
                self._probe(name, b, payload)
        for name in changed:
            self._on_health(name)

    def _probe(self, name: str, b: DynamicBatcher, payload: Any) -> None:
        try:
            self._probes[id(b)] = (name, b, payload, b.submit(payload, probe=True))
        except Exception:  # closed meanwhile (unloaded): nothing to probe
            log.warning("restarted worker not probed", model=name, exc_info=True)
