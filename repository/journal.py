"""The item journal of a model: `<repository>/<model>/items.journal`, an append-only log of catalogue
changes made while serving (UpsertItems, DeleteItems), shared by every replica on the repository.

Why a journal and not in-memory updates: an acknowledged change must survive a restart and a
version swap, and reach every replica. Each record is one line, `<crc32 hex> <json>\\n`, with a
sequence number; appends happen under an exclusive `flock` and are fsynced before the writer
answers, so two replicas never write the same sequence number and an acknowledged record is on disk.
Readers take a shared `flock`: a record that a failed write leaves for a moment (and then truncates)
is never seen by anyone.

The first line of a journal written by this code is a header naming the journal's identity (a random
id) and the sequence number it starts after. A reader remembers the identity, its byte offset and the
last line it read; when the file no longer continues that (it shrank, was restored from a backup, was
compacted or replaced), the reader is told so and must rebuild from the whole file, never skip.

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
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from repository.files import JOURNAL as JOURNAL  # the file name, for callers of this module

OPS = ("upsert", "delete")
FORMAT = 2


class JournalError(OSError):
    """The journal cannot be read or written (read-only repository, permissions, full disk, an unreachable
    Redis)."""

    def __str__(self) -> str:  # errno 0 (not a system call's error): the message alone, no "[Errno 0]"
        return self.strerror if self.errno == 0 and self.strerror else super().__str__()


class JournalUnavailable(JournalError):
    """The log's engine cannot be reached right now (e.g. Redis down or timing out): retryable, unlike a
    journal that is there but cannot be used (a directory in its place, no permission)."""


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
        return _line(asdict(self))


@dataclass(frozen=True)
class ItemState:
    """One item after every record read so far, by per-item last-writer-wins on the sequence number.

    `text` and `upsert_seq` are those of its last upsert even when it was deleted since: a deleted item
    keeps a vector, because histories may still name it. `title` is the last non-empty title it was given.
    """

    item_id: str
    seq: int  # its last record
    deleted: bool
    text: str = ""
    title: str = ""
    upsert_seq: int = 0  # its last upsert; 0 = none in this log


def _line(d: dict) -> bytes:
    body = json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _body(line: bytes) -> dict | None:
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        d = json.loads(body)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def parse_line(line: bytes) -> JournalRecord | None:
    """The record of one complete line (newline stripped), or None when it is corrupt."""
    d = _body(line)
    try:
        if d is None:
            return None
        rec = JournalRecord(seq=int(d["seq"]), op=str(d["op"]), item_id=str(d["item_id"]),
                            text=str(d.get("text", "")), title=str(d.get("title", "")), time=str(d.get("time", "")))
    except (ValueError, KeyError, TypeError):
        return None
    return rec if rec.op in OPS and rec.item_id and rec.seq > 0 else None


def header_line(identity: str, high_water: int) -> bytes:
    """`high_water`: the largest sequence number handed out before this file began (new records get more)."""
    return _line({"journal": identity, "format": FORMAT, "high_water": high_water, "created": _now()})


def parse_header(line: bytes) -> tuple[str, int] | None:
    """(identity, high_water) of a header line, or None when the line is not one."""
    d = _body(line)
    if d is None or not isinstance(d.get("journal"), str):
        return None
    try:
        return d["journal"], int(d.get("high_water", 0))
    except (TypeError, ValueError):
        return None


def merge(prev: ItemState | None, rec: JournalRecord) -> ItemState:
    """An item's state after one more record."""
    if rec.op == "upsert":
        return ItemState(rec.item_id, rec.seq, False, rec.text, rec.title or (prev.title if prev else ""), rec.seq)
    if prev is None:
        return ItemState(rec.item_id, rec.seq, True)
    return replace(prev, seq=rec.seq, deleted=True)


def absorb(state: dict[str, ItemState], records: Sequence[JournalRecord]) -> None:
    """Folds records into `state` (item id -> state, kept in the order of their last sequence number)."""
    for rec in records:
        prev = state.pop(rec.item_id, None)
        state[rec.item_id] = merge(prev, rec)


def effective(records: Sequence[JournalRecord]) -> dict[str, ItemState]:
    """Item id -> its state after `records`, ordered by last sequence number (a re-touched item moves to the end)."""
    state: dict[str, ItemState] = {}
    absorb(state, records)
    return state


@dataclass(frozen=True)
class Cursor:
    """How far a reader has read one journal: where to continue, and what it must find there."""

    identity: str | None = None  # "" a journal without header (written before format 2); None: not known, so
    # not checked (nothing read yet, or a caller that only keeps an offset)
    offset: int = 0
    last_seq: int = 0
    tail: bytes = b""  # the last complete line read (with its newline)


