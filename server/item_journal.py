"""Keeps every loaded version in step with its model's item journal (repository/journal.py).

- UpsertItems / DeleteItems append to the journal (fsynced, under the journal's file lock), then
  apply what other replicas appended meanwhile and their own records to every loaded version of
  the model, and only then answer OK.
- A tail thread reads what other replicas appended, every `journal_poll_seconds`.
- A new version is brought up to date before it is swapped in, under the same lock as appends, so
  no acknowledged change is missing from it when it starts answering.

One lock per model orders all of this; records are applied in sequence order on every replica, so
replicas converge on the same catalogue.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import logs
from repository import journal
from repository.journal import JournalRecord
from server.model_version import ModelVersion
from server.periodic import Periodic

log = logs.get("server.journal")


class JournalApplyError(Exception):
    """Changes were journalled (durable, and retried at the next poll) but the version that answers the admin
    call could not apply them: the caller must not report them as done here."""

    def __init__(self, name: str, version: int, seq: int, cause: BaseException) -> None:
        super().__init__(f"{name} v{version}: journalled through seq {seq} but not applied here "
                         f"({type(cause).__name__}: {cause})")
        self.seq = seq


class ModelJournal:
    """One model's journal as this process has read it."""

    def __init__(self, path: Path, name: str, metrics: Any) -> None:
        self.path = path
        self.name = name
        self.lock = threading.RLock()
        self.offset = 0
        self.last_seq = 0
        self.state: dict[str, JournalRecord] = {}  # item id -> last record, in sequence order
        self._metrics = metrics

    def _absorb(self, result: journal.ReadResult) -> None:
        for problem in result.corrupt:
            log.error("item journal record skipped", model=self.name, problem=problem)
            self._metrics.journal_corrupt.labels(model=self.name).inc()
        for rec in result.records:
            self.state.pop(rec.item_id, None)
            self.state[rec.item_id] = rec
            self.last_seq = rec.seq
        self.offset = result.offset
        self._metrics.journal_seq.labels(model=self.name).set(self.last_seq)

    def read_new(self) -> None:
        """Reads what was appended since the last read (cheap when nothing was)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self.offset:
            log.error("item journal shrank: it was replaced or edited by hand; changes since then are not "
                      "replayed until restart", model=self.name, path=str(self.path), size=size, read=self.offset)
            return
        if size > self.offset:
            self._absorb(journal.read_from(self.path, self.offset, self.last_seq))

    def pending(self, mv: ModelVersion) -> list[JournalRecord]:
        """Effective records mv has not applied yet, in sequence order."""
        out = []
        for rec in reversed(self.state.values()):
            if rec.seq <= mv.applied_seq:
                break
            out.append(rec)
        return out[::-1]

    def sync(self, mv: ModelVersion, vectors: dict[str, np.ndarray] | None = None) -> tuple[int, int, int]:
        recs = self.pending(mv)
        result = mv.apply_journal(recs, vectors)
        mv.applied_seq = max(mv.applied_seq, self.last_seq)
        return result

    def append(self, changes: Sequence[journal.ItemChange]) -> list[JournalRecord]:
        others, new = journal.append(self.path, self.offset, self.last_seq, changes)
        self._absorb(others)
        self._absorb(journal.ReadResult(new, others.offset, []))
        return new


class ItemJournals:
    def __init__(self, repository: Path, loaded: Callable[[], dict[str, dict[int, ModelVersion]]], metrics: Any,
                 poll_seconds: float) -> None:
        self.repository = Path(repository)
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
                                                        self._metrics)
            return j

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

    def change(self, target: ModelVersion, changes: Sequence[journal.ItemChange],
               vectors: dict[str, np.ndarray] | None = None) -> tuple[list[JournalRecord], tuple[int, int, int]]:
        """Journals changes durably, then applies them (and whatever other replicas appended first) to
        every loaded version of the model. Returns the new records and target's (added, replaced, deleted)
        for them alone; raises JournalApplyError when target could not apply them (other versions retry
        at the next poll either way)."""
        j = self.journal(target.name)
        with j.lock:
            j.read_new()
            for mv in self._versions(target.name, target):  # others' records first: counts below are ours alone
                self._sync(j, mv)
            new = j.append(changes)
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
            j = self.journal(name)
            with j.lock:
                j.read_new()
                for mv in self._versions(name):
                    if mv.applied_seq < j.last_seq:
                        self._sync(j, mv)

    # ---- tail thread ----
    def start(self) -> None:
        self._tail.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._tail.stop(timeout)
