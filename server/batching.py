"""Dynamic batching of user-encoder calls: concurrent history requests for one model version are
run as one ONNX batch (up to max_batch_size, waiting at most max_wait_ms for company).

The queue is bounded so overload is refused at once (RESOURCE_EXHAUSTED) instead of growing latency
without limit, and requests whose deadline has already passed are dropped before any compute.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrec import logs
from server import errors

log = logs.get("server.batching")


@dataclass
class _Job:
    payload: Any
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """One worker thread per model version; `submit` returns a Future of one output row."""

    def __init__(self, name: str, run_batch: Callable[[Sequence[Any]], np.ndarray], max_batch_size: int,
                 max_wait_ms: float, queue_size: int, metrics: Any = None) -> None:
        self.name = name
        self._run = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._metrics = metrics
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, payload: Any, deadline: float | None = None) -> Future:
        if self._closed:
            raise errors.unavailable(f"model {self.name} is being unloaded; retry")
        job = _Job(payload, deadline)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise errors.exhausted(
                f"model {self.name}: encoder queue is full ({self._queue.maxsize} pending requests); "
                "retry later or raise --queue-size") from None
        self._gauge()
        return job.future

    def close(self) -> None:
        """Finishes what is queued, then stops the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(model=self.name).set(self._queue.qsize())

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, stop = [first], False
        end = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch_size:
            remaining = end - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self._gauge()
            self._process(jobs)
            if stop:
                # Drain anything submitted before close() was called.
                rest: list[_Job] = []
                while True:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        rest.append(job)
                for i in range(0, len(rest), self.max_batch_size):
                    self._process(rest[i:i + self.max_batch_size])
                return

    def _process(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.deadline is not None and job.deadline <= now:
                job.future.set_exception(errors.deadline(
                    f"model {self.name}: the request's deadline passed while it waited for the encoder"))
            elif job.future.set_running_or_notify_cancel():
                live.append(job)
        if not live:
            return
        if self._metrics is not None:
            self._metrics.batch_size.labels(model=self.name).observe(len(live))
            for job in live:
                self._metrics.stage.labels(stage="queue", model=self.name).observe(now - job.enqueued)
        t0 = time.perf_counter()
        try:
            out = self._run([job.payload for job in live])
        except Exception as exc:
            log.exception("encoder batch failed", model=self.name, batch=len(live))
            for job in live:
                job.future.set_exception(exc)
            return
        if self._metrics is not None:
            self._metrics.stage.labels(stage="encode", model=self.name).observe(time.perf_counter() - t0)
        for i, job in enumerate(live):
            job.future.set_result(out[i])
