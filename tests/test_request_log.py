"""The optional request log: JSON lines of served requests, sampled, rotated, user ids hashed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from polling import wait_for
from repo_fixtures import running_server, write_cllm4rec

from server.request_log import RequestLog


def _lines(path: Path) -> list[dict]:
    files = sorted(path.parent.glob(path.name + "*"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_served_requests_are_logged_with_hashed_users(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path / "repo")
    log_path = tmp_path / "logs" / "requests.jsonl"
    with running_server(tmp_path / "repo", request_log=log_path, request_log_salt="s3cret") as (_, client):
        a = client.recommend("tiny-cllm", user_id="u1", top_k=3, request_id="req-1")
        client.recommend("tiny-cllm", history=["i1", "i2"], top_k=2)
        with pytest.raises(Exception, match="NOT_FOUND"):
            client.recommend("tiny-cllm", user_id="nobody", top_k=2)  # failures are not logged
    entries = _lines(log_path)
    assert len(entries) == 2
    first, second = entries
    assert first["request_id"] == "req-1" and first["model"] == "tiny-cllm" and first["version"] == 1
    assert first["items"] == [i for i, _ in a.items] and first["path"] == "user_vector" and first["known_user"]
    assert first["user"] not in ("u1", None) and len(first["user"]) == 16  # salted hash, not the id
    assert second["path"] == "encoder" and second["engine"] == "onnxruntime-cpu:fp32"
    assert second["user"] is None and second["history_len"] == 2 and len(second["scores"]) == 2


def test_sampling_rotation_and_user_id_modes(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    log = RequestLog(path, sample=0.25, max_mb=0.002, backups=2, user_ids="plain", seed=0)
    kept = sum(log.record({"i": i, "user": log.user("u7"), "pad": "x" * 50}) for i in range(400))
    log.close()
    assert 60 < kept < 140  # about a quarter
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]  # rotated, at most 2 backups kept
    assert all(p.stat().st_size <= 0.002 * 1024 * 1024 + 200 for p in tmp_path.iterdir())
    assert {e["user"] for e in _lines(path)} == {"u7"}
    assert RequestLog(tmp_path / "o.jsonl", user_ids="omit").user("u7") is None
    with pytest.raises(ValueError, match="hash, plain, omit"):
        RequestLog(tmp_path / "x.jsonl", user_ids="clear")


def test_hashed_user_ids_are_always_salted(tmp_path: Path) -> None:
    """No salt configured: one is generated once, kept beside the log (0600) and reused, so a hash cannot be
    reversed by hashing candidate ids, yet stays stable across restarts."""
    import hashlib
    import stat

    path = tmp_path / "r.jsonl"
    first = RequestLog(path)
    hashed = first.user("196")
    first.close()
    assert hashed not in (hashlib.sha256(b"196").hexdigest()[:16], "196") and len(hashed) == 16
    salt_file = tmp_path / ".r.jsonl.salt"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600 and len(salt_file.read_text().strip()) == 64
    again = RequestLog(path)
    assert again.user("196") == hashed  # same salt after a restart
    again.close()
    other = RequestLog(tmp_path / "elsewhere.jsonl")
    assert other.user("196") != hashed  # another log, another salt
    other.close()
    shared = tmp_path / "secret"
    shared.write_text("a shared secret\n")
    a, b = RequestLog(tmp_path / "a.jsonl", salt_file=shared), RequestLog(tmp_path / "b.jsonl", salt_file=shared)
    assert a.user("196") == b.user("196") != hashed  # replicas given one salt agree
    a.close()
    b.close()
    shared.write_text("")
    with pytest.raises(ValueError, match="empty"):
        RequestLog(tmp_path / "c.jsonl", salt_file=shared)
    plain = RequestLog(tmp_path / "p.jsonl", user_ids="plain")
    assert plain.user("196") == "196" and not (tmp_path / ".p.jsonl.salt").exists()  # no salt needed, none made
    plain.close()


def test_queue_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    dropped_calls: list[int] = []
    log = RequestLog(tmp_path / "r.jsonl", max_queue=5, on_drop=lambda: dropped_calls.append(1))
    disk = threading.Event()
    writing = threading.Event()
    emit = log._handler.emit

    def slow_disk(record):
        writing.set()
        disk.wait(30)
        emit(record)

    log._handler.emit = slow_disk
    try:
        assert log.record({"i": 0})
        wait_for(writing.is_set, "the writer to take the first entry")  # it is now stuck on the disk
        kept = 1 + sum(log.record({"i": i}) for i in range(1, 100))
        assert kept == 1 + 5  # the one being written + a full queue
        assert log.dropped == 94 == len(dropped_calls)
    finally:
        disk.set()
    log.close()
    assert [e["i"] for e in _lines(tmp_path / "r.jsonl")] == list(range(6))


def test_dropped_entries_reach_the_metrics(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path / "repo")
    with running_server(tmp_path / "repo", request_log=tmp_path / "r.jsonl", request_log_queue=1) as (srv, client):
        log = srv.request_log
        gate = threading.Event()
        emit = log._handler.emit
        log._handler.emit = lambda record: (gate.wait(30), emit(record))
        try:
            for _ in range(10):
                assert client.recommend("tiny-cllm", user_id="u1", top_k=2).items  # never slowed or failed
            assert log.dropped >= 8
            get = srv.metrics.registry.get_sample_value
            assert get("recsys_request_log_dropped_total") == log.dropped
        finally:
            gate.set()
    assert (tmp_path / ".r.jsonl.salt").exists()
