"""An optional log of served requests, as JSON lines, for retraining and offline evaluation (what
was asked, what was shown). Off by default.

Sampled (`request_log_sample`), rotated by size (`request_log_max_mb`, `request_log_backups`) with the
standard library's RotatingFileHandler, and written by a background thread through a bounded queue
(`request_log_queue`): a slow disk never blocks the event loop, and when it falls that far behind, entries
are dropped and counted (`dropped`, recsys_request_log_dropped_total) instead of piling up in memory
(19,964 entries were once queued behind a slow disk).

Privacy (docs/serving.md#request-log-and-privacy): user ids are logged as a keyed hash by default
(`request_log_user_ids = hash`), or not at all (`omit`); `plain` logs them as sent. An unsalted hash of a
user id is no protection (ids are few and guessable: anyone can hash "196" and look for it), so `hash`
always has a salt: the configured one, the salt file's, or a random one generated once and kept beside
the log in `.<log name>.salt` (mode 0600), so that hashes stay stable across restarts. Histories are logged by
length only; the returned item ids and scores are logged (they are the catalogue's ids).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import queue
import random
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

USER_ID_MODES = ("hash", "plain", "omit")


class _Listener(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        # The stop marker must wait for room in a full queue (the base class would raise queue.Full).
        self.queue.put(self._sentinel)


def salt_path(log_path: Path) -> Path:
    """`.<log name>.salt` in the log's folder: beside the log, but never matched by `<log name>*`, the glob
    that collects a log and its rotated files."""
    return log_path.parent / f".{log_path.name}.salt"


def load_salt(log_path: Path, salt: str = "", salt_file: Path | None = None) -> bytes:
    """The salt of the hashed user ids: `salt`, else `salt_file`'s content, else the one kept beside the
    log (generated on first use). Refuses an empty one: it would hash without a key."""
    if salt:
        return salt.encode()
    if salt_file is not None:
        value = Path(salt_file).read_text().strip()
        if not value:
            raise ValueError(f"request-log salt file {salt_file} is empty; put a long random secret in it")
        return value.encode()
    path = salt_path(log_path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if not value:
            raise ValueError(f"request-log salt file {path} is empty; delete it to have a new salt generated "
                             "(hashes in older logs then no longer match new ones)") from None
        return value.encode()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path.read_text().strip().encode()


class RequestLog:
    def __init__(self, path: Path, sample: float = 1.0, max_mb: float = 100.0, backups: int = 5,
                 user_ids: str = "hash", salt: str = "", seed: int | None = None, salt_file: Path | None = None,
                 max_queue: int = 10000, on_drop: Callable[[], Any] | None = None) -> None:
        if user_ids not in USER_ID_MODES:
            raise ValueError(f"request_log_user_ids {user_ids!r}; accepted: {', '.join(USER_ID_MODES)}")
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"request_log_sample must be in [0, 1], got {sample}")
        if max_queue < 1:
            raise ValueError(f"request_log_queue must be >= 1, got {max_queue}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.sample = sample
        self.user_ids = user_ids
        self._salt = load_salt(Path(path), salt, salt_file) if user_ids == "hash" else b""
        self._rng = random.Random(seed)
        self._on_drop = on_drop
        self._drop_lock = threading.Lock()
        self.dropped = 0
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups,
                                                       encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=max_queue)
        self._listener = _Listener(self._queue, handler)
        self._listener.start()

    def user(self, user_id: str) -> str | None:
        if not user_id or self.user_ids == "omit":
            return None
        if self.user_ids == "plain":
            return user_id
        return hmac.new(self._salt, user_id.encode(), hashlib.sha256).hexdigest()[:16]

    def record(self, entry: dict[str, Any]) -> bool:
        """Queues one entry if it is sampled and the queue has room; returns whether it was queued."""
        if self.sample < 1.0 and self._rng.random() >= self.sample:
            return False
        msg = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        try:
            self._queue.put_nowait(logging.LogRecord("recsys.requests", logging.INFO, "", 0, msg, None, None))
        except queue.Full:
            with self._drop_lock:
                self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return False
        return True

    def close(self) -> None:
        """Writes what is queued, then closes the file."""
        self._listener.stop()
        self._handler.close()