@dataclass
class ReadResult:
    records: list[JournalRecord]
    cursor: Cursor
    corrupt: list[str] = field(default_factory=list)  # descriptions of skipped lines
    rewound: str = ""  # why the file no longer continued the given cursor; records then start from scratch
    high_water: int = 0  # the header's: new sequence numbers must exceed it

    @property
    def offset(self) -> int:
        return self.cursor.offset


def _read_lines(f: BinaryIO, path: Path, cursor: Cursor) -> ReadResult:
    """Complete records from cursor.offset on (f is open and locked); an unterminated last line is left."""
    f.seek(cursor.offset)
    records: list[JournalRecord] = []
    corrupt: list[str] = []
    identity, offset, last, tail = cursor.identity, cursor.offset, cursor.last_seq, cursor.tail
    high = 0
    for raw in iter(f.readline, b""):  # line by line: a journal is never held whole in memory
        if not raw.endswith(b"\n"):
            break  # torn: the next writer truncates it
        line = raw[:-1]
        if offset == 0 and (head := parse_header(line)) is not None:
            identity, high = head
        else:
            if offset == 0:
                identity = ""  # a journal written before headers existed
            rec = parse_line(line)
            if rec is None:
                corrupt.append(f"{path}: bad record at byte {offset} (checksum or format); skipped")
            elif rec.seq <= last:
                corrupt.append(f"{path}: record at byte {offset} has sequence {rec.seq} after {last}; skipped")
            else:
                records.append(rec)
                last = rec.seq
        offset += len(raw)
        tail = raw
    return ReadResult(records, Cursor(identity, offset, last, tail), corrupt, high_water=high)


def _header(f: BinaryIO) -> tuple[str, int]:
    """(identity, high_water) from the first line; ("", 0) for a journal without header."""
    f.seek(0)
    first = f.readline()
    head = parse_header(first[:-1]) if first.endswith(b"\n") else None
    return head if head is not None else ("", 0)


def _continues(f: BinaryIO, cursor: Cursor) -> str:
    """'' when the open file still continues what `cursor` read, else why not."""
    if cursor.identity is None or cursor.offset == 0:
        return ""
    size = os.fstat(f.fileno()).st_size
    identity = _header(f)[0]
    # identity first: a compacted journal is also shorter, and "compacted" is what an operator must read
    if identity and identity != cursor.identity:
        return f"the journal's identity changed from {cursor.identity!r} to {identity!r} (compacted or replaced)"
    if size < cursor.offset:
        return f"the journal shrank from {cursor.offset} to {size} bytes (truncated or restored from a backup)"
    if identity != cursor.identity:
        return f"the journal lost its header (identity {cursor.identity!r}): replaced or edited"
    f.seek(cursor.offset - len(cursor.tail))
    if f.read(len(cursor.tail)) != cursor.tail:
        return "the journal was rewritten before the point already read (restored from a backup or edited)"
    return ""


@contextlib.contextmanager
def _opened(path: Path, how: int) -> Iterator[BinaryIO | None]:
    """The journal open and flock'ed (LOCK_SH or LOCK_EX); reopened if it was replaced while we waited."""
    while True:
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(f.fileno(), how)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield f
                return
        finally:
            f.close()  # closing releases the lock


def read_new(path: Path, cursor: Cursor = Cursor()) -> ReadResult:
    """What was appended after `cursor`; from the beginning, with `rewound` saying why, when the file no
    longer continues it."""
    with _opened(path, fcntl.LOCK_SH) as f:
        if f is None:
            why = "the journal was removed" if cursor.offset else ""
            return ReadResult([], Cursor() if why else cursor, rewound=why)
        why = _continues(f, cursor)
        res = _read_lines(f, path, Cursor() if why else cursor)
        res.rewound = why
        return res


def read_from(path: Path, offset: int = 0, after_seq: int = 0) -> ReadResult:
    """Complete records from byte `offset` on (0: the whole journal, header included)."""
    return read_new(path, Cursor(None, offset, after_seq))


def read_state(path: Path) -> tuple[dict[str, ItemState], int]:
    """The effective state of a whole journal and its last sequence number (0 when empty or absent)."""
    res = read_new(path)
    return effective(res.records), res.cursor.last_seq


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created:  # the new directory entry must be durable too
            _fsync_dir(path.parent)
    except OSError as exc:
        raise JournalError(exc.errno, f"cannot open the item journal {path} for writing ({exc.strerror})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            replaced = os.stat(path).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            replaced = True
        if replaced:  # compacted or removed while we waited for the lock: lock the file that is there now
            os.close(fd)
            fd = -1
            with _locked(path) as fd2:
                yield fd2
            return
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)  # closing releases the lock


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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


def _write_all(fd: int, data: bytes) -> None:
    os.lseek(fd, 0, os.SEEK_END)
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])
    os.fsync(fd)


