"""A background task run every few seconds (journal tail, watchdog): on a daemon thread, an exception
is logged and the next round still runs, and stopping never waits longer than it is told to."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Periodic:
    def __init__(self, name: str, interval: float, fn: Callable[[], None], log: Any) -> None:
        self.name, self.interval, self._fn, self._log = name, interval, fn, log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Does nothing when the interval is 0 (the task is off)."""
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._fn()
            except Exception:
                self._log.exception(f"{self.name} failed")
