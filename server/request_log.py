"""An optional log of served requests, as JSON lines, for retraining and offline evaluation (what
was asked, what was shown). Off by default.

Sampled (`request_log_sample`), rotated by size (`request_log_max_mb`, `request_log_backups`) with the
standard library's RotatingFileHandler, and written by a background thread through a queue, so a slow
disk never blocks the event loop. Privacy: user ids are logged as a salted SHA-256 prefix by default
(`request_log_user_ids = hash`), or not at all (`omit`); `plain` logs them as sent. Histories are
logged by length only; the returned item ids and scores are logged (they are the catalogue's ids).
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import queue
import random
from pathlib import Path
from typing import Any

USER_ID_MODES = ("hash", "plain", "omit")


class RequestLog:
    def __init__(self, path: Path, sample: float = 1.0, max_mb: float = 100.0, backups: int = 5,
                 user_ids: str = "hash", salt: str = "", seed: int | None = None) -> None:
        if user_ids not in USER_ID_MODES:
            raise ValueError(f"request_log_user_ids {user_ids!r}; accepted: {', '.join(USER_ID_MODES)}")
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"request_log_sample must be in [0, 1], got {sample}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.sample = sample
        self.user_ids = user_ids
        self._salt = salt.encode()
        self._rng = random.Random(seed)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups,
                                                       encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._listener.start()

    def user(self, user_id: str) -> str | None:
        if not user_id or self.user_ids == "omit":
            return None
        if self.user_ids == "plain":
            return user_id
        return hashlib.sha256(self._salt + user_id.encode()).hexdigest()[:16]

    def record(self, entry: dict[str, Any]) -> bool:
        """Queues one entry if it is sampled; returns whether it was."""
        if self.sample < 1.0 and self._rng.random() >= self.sample:
            return False
        msg = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        self._queue.put(logging.LogRecord("recsys.requests", logging.INFO, "", 0, msg, None, None))
        return True

    def close(self) -> None:
        """Writes what is queued, then closes the file."""
        self._listener.stop()
        self._handler.close()
