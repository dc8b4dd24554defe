"""Which `llmrec` command line is running, for reports that record the command that made them.

Set per dispatch by the CLI, so a report written by a subcommand that the demo calls records that
subcommand, not `llmrec demo`. It lives down here so that the models' reports can read it without
importing the CLI on top of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import shlex
from collections.abc import Iterator

_current: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("llmrec_command", default=None)


def current_command() -> str | None:
    argv = _current.get()
    return None if argv is None else " ".join(shlex.quote(a) for a in ["llmrec", *argv])


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[None]:
    token = _current.set(argv)
    try:
        yield
    finally:
        _current.reset(token)
