"""Dynamic batching of user-encoder calls: concurrent history requests for one model version run as
one ONNX batch (up to max_batch_size; greedy by default: a batch is what queued while the encoder
was busy, so a lone request never waits).

What keeps it from wedging:
- Every transition of a job's future goes through `_settle`, which tolerates a future that was
  cancelled or settled meanwhile (a client that gave up, a watchdog restart): one job can never
  raise out of the worker loop.
- A job whose caller gives up (deadline, cancellation) leaves the queue at once; a job found expired
  when its batch forms is answered DEADLINE_EXCEEDED without compute.
- Admission sheds load early: a request is refused with RESOURCE_EXHAUSTED when the queue is full,
  or when the expected wait (queued work x measured time per request) exceeds what it can wait (its
  deadline, or max_queue_wait), instead of timing out after holding a slot.
- `check`/`restart` let a watchdog replace worker threads that died or stopped making progress;
  the jobs they held and the queued ones get UNAVAILABLE, the new threads start from an empty queue,
  and results of an abandoned thread that wakes up later are dropped (generation counter).

`instances` workers share the queue, each running its own batches at once (Triton's instance
count): with one worker, the next batch waits for the running one even when cores are idle.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common import logs
from server import errors

log = logs.get("server.batching")

_EWMA = 0.2  # weight of the newest batch in the time-per-request estimate


@dataclass(eq=False)
class _Slot:
    """One worker's state: what it runs now and since when (the watchdog's stall clock)."""

    thread: threading.Thread | None = None
    running: list[_Job] = field(default_factory=list)
    busy_since: float | None = None


@dataclass(eq=False)
class _Job:
    payload: Any
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


def _settle(fut: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Sets a result or exception unless the future was cancelled or settled meanwhile."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except (InvalidStateError, RuntimeError):
        pass


def _discard_if_cancelled(batcher: weakref.ref[DynamicBatcher], fut: Future) -> None:
    b = batcher()
    if b is not None and fut.cancelled():
        b._discard(fut)


class DynamicBatcher:
    """`instances` worker threads per model version; `submit` returns a Future of one output row."""

    def __init__(self, name: str, run_batch: Callable[[Sequence[Any]], np.ndarray], max_batch_size: int,
                 max_wait_ms: float, queue_size: int, metrics: Any = None, max_queue_wait_s: float = 0.0,
                 instances: int = 1) -> None:
        if instances < 1:
            raise ValueError(f"instances must be at least 1, got {instances}")
        self.name = name
        self.instances = instances
        self._run = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.max_queue_wait = max_queue_wait_s  # 0 = no cap beyond the request's own deadline
        self._metrics = metrics
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._closed = False
        self._generation = 0
        self._slots: list[_Slot] = []
        self._started: list[threading.Thread] = []  # every worker started, abandoned ones too, while alive
        self._seconds_per_request = 0.0  # EWMA; 0 until measured
        self._unavailable: str | None = None  # why requests are refused while a restart is probed
        self.restarts = 0
        self._start_workers()

    # ---- callers ----
    def submit(self, payload: Any, deadline: float | None = None, *, probe: bool = False) -> Future:
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise errors.unavailable(f"model {self.name} is being unloaded; retry")
            if self._unavailable and not probe:
                raise errors.unavailable(f"model {self.name}: its encoder worker is being restarted "
                                         f"({self._unavailable}); retry shortly")
            if len(self._queue) >= self.queue_size:
                raise errors.exhausted(
                    f"model {self.name}: encoder queue is full ({self.queue_size} pending requests); "
                    "retry later or raise --queue-size")
            expected = self._expected_wait(now)
            for limit, what in ((None if deadline is None else deadline - now, "the request's remaining deadline"),
                                (self.max_queue_wait or None, "--max-queue-wait-ms")):
                if limit is not None and expected > limit:
                    raise errors.exhausted(
                        f"model {self.name}: expected wait {expected * 1000:.0f} ms ({len(self._queue)} queued) "
                        f"exceeds {what} ({max(limit, 0) * 1000:.0f} ms); retry later or allow more time")
            job = _Job(payload, deadline)
            self._queue.append(job)
            self._cond.notify()
        # Weakly: a future outlives its request in places we do not control (callback lists are never
        # cleared), and a strong reference from it would keep a retired version's batcher and encoder alive.
        job.future.add_done_callback(functools.partial(_discard_if_cancelled, weakref.ref(self)))
        return job.future

    def _expected_wait(self, now: float) -> float:
        """Seconds until a new request's result: the rest of the running batches + everything queued
        ahead of it, shared among the workers, + itself, at the measured time per request (each
        worker's own wall time, so cores shared between workers are accounted for; 0 until measured)."""
        per = self._seconds_per_request
        running = sum(max(0.0, per * len(s.running) - (now - s.busy_since))
                      for s in self._slots if s.busy_since is not None)
        return (running + per * len(self._queue)) / self.instances + per

    def _discard(self, fut: Future) -> None:
        """A cancelled job leaves the queue at once (its slot is free for someone who still waits)."""
        with self._cond:
            job = next((j for j in self._queue if j.future is fut), None)
            if job is None:
                return
            self._queue.remove(job)

    def observe(self, seconds: float, size: int) -> None:
        """Feeds a measured batch (e.g. the warm-up) into the time-per-request estimate."""
        with self._cond:
            self._observe(seconds, size)

    def _observe(self, seconds: float, size: int) -> None:
        per = seconds / max(size, 1)
        self._seconds_per_request = per if self._seconds_per_request == 0 else (
            (1 - _EWMA) * self._seconds_per_request + _EWMA * per)

    @property
    def depth(self) -> int:
        """Requests waiting for a worker (the recsys_queue_depth metric sums it over a model's versions)."""
        with self._cond:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        """Closed and done: no request is queued or running."""
        with self._cond:
            return self._closed and not self._queue and not any(s.running for s in self._slots)

    @property
    def threads(self) -> int:
        """Worker threads this batcher started that are still alive, abandoned ones included."""
        with self._cond:
            return sum(t.is_alive() for t in self._started)

    def close(self) -> None:
        """Stops taking requests; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        for slot in list(self._slots):
            if slot.thread is not None:
                slot.thread.join(None if end is None else max(0.0, end - time.monotonic()))

    # ---- supervision ----
    def check(self, stall_seconds: float) -> str | None:
        """Why the workers need a restart ("died", "stalled": any one of them), or None while all are fine."""
        with self._cond:
            if self._closed and not self._queue:
                return None
            now = time.monotonic()
            if not self.workers_alive:
                return "died"
            if any(s.busy_since is not None and now - s.busy_since > stall_seconds for s in self._slots):
                return "stalled"
        return None

    def restart(self, reason: str) -> None:
        """Abandons the current worker threads (one may be stuck in native code: it cannot be killed,
        and whatever it returns later is dropped), fails their jobs and the queued ones with
        UNAVAILABLE, and starts new workers. Requests stay refused until `mark_available` (after a probe)."""
        with self._cond:
            self._generation += 1
            self.restarts += 1
            failed = [job for s in self._slots for job in s.running] + list(self._queue)
            self._queue.clear()
            self._unavailable = reason
            self._start_workers()
            self._cond.notify_all()  # idle abandoned workers exit now, never taking a wake-up meant for a new one
        err = errors.unavailable(f"model {self.name}: its encoder worker {reason} and was restarted; "
                                 "the request was not run, retry")
        for job in failed:
            _settle(job.future, exc=err)
        log.error("encoder worker restarted", model=self.name, reason=reason, failed_requests=len(failed))

    def mark_unavailable(self, reason: str) -> None:
        """New requests are refused with UNAVAILABLE (before a restart, so health can change first)."""
        with self._cond:
            self._unavailable = reason

    def mark_available(self) -> None:
        with self._cond:
            self._unavailable = None

    @property
    def available(self) -> bool:
        return self._unavailable is None

    @property
    def workers_alive(self) -> bool:
        return all(s.thread is not None and s.thread.is_alive() for s in self._slots)

    @property
    def running(self) -> int:
        """Jobs the workers are running now."""
        with self._cond:
            return sum(len(s.running) for s in self._slots)

    # ---- worker ----
    def _start_workers(self) -> None:
        """A fresh slot per worker: an abandoned worker keeps writing to its old slot, never to these."""
        self._slots = [_Slot() for _ in range(self.instances)]
        self._started = [t for t in self._started if t.is_alive()]
        for i, slot in enumerate(self._slots):
            slot.thread = threading.Thread(target=self._loop, args=(self._generation, slot),
                                           name=f"batcher-{self.name}-{i}", daemon=True)
            slot.thread.start()
            self._started.append(slot.thread)

    def _next_batch(self, generation: int, slot: _Slot) -> list[_Job] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closed and generation == self._generation:
                    self._cond.wait()
                if generation != self._generation or not self._queue:
                    return None  # replaced by a restart, or closed with nothing left
                if self.max_wait > 0:
                    end = time.monotonic() + self.max_wait
                    while len(self._queue) < self.max_batch_size and not self._closed:
                        remaining = end - time.monotonic()
                        if remaining <= 0 or generation != self._generation:
                            break
                        self._cond.wait(remaining)
                    if generation != self._generation:
                        return None
                if self._queue:
                    break  # else another worker took the jobs while this one waited for company
            jobs = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            slot.running, slot.busy_since = jobs, time.monotonic()
        return jobs

    def _loop(self, generation: int, slot: _Slot) -> None:
        while True:
            jobs = self._next_batch(generation, slot)
            if jobs is None:
                return
            try:
                self._process(jobs, generation)
            except Exception as exc:  # a bug here must fail this batch, never the worker
                log.exception("batch processing failed", model=self.name)
                for job in jobs:
                    _settle(job.future, exc=exc)
            # Not in a `finally`: if something worse than an Exception kills this thread, its jobs stay
            # recorded as running, and the watchdog's restart answers them.
            with self._cond:
                slot.running, slot.busy_since = [], None

    def _process(self, jobs: list[_Job], generation: int) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            try:
                if not job.future.set_running_or_notify_cancel():
                    continue  # cancelled by its caller while queued
            except RuntimeError:
                continue  # settled by a restart
            if job.deadline is not None and job.deadline <= now:
                _settle(job.future, exc=errors.deadline(
                    f"model {self.name}: the request's deadline passed while it waited for the encoder"))
            else:
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
            if len(out) != len(live):
                raise RuntimeError(f"encoder returned {len(out)} rows for a batch of {len(live)}")
        except Exception as exc:
            log.exception("encoder batch failed", model=self.name, batch=len(live))
            for job in live:
                _settle(job.future, exc=exc)
            return
        seconds = time.perf_counter() - t0
        with self._cond:
            if generation != self._generation:
                return  # abandoned by a restart: its jobs were already answered UNAVAILABLE
            self._observe(seconds, len(live))
        if self._metrics is not None:
            self._metrics.stage.labels(stage="encode", model=self.name).observe(seconds)
        for i, job in enumerate(live):
            _settle(job.future, out[i])
