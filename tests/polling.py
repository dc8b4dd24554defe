"""Waiting for what another thread or process does: poll with a deadline, never assert once after a sleep.

A fixed sleep encodes how fast the machine is; under a loaded CI runner the other side is simply later,
and the assertion fails although nothing is wrong. These helpers return as soon as the condition holds
and fail with a message only when it did not hold for a generous deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0


def eventually(predicate: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.01,
               ignore: tuple[type[BaseException], ...] = ()) -> bool:
    """True as soon as predicate() is truthy; False if it never was within timeout (checked once more at the
    end). Exceptions of the `ignore` types count as "not yet"."""
    end = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except ignore:
            pass
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def wait_for(predicate: Callable[[], object], what: str = "condition", timeout: float = DEFAULT_TIMEOUT,
             interval: float = 0.01, ignore: tuple[type[BaseException], ...] = ()) -> None:
    """Asserts that predicate() becomes truthy within timeout."""
    assert eventually(predicate, timeout, interval, ignore), f"timed out after {timeout:.0f} s waiting for {what}"


def until_value(fn: Callable[[], T], accept: Callable[[T], bool], what: str = "value",
                timeout: float = DEFAULT_TIMEOUT, interval: float = 0.01) -> T:
    """fn()'s first value that `accept` takes; fails with the last value seen."""
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if accept(value):
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
