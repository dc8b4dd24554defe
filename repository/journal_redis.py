"""The item journal on a Redis stream, for clusters without a shared ReadWriteMany volume
(`llmrec serve --journal redis://HOST:PORT/DB`): the same records, sequence numbers, identity and
guarantees as the file journal (repository/journal.py), checked by one conformance suite.

Layout, per model (`prefix` defaults to "llmrec"):
- `<prefix>:<model>:journal`: a stream; record `seq` is the entry with id `<seq>-0` and one field `r` holding
  the same `<crc32> <json>` line as the file journal (so a corrupt entry is detected the same way).
- `<prefix>:<model>:journal:meta`: a hash with the journal's `identity` (a random id, new at compaction) and
  `high_water` (new records get numbers above it).

Why these commands: an append is an optimistic transaction (WATCH the stream and its meta, read what others
appended, MULTI, XADD with explicit ids, EXEC), so two replicas never hand out one number and the writer's
last-moment check (an admin call's deadline) runs inside it; readers use XRANGE from their last id. Durability
is the server's: run Redis with `appendonly yes` and `appendfsync always` (an acknowledged record is on disk
before EXEC returns); `?wait=N` in the URL also waits for N Redis replicas to acknowledge (WAIT).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from repository.journal import (
    OPS,
    Cursor,
    ItemChange,
    JournalError,
    JournalRecord,
    JournalUnavailable,
    ReadResult,
    _now,
    effective,
    parse_line,
)

PAGE = 1000  # entries per XRANGE call: a long journal is never read in one reply


def _ident(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")


@dataclass
class RedisLog:
    """One model's change log on a Redis stream."""

    client: Any  # redis.Redis
    key: str
    wait_replicas: int = 0
    wait_ms: int = 1000

    @property
    def meta(self) -> str:
        return f"{self.key}:meta"

    @classmethod
    def from_url(cls, url: str, model: str) -> RedisLog:
        """redis://[:password@]host:port/db[?prefix=llmrec&wait=N&wait_ms=1000] (rediss:// for TLS)."""
        import redis  # only where this backend is chosen: the serving image needs it only then

        parts = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            wait, wait_ms = int(query.get("wait", 0)), int(query.get("wait_ms", 1000))
        except ValueError:
            raise ValueError(f"journal URL {url!r}: wait and wait_ms must be integers") from None
        client = redis.Redis.from_url(parts._replace(query="").geturl(), socket_timeout=10)
        return cls(client, f"{query.get('prefix', 'llmrec')}:{model}:journal", wait, wait_ms)

    # ---- reading ----
    def _read(self, r: Any, cursor: Cursor) -> ReadResult:
        meta = r.hgetall(self.meta)
        identity = _ident(meta.get(b"identity")) if meta else ""
        high = int(meta.get(b"high_water", 0)) if meta else 0
        why = ""
        if cursor.identity is not None and cursor.last_seq > 0:
            if identity != cursor.identity:
                why = (f"the journal's identity changed from {cursor.identity!r} to {identity!r} (compacted or "
                       "replaced)")
            else:
                at = r.xrange(self.key, f"{cursor.last_seq}-0", f"{cursor.last_seq}-0")
                if not at or at[0][1].get(b"r", b"") + b"\n" != cursor.tail:
                    why = "the journal no longer holds the last record read (trimmed, restored or edited)"
        start = Cursor() if why else cursor
        records: list[JournalRecord] = []
        corrupt: list[str] = []
        last, tail = start.last_seq, start.tail
        lo = f"({last}-0" if last else "-"
        while True:
            page = r.xrange(self.key, lo, "+", count=PAGE)
            for entry_id, fields in page:
                line = fields.get(b"r", b"")
                rec = parse_line(line)
                seq = int(_ident(entry_id).split("-")[0])
                if rec is None or rec.seq != seq:
                    corrupt.append(f"{self.key}: bad entry {_ident(entry_id)} (checksum or format); skipped")
                else:
                    records.append(rec)
                last, tail = seq, line + b"\n"
            if len(page) < PAGE:
                break
            lo = f"({last}-0"
        return ReadResult(records, Cursor(identity if (meta or records) else None, last, last, tail), corrupt,
                          why, high)

    def read_new(self, cursor: Cursor) -> ReadResult:
        try:
            return self._read(self.client, cursor)
        except Exception as exc:
            raise _error(self.key, "read", exc) from exc

    # ---- writing ----
    def append(self, cursor: Cursor, changes: Sequence[ItemChange], high_water: int = 0,
               check: Callable[[], None] | None = None) -> tuple[ReadResult, list[JournalRecord]]:
        import redis

        changes = [ItemChange(*c) for c in changes]
        for c in changes:
            if c.op not in OPS:
                raise ValueError(f"journal op {c.op!r}; accepted: {', '.join(OPS)}")
        try:
            with self.client.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(self.key, self.meta)
                        others = self._read(pipe, cursor)
                        newest = pipe.xrevrange(self.key, "+", "-", count=1)
                        top = int(_ident(newest[0][0]).split("-")[0]) if newest else 0
                        seq = max(others.cursor.last_seq, top, high_water, others.high_water)
                        identity = others.cursor.identity or uuid.uuid4().hex
                        now = _now()
                        new = [JournalRecord(seq + i + 1, c.op, c.item_id, c.text, c.title, now)
                               for i, c in enumerate(changes)]
                        if check is not None:
                            check()
                        pipe.multi()
                        if others.cursor.identity is None:
                            pipe.hset(self.meta, mapping={"identity": identity, "high_water": seq})
                        for rec in new:
                            pipe.xadd(self.key, {"r": rec.line()[:-1]}, id=f"{rec.seq}-0")
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue  # another writer went first: read what it wrote, then try again
            if self.wait_replicas and new:
                acked = self.client.wait(self.wait_replicas, self.wait_ms)
                if acked < self.wait_replicas:
                    raise JournalError(0, f"{self.key}: records through {new[-1].seq} written but acknowledged by "
                                       f"{acked} of {self.wait_replicas} Redis replicas within {self.wait_ms} ms: "
                                       "the outcome is unknown if the primary fails now")
        except JournalError:
            raise
        except Exception as exc:
            if not isinstance(exc, redis.RedisError):
                raise
            raise _error(self.key, "append to", exc) from exc
        last = new[-1] if new else None
        others.cursor = Cursor(identity, last.seq if last else others.cursor.last_seq,
                               last.seq if last else others.cursor.last_seq,
                               last.line() if last else others.cursor.tail)
        return others, new

    def compact(self) -> tuple[int, int]:
        """As repository.journal.compact: the effective state, numbers kept, under a new identity."""
        import redis

        try:
            return self._compact()
        except redis.RedisError as exc:  # e.g. unreachable: one line for the operator, not a traceback
            raise _error(self.key, "compact", exc) from exc

    def _compact(self) -> tuple[int, int]:
        import redis

        tmp = f"{self.key}:compacting"
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key, self.meta)
                    res = self._read(pipe, Cursor())
                    state = effective(res.records)
                    out: list[JournalRecord] = []
                    for st in state.values():
                        if st.upsert_seq:
                            out.append(JournalRecord(st.upsert_seq, "upsert", st.item_id, st.text, st.title))
                        if st.deleted:
                            out.append(JournalRecord(st.seq, "delete", st.item_id))
                    out.sort(key=lambda r: r.seq)
                    pipe.multi()
                    pipe.delete(tmp)
                    for rec in out:
                        pipe.xadd(tmp, {"r": rec.line()[:-1]}, id=f"{rec.seq}-0")
                    if out:
                        pipe.rename(tmp, self.key)
                    else:
                        pipe.delete(self.key)
                    pipe.hset(self.meta, mapping={"identity": uuid.uuid4().hex,
                                                  "high_water": max(res.cursor.last_seq, res.high_water)})
                    pipe.execute()
                    return len(res.records), len(out)
                except redis.WatchError:
                    continue


def _error(key: str, what: str, exc: Exception) -> JournalError:
    import redis

    transient = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
    return (JournalUnavailable if transient else JournalError)(
        0, f"cannot {what} the item journal stream {key} ({type(exc).__name__}: {exc})")


def open_log(url: str, model: str) -> RedisLog:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"journal URL {url!r}: expected redis://HOST:PORT/DB (or rediss://, unix://)")
    return RedisLog.from_url(url, model)
