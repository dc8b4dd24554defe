"""recsys_journal_rebuilds_total{model,reason}: a replica whose journal stopped continuing what it had read
rebuilds every version of the model (server/item_journal.py) and counts it, by a reason that separates the
planned case (compaction) from those where acknowledged changes may be lost, on both backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repository import journal
from repository.journal import Cursor, ItemChange
from server.item_journal import ModelJournal
from server.metrics import REBUILD_REASONS, Metrics, rebuild_reason


def _counts(metrics: Metrics, model: str = "m") -> dict[str, float]:
    return {r: metrics.registry.get_sample_value("recsys_journal_rebuilds_total", {"model": model, "reason": r})
            for r in REBUILD_REASONS}


def _upsert(log: Any, *items: str) -> None:
    log.append(log.read_new(Cursor()).cursor, [ItemChange("upsert", x, f"text of {x}", "") for x in items])


class Backend:
    """A journal of model "m" on one backend, and what can happen to it behind a replica's back."""

    def __init__(self, log: Callable[[], Any], snapshot: Callable[[], Any], restore: Callable[[Any], None],
                 remove: Callable[[], None], path: Path) -> None:
        self.log, self.snapshot, self.restore, self.remove, self.path = log, snapshot, restore, remove, path


@pytest.fixture(params=["file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "m" / journal.JOURNAL
    if request.param == "file":
        path.parent.mkdir()
        yield Backend(lambda: journal.FileLog(path), path.read_bytes, path.write_bytes, path.unlink, path)
        return
    from redis_server import redis_server

    from repository.journal_redis import open_log

    with redis_server(tmp_path / "redis") as server:
        def log() -> Any:
            return open_log(server.url, "m")

        keys = (log().key, log().meta)

        def restore(snap: dict) -> None:
            for k, v in snap.items():
                log().client.restore(k, 0, v, replace=True)

        yield Backend(log, lambda: {k: log().client.dump(k) for k in keys}, restore,
                      lambda: log().client.delete(*keys), path)


def _replica(backend: Backend) -> tuple[ModelJournal, Metrics]:
    metrics = Metrics()
    metrics.init_model("m")
    return ModelJournal(backend.path, "m", metrics, backend.log()), metrics


def test_reading_new_records_is_no_rebuild(backend: Backend) -> None:
    replica, metrics = _replica(backend)
    for x in ("a", "b", "c"):
        _upsert(backend.log(), x)
        replica.read_new()
    replica.append([ItemChange("delete", "a")])
    replica.read_new()
    assert replica.last_seq == 4 and replica.epoch == 0
    assert _counts(metrics) == dict.fromkeys(REBUILD_REASONS, 0.0)


def test_compaction_counts_as_compacted(backend: Backend) -> None:
    replica, metrics = _replica(backend)
    _upsert(backend.log(), "a", "b")
    _upsert(backend.log(), "a")
    replica.read_new()
    backend.log().compact()
    replica.read_new()
    assert replica.epoch == 1 and _counts(metrics) == {"compacted": 1.0, "truncated": 0.0, "rewritten": 0.0}
    replica.read_new()  # once: the new identity is read from now on
    assert _counts(metrics)["compacted"] == 1.0


def test_a_journal_that_lost_records_counts_as_truncated(backend: Backend) -> None:
    replica, metrics = _replica(backend)
    _upsert(backend.log(), "a")
    backup = backend.snapshot()
    _upsert(backend.log(), "b")
    replica.read_new()
    backend.restore(backup)  # an older backup: record 2 is gone (on Redis: the stream no longer holds it)
    replica.read_new()
    backend.remove()  # the journal is gone (on Redis: its data lost)
    replica.read_new()
    assert replica.epoch == 2 and _counts(metrics) == {"compacted": 0.0, "truncated": 2.0, "rewritten": 0.0}


def test_a_journal_rewritten_before_the_read_point_counts_as_rewritten(backend: Backend) -> None:
    replica, metrics = _replica(backend)
    _upsert(backend.log(), "a")
    backup = backend.snapshot()
    _upsert(backend.log(), "b")
    replica.read_new()
    backend.restore(backup)
    _upsert(backend.log(), "c", "d")  # a writer that started from the backup: seq 2 is now another record
    replica.read_new()
    assert replica.epoch == 1 and _counts(metrics) == {"compacted": 0.0, "truncated": 0.0, "rewritten": 1.0}
    assert {st.item_id for st in replica.state.values()} == {"a", "c", "d"}


@pytest.mark.parametrize("now,reason", [
    (Cursor("cd34", 0, 2), "compacted"),  # a new identity, whatever else
    (Cursor("cd34", 0, 9), "compacted"),
    (Cursor("ab12", 0, 3), "truncated"),  # ends before the 5 records read
    (Cursor("", 0, 0), "truncated"),  # gone: a removed file, an emptied Redis
    (Cursor(None, 0, 0), "truncated"),
    (Cursor("ab12", 0, 5), "rewritten"),  # as far, other records
    (Cursor("ab12", 0, 7), "rewritten"),
])
def test_reasons_are_a_bounded_label(now: Cursor, reason: str) -> None:
    assert rebuild_reason(Cursor("ab12", 900, 5), now) == reason
