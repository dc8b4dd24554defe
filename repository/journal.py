"""The item journal of a model: `<repository>/<model>/items.journal`, an append-only log of catalogue
changes made while serving (UpsertItems, DeleteItems), shared by every replica on the repository.

Why a journal and not in-memory updates: an acknowledged change must survive a restart and a
version swap, and reach every replica. Each record is one line, `<crc32 hex> <json>\\n`, with a
sequence number; appends happen under an exclusive `flock` and are fsynced before the writer
answers, so two replicas never write the same sequence number and an acknowledged record is on disk.

A crash while appending leaves at most one torn record at the end (no newline yet): readers never
consume a line without its newline, and the next writer truncates such a tail under the lock (it
was never acknowledged). A complete line whose checksum does not match is corruption: it is
skipped and reported, never applied.

Torch-free: the server writes and tails it (server/item_journal.py); the exporter reads it to fold it into
a new version (export/journal_fold.py). The format is described in docs/model-repository.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from repository.files import JOURNAL as JOURNAL  # the file name, for callers of this module

OPS = ("upsert", "delete")


class JournalError(OSError):
    """The journal cannot be written (read-only repository, permissions, full disk)."""


class ItemChange(NamedTuple):
    """One catalogue change as an admin call asks for it, before the journal gives it a sequence number."""

    op: str  # "upsert" | "delete"
    item_id: str
    text: str = ""
    title: str = ""


@dataclass(frozen=True)
class JournalRecord:
    seq: int
    op: str  # "upsert" | "delete"
    item_id: str
    text: str = ""
    title: str = ""
    time: str = ""

    def line(self) -> bytes:
        body = json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        return b"%08x %s\n" % (zlib.crc32(body), body)


def parse_line(line: bytes) -> JournalRecord | None:
    """The record of one complete line (newline stripped), or None when it is corrupt."""
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        d = json.loads(body)
        rec = JournalRecord(seq=int(d["seq"]), op=str(d["op"]), item_id=str(d["item_id"]),
                            text=str(d.get("text", "")), title=str(d.get("title", "")), time=str(d.get("time", "")))
    except (ValueError, KeyError, TypeError):
        return None
    return rec if rec.op in OPS and rec.item_id and rec.seq > 0 else None


@dataclass
class ReadResult:
    records: list[JournalRecord]
    offset: int  # where the next read starts: after the last complete line
    corrupt: list[str]  # descriptions of skipped lines


def read_from(path: Path, offset: int = 0, after_seq: int = 0) -> ReadResult:
    """Complete records from byte `offset` on; an unterminated last line is left for a later read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return ReadResult([], offset, [])
    end = data.rfind(b"\n") + 1  # 0 when no complete line
    records: list[JournalRecord] = []
    corrupt: list[str] = []
    pos = 0
    last = after_seq
    for raw in data[:end].split(b"\n")[:-1]:
        rec = parse_line(raw)
        if rec is None:
            corrupt.append(f"{path}: bad record at byte {offset + pos} (checksum or format); skipped")
        elif rec.seq <= last:
            corrupt.append(f"{path}: record at byte {offset + pos} has sequence {rec.seq} after {last}; skipped")
        else:
            records.append(rec)
            last = rec.seq
        pos += len(raw) + 1
    return ReadResult(records, offset + end, corrupt)


def effective(records: Sequence[JournalRecord]) -> dict[str, JournalRecord]:
    """Item id -> its last record, ordered by sequence number (a re-touched item moves to the end)."""
    state: dict[str, JournalRecord] = {}
    for rec in records:
        state.pop(rec.item_id, None)
        state[rec.item_id] = rec
    return state


def read_state(path: Path) -> tuple[dict[str, JournalRecord], int]:
    """The effective state of a whole journal and its last sequence number (0 when empty or absent)."""
    res = read_from(path)
    return effective(res.records), (res.records[-1].seq if res.records else 0)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created:  # the new directory entry must be durable too
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        raise JournalError(exc.errno, f"cannot open the item journal {path} for writing ({exc.strerror})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _truncate_torn_tail(fd: int) -> None:
    """Under the lock: a last line without its newline was never acknowledged; drop it."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    while cut < 0 and size > len(tail):  # a torn record longer than 64 KiB: search further back
        start = max(0, size - len(tail) - (1 << 16))
        tail = os.pread(fd, size - start, start)
        cut = tail.rfind(b"\n")
    os.ftruncate(fd, 0 if cut < 0 else size - len(tail) + cut + 1)


def append(path: Path, offset: int, last_seq: int, changes: Sequence[ItemChange]
           ) -> tuple[ReadResult, list[JournalRecord]]:
    """Appends changes durably; returns what other writers appended since
    `offset` (to be applied first) and the new records with their sequence numbers.

    The caller passes the offset and last sequence number of its own reading, so appending costs a
    read of only what it has not seen yet.
    """
    changes = [ItemChange(*c) for c in changes]
    for c in changes:
        if c.op not in OPS:
            raise ValueError(f"journal op {c.op!r}; accepted: {', '.join(OPS)}")
    with _locked(path) as fd:
        _truncate_torn_tail(fd)
        others = read_from(path, offset, last_seq)
        seq = others.records[-1].seq if others.records else last_seq
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        new = [JournalRecord(seq + i + 1, c.op, c.item_id, c.text, c.title, now) for i, c in enumerate(changes)]
        data = b"".join(r.line() for r in new)
        try:
            os.lseek(fd, 0, os.SEEK_END)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, others.offset)  # nothing half-written stays behind
            raise JournalError(exc.errno, f"cannot append to the item journal {path} ({exc.strerror})") from exc
        others.offset += len(data)
    return others, new
