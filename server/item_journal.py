"""Keeps every loaded version in step with its model's item journal (repository/journal.py).

- UpsertItems / DeleteItems append to the journal (fsynced, under the journal's file lock), then
  apply what other replicas appended meanwhile and their own records to every loaded version of
  the model, and only then answer OK.
- A tail thread reads what other replicas appended, every `journal_poll_seconds`; a request that
  carries a consistency token (`min_journal_seq`) makes its replica read at once (`at_least`).
- A new version is brought up to date before it is swapped in, under the same lock as appends, so
  no acknowledged change is missing from it when it starts answering.

One lock per model orders all of this. What a version holds is a function of the journal's per-item
state (last writer wins by sequence number), never of how the records were split between reads, so
replicas converge on the same catalogue. When the journal no longer continues what was read (it
shrank, was restored or compacted: repository/journal.py says so), this replica starts a new epoch:
every version is rebuilt from its exported catalogue and the whole journal, nothing is skipped.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import logs
from repository import journal
from repository.journal import Cursor, ItemState, JournalRecord
from server import errors
from server.metrics import rebuild_reason
from server.model_version import ModelVersion
from server.periodic import Periodic

log = logs.get("server.journal")
CATCH_UP_POLL = 0.02  # seconds between reads while a request waits for a sequence number


class JournalApplyError(Exception):
    """Changes were journalled (durable, and retried at the next poll) but the version that answers the admin
    call could not apply them: the caller must not report them as done here."""

    def __init__(self, name: str, version: int, seq: int, cause: BaseException) -> None:
        super().__init__(f"{name} v{version}: journalled through seq {seq} but not applied here "
                         f"({type(cause).__name__}: {cause})")
        self.seq = seq


class _FileLog(journal.FileLog):
    """The file backend, calling repository.journal at call time (tests replace journal.append)."""

    def append(self, cursor: Cursor, changes: Sequence[journal.ItemChange], high_water: int = 0,
               check: Callable[[], None] | None = None) -> tuple[journal.ReadResult, list[JournalRecord]]:
        return journal.append(self.path, cursor, changes, high_water=high_water, check=check)


class ModelJournal:
    """One model's journal as this process has read it."""

    def __init__(self, path: Path, name: str, metrics: Any, log_: journal.ChangeLog | None = None) -> None:
        self.path = path
        self.name = name
        self.log: journal.ChangeLog = log_ or _FileLog(path)
        self.lock = threading.RLock()
        self.cursor = Cursor()
        self.state: dict[str, ItemState] = {}  # item id -> state, in order of last sequence number
        self.high_water = 0  # the largest sequence number ever seen or folded: new records get more
        self.epoch = 0  # grows when the journal stopped continuing what was read: versions are rebuilt
        self._epochs: weakref.WeakKeyDictionary[ModelVersion, int] = weakref.WeakKeyDictionary()
        self._metrics = metrics

    @property
    def last_seq(self) -> int:
        return self.cursor.last_seq

    @property
    def offset(self) -> int:
        return self.cursor.offset

    def _absorb(self, result: journal.ReadResult) -> None:
        for problem in result.corrupt:
            log.error("item journal record skipped", model=self.name, problem=problem)
            self._metrics.journal_corrupt.labels(model=self.name).inc()
        if result.rewound:
            log.error("item journal does not continue what was read: rebuilding every version of the model "
                      "from its export and the whole journal", model=self.name, path=str(self.path),
                      reason=result.rewound, read_seq=self.cursor.last_seq)
            self.state = {}
            self.epoch += 1
            self._metrics.journal_rebuilds.labels(model=self.name, reason=rebuild_reason(self.cursor, result.cursor)
                                                  ).inc()
        journal.absorb(self.state, result.records)
        self.cursor = result.cursor
        self.high_water = max(self.high_water, self.cursor.last_seq, result.high_water)
        self._metrics.journal_seq.labels(model=self.name).set(self.last_seq)

    def read_new(self) -> None:
        """Reads what was appended since the last read (a stat when nothing was)."""
        seen = _stamp(self.path) if isinstance(self.log, journal.FileLog) else None
        if self.cursor.offset and seen is not None and seen == self._seen:
            return
        self._absorb(self.log.read_new(self.cursor))
        self._seen = seen

    _seen: tuple[int, int, int] | None = None

    def fresh(self, mv: ModelVersion) -> bool:
        """Whether mv must be (re)built from its export: never synced, or synced in an earlier epoch."""
        return self._epochs.get(mv) != self.epoch

    def pending(self, mv: ModelVersion, fresh: bool) -> list[ItemState]:
        """States mv does not hold yet, in sequence order: for a fresh version, what its fold left hidden and
        every item touched after the fold; otherwise every item touched after what it applied."""
        if not fresh:
            out = []
            for st in reversed(self.state.values()):
                if st.seq <= mv.applied_seq:
                    break
                out.append(st)
            return out[::-1]
        fold = mv.manifest.journal
        hidden = getattr(fold, "hidden", None) if fold is not None else None
        items = [ItemState(x, 0, True) for x in hidden or ()]
        floor = mv.folded_through
        # A version folded before folds carried their hidden items re-applies every deletion.
        return items + [st for st in self.state.values() if st.seq > floor or (hidden is None and st.deleted)]

    def sync(self, mv: ModelVersion, vectors: dict[str, np.ndarray] | None = None) -> tuple[int, int, int]:
        self.high_water = max(self.high_water, mv.folded_through)
        fresh = self.fresh(mv)
        result = mv.apply_journal(self.pending(mv, fresh), self.last_seq, vectors, fresh=fresh)
        self._epochs[mv] = self.epoch
        return result

    def append(self, changes: Sequence[journal.ItemChange], check: Callable[[], None] | None = None
               ) -> list[JournalRecord]:
        others, new = self.log.append(self.cursor, changes, self.high_water, check)
        self._absorb(others)
        journal.absorb(self.state, new)
        self.high_water = max(self.high_water, self.cursor.last_seq)
        self._metrics.journal_seq.labels(model=self.name).set(self.last_seq)
        return new


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the journal file: unchanged means nothing to read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ItemJournals:
    def __init__(self, repository: Path, loaded: Callable[[], dict[str, dict[int, ModelVersion]]], metrics: Any,
                 poll_seconds: float, url: str = "") -> None:
        """`url`: "" for the file journal beside each model's versions, or redis://... for a Redis stream per
        model (repository/journal_redis.py)."""
        self.repository = Path(repository)
        self.url = url
        self._loaded = loaded
        self._metrics = metrics
        self._journals: dict[str, ModelJournal] = {}
        self._lock = threading.Lock()
        self._tail = Periodic("journal-tail", poll_seconds, self.poll, log)

    def journal(self, name: str) -> ModelJournal:
        with self._lock:
            j = self._journals.get(name)
            if j is None:
                j = self._journals[name] = ModelJournal(self.repository / name / journal.JOURNAL, name,
                                                        self._metrics, self._log(name))
            return j

    def _log(self, name: str) -> journal.ChangeLog | None:
        if not self.url:
            return None
        from repository.journal_redis import open_log

        return open_log(self.url, name)

    @contextlib.contextmanager
    def up_to_date(self, mv: ModelVersion) -> Iterator[None]:
        """Brings a version that is about to be installed up to date and holds the model's journal lock
        until the caller has installed it."""
        j = self.journal(mv.name)
        with j.lock:
            j.read_new()
            added, replaced, deleted = j.sync(mv)
            if added or replaced or deleted:
                log.info("item journal replayed", model=mv.name, version=mv.version, added=added,
                         replaced=replaced, deleted=deleted, seq=j.last_seq)
            yield

    def catch_up(self, name: str, also: ModelVersion | None = None) -> int:
        """Reads the journal now and applies it to every loaded version (an admin call checks ids only after
        this: an item another replica added a moment ago exists). Returns the last sequence number read."""
        j = self.journal(name)
        with j.lock:
            j.read_new()
            for mv in self._versions(name, also):
                if j.fresh(mv) or mv.applied_seq < j.last_seq:
                    self._sync(j, mv)
            return j.last_seq

    def at_least(self, mv: ModelVersion, seq: int, wait_seconds: float, deadline: float | None = None) -> None:
        """Returns once mv has applied journal record `seq` (a client's consistency token), reading the
        journal at once and then every few milliseconds; UNAVAILABLE (retryable) after `wait_seconds` or at
        the request's deadline, whichever comes first."""
        if mv.applied_seq >= seq:
            return
        end = time.monotonic() + wait_seconds
        if deadline is not None:
            end = min(end, deadline)
        while True:
            try:
                self.catch_up(mv.name, mv)
            except journal.JournalUnavailable as exc:  # e.g. the Redis stream unreachable: retryable
                raise errors.unavailable(f"cannot read the item journal of {mv.name} to reach record {seq} "
                                         f"({exc}); retry, here or on another replica") from None
            except OSError as exc:
                raise errors.precondition(f"cannot read the item journal of {mv.name} to reach record {seq} "
                                          f"({exc})") from None
            if mv.applied_seq >= seq:
                return
            if time.monotonic() >= end:
                raise errors.unavailable(f"this replica of {mv.name} has applied item-journal records through "
                                         f"{mv.applied_seq}, not yet {seq} (waited up to {wait_seconds:g} s); "
                                         "retry, here or on another replica")
            time.sleep(CATCH_UP_POLL)

    def change(self, target: ModelVersion, changes: Sequence[journal.ItemChange],
               vectors: dict[str, np.ndarray] | None = None, check: Callable[[], None] | None = None
               ) -> tuple[list[JournalRecord], tuple[int, int, int]]:
        """Journals changes durably, then applies them (and whatever other replicas appended first) to
        every loaded version of the model. Returns the new records and target's (added, replaced, deleted)
        for them alone; raises JournalApplyError when target could not apply them (other versions retry
        at the next poll either way). `check` runs under the journal's lock just before the write."""
        j = self.journal(target.name)
        with j.lock:
            j.read_new()
            for mv in self._versions(target.name, target):  # others' records first: counts below are ours alone
                self._sync(j, mv)
            new = j.append(changes, check)
            result = (0, 0, 0)
            failed: BaseException | None = None
            for mv in self._versions(target.name, target):
                try:
                    r = self._sync(j, mv, vectors if mv is target else None, strict=mv is target)
                except Exception as exc:
                    failed = exc
                    continue
                if mv is target:
                    result = r
        if failed is not None:
            raise JournalApplyError(target.name, target.version, new[-1].seq if new else j.last_seq, failed)
        return new, result

    def _versions(self, name: str, also: ModelVersion | None = None) -> list[ModelVersion]:
        versions = list(self._loaded().get(name, {}).values())
        if also is not None and all(v is not also for v in versions):
            versions.append(also)
        return versions

    def _sync(self, j: ModelJournal, mv: ModelVersion, vectors: dict[str, np.ndarray] | None = None,
              strict: bool = False) -> tuple[int, int, int]:
        try:
            return j.sync(mv, vectors)
        except Exception:  # an acknowledged record stays in the journal; retried at the next poll
            log.exception("item journal could not be applied", model=mv.name, version=mv.version)
            self._metrics.journal_apply_failures.labels(model=mv.name).inc()
            if strict:  # the admin call's own version: its caller must hear of it (never OK with zero counts)
                raise
            return 0, 0, 0

    def poll(self) -> None:
        for name in list(self._loaded()):
            self.catch_up(name)

    # ---- tail thread ----
    def start(self) -> None:
        self._tail.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._tail.stop(timeout)