def append(path: Path, cursor: Cursor | int, last_seq: int | Sequence[ItemChange] = 0,
           changes: Sequence[ItemChange] | None = None, high_water: int = 0,
           check: Callable[[], None] | None = None) -> tuple[ReadResult, list[JournalRecord]]:
    """Appends changes durably; returns what other writers appended since `cursor` (to be applied first;
    from scratch, with `rewound` set, when the file no longer continues the cursor) and the new records.

    New sequence numbers follow the largest of the file's last, `high_water` (the largest this caller has
    ever seen, folded versions included) and the header's base: a journal restored from an older backup
    never hands out a number again that a reader may already have applied. `check` runs under the lock
    just before writing (an admin call whose deadline passed must not be journalled after all).
    Also callable as append(path, offset, last_seq, changes) (a cursor without identity checks).
    """
    if isinstance(cursor, int):  # the old positional form
        assert changes is not None and isinstance(last_seq, int)
        cursor = Cursor(None, cursor, last_seq)
    else:
        changes = changes if changes is not None else last_seq  # type: ignore[assignment]
    changes = [ItemChange(*c) for c in changes or ()]
    for c in changes:
        if c.op not in OPS:
            raise ValueError(f"journal op {c.op!r}; accepted: {', '.join(OPS)}")
    with _locked(path) as fd:
        _truncate_torn_tail(fd)
        with open(fd, "rb", closefd=False) as f:
            why = _continues(f, cursor)
            others = _read_lines(f, path, Cursor() if why else cursor)
            others.rewound = why
        size = others.cursor.offset
        header = b""
        if size == 0:  # a new journal: its header first, with a fresh identity
            identity = uuid.uuid4().hex
            header = header_line(identity, max(high_water, others.cursor.last_seq))
            others.cursor = Cursor(identity, 0, others.cursor.last_seq)
        else:
            with open(fd, "rb", closefd=False) as f:
                others.high_water = _header(f)[1]
        seq = max(others.cursor.last_seq, high_water, others.high_water)
        now = _now()
        new = [JournalRecord(seq + i + 1, c.op, c.item_id, c.text, c.title, now) for i, c in enumerate(changes)]
        if check is not None:
            check()
        data = header + b"".join(r.line() for r in new)
        try:
            _write_all(fd, data)
        except OSError as exc:
            try:  # nothing half-written stays behind; readers wait on our lock, so none saw it
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                raise JournalError(exc.errno, f"cannot append to the item journal {path} ({exc.strerror}), nor "
                                   "remove what may have been written: the outcome is unknown") from exc
            raise JournalError(exc.errno, f"cannot append to the item journal {path} ({exc.strerror})") from exc
        last_line = new[-1].line() if new else (header or others.cursor.tail)
        others.cursor = Cursor(others.cursor.identity, size + len(data), new[-1].seq if new else
                               others.cursor.last_seq, last_line)
    return others, new


def compact(path: Path) -> tuple[int, int]:
    """Rewrites the journal as its effective state (per item: its last upsert, then its delete if it was
    deleted since), under a new identity, sequence numbers kept; returns (records before, records after).
    Readers see the new identity and rebuild from the compacted file, which gives the same catalogue."""
    with _locked(path) as fd:
        _truncate_torn_tail(fd)
        with open(fd, "rb", closefd=False) as f:
            res = _read_lines(f, path, Cursor())
        state = effective(res.records)
        out: list[JournalRecord] = []
        for st in sorted(state.values(), key=lambda s: s.seq):
            if st.upsert_seq:
                out.append(JournalRecord(st.upsert_seq, "upsert", st.item_id, st.text, st.title))
            if st.deleted:
                out.append(JournalRecord(st.seq, "delete", st.item_id))
        out.sort(key=lambda r: r.seq)
        tmp = path.with_name(f".{path.name}.compact-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:  # the last number handed out stays taken, even if its record was dropped
                f.write(header_line(uuid.uuid4().hex, max(res.cursor.last_seq, res.high_water)))
                f.write(b"".join(r.line() for r in out))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # under the old file's lock: writers re-check the inode once they get it
            _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return len(res.records), len(out)


class ChangeLog(Protocol):
    """A model's change log as the server uses it: the file journal here; another engine (a Redis stream)
    would implement the same three calls with the same guarantees."""

    def read_new(self, cursor: Cursor) -> ReadResult: ...

    def append(self, cursor: Cursor, changes: Sequence[ItemChange], high_water: int = 0,
               check: Callable[[], None] | None = None) -> tuple[ReadResult, list[JournalRecord]]: ...

    def compact(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class FileLog:
    """The journal file beside the version folders (one per model), on a local or shared volume."""

    path: Path

    def read_new(self, cursor: Cursor) -> ReadResult:
        return read_new(self.path, cursor)

    def append(self, cursor: Cursor, changes: Sequence[ItemChange], high_water: int = 0,
               check: Callable[[], None] | None = None) -> tuple[ReadResult, list[JournalRecord]]:
        return append(self.path, cursor, changes, high_water=high_water, check=check)

    def compact(self) -> tuple[int, int]:
        return compact(self.path)
