"""Structured logging: key=value lines on a terminal, JSON lines when RECSYS_LOG_JSON=1 (for servers)."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the moment of writing: loggers are cached, and test runners
    swap sys.stderr per test, so a stream bound at setup time would be closed later."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# Libraries whose INFO lines are noise to a user: FAISS's loader reports every CPU-specific build it
# tries ("Could not load library with AVX512 support ...") before the one that works, at every import.
QUIET_LOGGERS = ("faiss.loader",)


def quiet_libraries() -> None:
    """Keeps the noisy libraries' loggers to warnings and above, whatever the root level is, and turns off
    Hugging Face's own progress bars ("Loading weights: 100%| 272/272" at every model load, several per
    command): our commands show their own progress. HF_HUB_DISABLE_PROGRESS_BARS=0 brings them back."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is first imported
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and "transformers" in sys.modules:
        importlib.import_module("transformers.utils.logging").disable_progress_bar()


def setup(level: str | None = None, json_lines: bool | None = None) -> None:
    quiet_libraries()
    level = (level or os.environ.get("RECSYS_LOG_LEVEL", "INFO")).upper()
    if json_lines is None:
        json_lines = os.environ.get("RECSYS_LOG_JSON", "0") == "1"
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    """A logger; configures the defaults first if nobody has, so nothing is ever printed to stdout."""
    if not structlog.is_configured():
        setup()
    return structlog.get_logger(name)
