"""The optional request log: JSON lines of served requests, sampled, rotated, user ids hashed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
