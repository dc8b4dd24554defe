"""Thread pools that keep request-sized work off the event loop, each with a bounded backlog.

Why two pools: reads (id lookups, exclusions, index searches) and admin calls (item encoding, journal
fsync, reloads) have unrelated costs; in one pool, six UpsertItems on a 2 s fsync held every thread
and known-user requests on another model timed out behind them. Why bounded: a ThreadPoolExecutor's
queue is unbounded, so a burst would wait there, holding its memory, until its deadline; refusing at
once (RESOURCE_EXHAUSTED) tells the client to back off while the server still has room.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from server import errors

T = TypeVar("T")


class BoundedPool:
    """A ThreadPoolExecutor that refuses work beyond `threads + queue_size` jobs in progress or waiting."""

    def __init__(self, name: str, threads: int, queue_size: int, flag: str) -> None:
        self.name = name
        self.threads = threads
        self.limit = threads + queue_size
        self._flag = flag  # the setting to raise, named in the refusal
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0
        # Every thread up front: the first burst pays no thread start, and the count never grows later
        # (tests and the resilience bench read a growing thread count as a leak).
        barrier = threading.Barrier(threads)
        for _ in range(threads):  # each waits for all the others, so each submit starts a new thread
            self._executor.submit(barrier.wait, 10.0)

    @property
    def pending(self) -> int:
        """Jobs running or waiting for a thread."""
        with self._lock:
            return self._pending

    def submit(self, fn: Callable[[], T], admit: bool = True) -> Future[T]:
        """Runs fn in the pool with the caller's context variables (the request id follows into log lines).
        admit=False for the later steps of a request already admitted (its search after the encoder):
        refusing those would throw finished encoder work away, and they are bounded by the encoder queues."""
        with self._lock:
            if admit and self._pending >= self.limit:
                raise errors.exhausted(f"the server's {self.name} pool is saturated ({self._pending} calls running "
                                       f"or waiting); retry with back-off, or raise {self._flag}")
            self._pending += 1
        ctx = contextvars.copy_context()
        try:
            fut = self._executor.submit(ctx.run, fn)
        except BaseException:
            self._done(None)
            raise
        fut.add_done_callback(self._done)  # also when cancelled before it ran
        return fut

    def _done(self, _: Future | None) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[[], T], on_abandon: Callable[[T], Any] | None = None,
                  admit: bool = True) -> T:
        """Awaits fn in the pool. If the caller is cancelled (client gone, deadline) while fn already runs,
        `on_abandon` gets fn's result once it is there, to undo what nobody will use (queued encoder jobs)."""
        fut = self.submit(fn, admit)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            if on_abandon is not None:
                fut.add_done_callback(lambda f: _abandon(f, on_abandon))
            raise

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _abandon(fut: Future, on_abandon: Callable[[Any], Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        on_abandon(fut.result())


class ReadPriority:
    """Single requests first, batches in the gaps.

    Why: every Python step holds the interpreter lock, and a RecommendBatch is hundreds of such steps (id
    lookups, rules, response building) back to back; a single request arriving meanwhile waits for the lock
    at each of its own steps, up to the switch interval each time. A batch is bulk work whose caller reads
    throughput, a single request is latency, so between two requests of a batch its thread steps aside while
    any single request is in flight, for at most `max_wait_ms` per step: batches always progress, at worst
    `max_wait_ms` x their size slower under a steady stream of single requests. 0 turns it off.
    """

    def __init__(self, max_wait_ms: float) -> None:
        self.max_wait = max_wait_ms / 1000.0
        self._active = 0
        self._cond = threading.Condition()

    @property
    def active(self) -> int:
        return self._active

    def begin(self) -> None:
        with self._cond:
            self._active += 1

    def end(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active:
                self._cond.notify_all()

    def step_aside(self) -> None:
        """Returns at once with no single request in flight, else when none is or after max_wait."""
        if self._active and self.max_wait > 0:  # an unlocked read: a stale answer costs one step, no more
            with self._cond:
                self._cond.wait_for(lambda: not self._active, timeout=self.max_wait)
