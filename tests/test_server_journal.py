"""Catalogue changes are durable and shared: the item journal survives restarts, kill -9 and version
swaps, and two server processes on one repository converge after upserts and deletes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from repo_fixtures import encode_text, running_server, write_cllm4rec, write_tcf

from client import RecommenderClient
from repository import journal
from server.spawn import spawn_server, stop_server

TOKEN = "tok"
ROOT = Path(__file__).resolve().parent.parent


def _wait(predicate, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    return False


def _knows(client: RecommenderClient, model: str, item: str) -> bool:
    try:
        return bool(client.recommend(model, history=[item], top_k=1, timeout=5).items)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise


def _all_ids(client: RecommenderClient, model: str) -> set[str]:
    return {i for i, _ in client.recommend(model, user_id="u1", top_k=100, timeout=5).items}


def test_changes_survive_a_restart_and_reach_new_versions(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m", version=1)
    with running_server(tmp_path, admin_token=TOKEN) as (_, c):
        r = c.upsert_items("m", [("fresh", "w1 w2 w3", "Fresh"), ("t0", "w4 w5", "")])
        assert (r.added, r.replaced, r.journal_seq) == (1, 1, 2)
        d = c.delete_items("m", ["t3"])
        assert (d.deleted, d.already_deleted, d.journal_seq) == (1, 0, 3)
        again = c.delete_items("m", ["t3"])  # idempotent, and adds no record (R5)
        assert (again.already_deleted, again.journal_seq) == (1, 3)
        code = _code(c.delete_items, "m", ["t3", "nope"])
        assert code[0] == grpc.StatusCode.NOT_FOUND and "nothing was deleted" in code[1]
    with running_server(tmp_path, admin_token=TOKEN) as (srv, c):  # a restart replays the journal
        assert _knows(c, "m", "fresh") and "t3" not in _all_ids(c, "m")
        info = c.list_models().models[0].versions[0]
        assert (info.num_items, info.deleted_items, info.journal_seq) == (40, 1, 3)
        v2 = write_tcf(tmp_path, name="m", version=2, seed=9)  # another item tower
        assert "m:2" in c.reload().loaded
        with srv.registry.use("m") as mv:
            assert mv.version == 2
            cat = mv.catalogue
            expected = encode_text(v2.extra["T"], "w1 w2 w3")  # re-encoded by the new version's tower
            assert np.allclose(cat.vectors([cat.row("fresh")])[0], expected, atol=1e-6)
            assert "t3" in cat.deleted and cat.title(cat.row("fresh")) == "Fresh"


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details()


def test_torn_journal_tail_is_ignored_and_repaired(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m", version=1)
    path = tmp_path / "m" / journal.JOURNAL
    journal.append(path, 0, 0, [("upsert", "good", "w1 w2", "")])
    with path.open("ab") as f:
        f.write(journal.JournalRecord(2, "upsert", "torn", "w3").line()[:-5])
    with running_server(tmp_path, admin_token=TOKEN) as (_, c):
        assert _knows(c, "m", "good") and not _knows(c, "m", "torn")
        assert c.upsert_items("m", [("next", "w6 w7", "")]).journal_seq == 2
    res = journal.read_from(path)
    assert [r.item_id for r in res.records] == ["good", "next"] and not res.corrupt


def test_upsert_needs_a_writable_repository_and_deletes_work_on_id_models(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path, name="c")
    with running_server(tmp_path, admin_token=TOKEN) as (_, c):
        code, msg = _code(c.upsert_items, "c", [("x", "w1", "")])
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "text item tower" in msg
        assert c.delete_items("c", ["i4"]).deleted == 1
        assert "i4" not in {i for i, _ in c.recommend("c", user_id="u1", top_k=30).items}
        assert c.recommend("c", history=["i4", "i5"], top_k=3).items  # deleted items stay valid in histories
        (tmp_path / "c" / journal.JOURNAL).unlink()
        (tmp_path / "c" / journal.JOURNAL).mkdir()  # unwritable even for root (a read-only mount in production)
        code, msg = _code(c.delete_items, "c", ["i5"])
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "writable journal" in msg


def test_refused_version_is_retried_when_its_files_change(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m", version=1)
    with running_server(tmp_path, admin_token=TOKEN) as (srv, c):
        v2 = write_tcf(tmp_path, name="m", version=2, seed=3).path
        data = (v2 / "user_encoder.onnx").read_bytes()
        (v2 / "user_encoder.onnx").unlink()  # a non-atomic copy: manifest first, this file still on its way
        assert srv.reloader.reload_now().refused
        assert not srv.reloader.reload_now().refused  # unchanged: not retried by every poll
        (v2 / "user_encoder.onnx").write_bytes(data)
        assert "m:2" in srv.reloader.reload_now().loaded
        manifest = json.loads((v2 / "manifest.json").read_text())
        assert manifest["version"] == 2 and c.recommend("m", user_id="u1", top_k=2).version == 2


def _env() -> dict[str, str]:
    return {"RECSYS_ADMIN_TOKEN": TOKEN}


def test_two_replicas_converge_and_an_acknowledged_upsert_survives_kill_9(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m", version=1)
    args = ["--metrics-port", "-1", "--poll-seconds", "0", "--journal-poll-seconds", "0.2"]
    a, target_a = spawn_server(tmp_path, args, timeout_s=120, env=_env())
    b, target_b = spawn_server(tmp_path, args, timeout_s=120, env=_env())
    try:
        with RecommenderClient(target_a, admin_token=TOKEN) as ca, RecommenderClient(target_b, admin_token=TOKEN) as cb:
            assert ca.upsert_items("m", [("fresh", "w1 w2 w3", "Fresh")]).added == 1
            assert _wait(lambda: _knows(cb, "m", "fresh"))  # within the journal poll interval
            assert cb.delete_items("m", ["fresh"]).deleted == 1
            assert _wait(lambda: ca.list_models().models[0].versions[0].deleted_items == 1)
            assert "fresh" not in _all_ids(ca, "m") | _all_ids(cb, "m")
            ack = ca.upsert_items("m", [("durable", "w7 w8", "")])
        os.kill(a.pid, signal.SIGKILL)  # right after the acknowledgement
        a.wait(10)
        a, target_a = spawn_server(tmp_path, args, timeout_s=120, env=_env())
        with RecommenderClient(target_a) as ca:
            assert _knows(ca, "m", "durable")
            assert ca.list_models().models[0].versions[0].journal_seq == ack.journal_seq
    finally:
        for p in (a, b):
            if p.poll() is None:
                stop_server(p)


def test_sigterm_finishes_within_the_grace_period_with_a_stuck_encoder(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path)
    from server.spawn import free_port

    port = free_port()
    script = textwrap.dedent(f"""
        import sys, time
        import server.encoders
        real, calls = server.encoders.HistoryEncoder.run, []
        def stuck(self, payloads):  # the warm-up passes, then the encoder hangs as in native code
            calls.append(1)
            return real(self, payloads) if len(calls) == 1 else time.sleep(1000)
        server.encoders.HistoryEncoder.run = stuck
        from server import cli
        sys.exit(cli.main(["--repository", {str(tmp_path)!r}, "--host", "127.0.0.1", "--port", "{port}",
                           "--metrics-port", "-1", "--grace-seconds", "1", "--encoder-stall-seconds", "1000",
                           "--engine", "onnxruntime-cpu"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        client = RecommenderClient(f"127.0.0.1:{port}", timeout=60)
        assert _wait(lambda: client.health("") == "SERVING", 60)
        codes: list[grpc.StatusCode] = []

        def call() -> None:
            try:
                client.recommend("tiny-cllm", history=["i1"], top_k=2)
            except grpc.RpcError as exc:
                codes.append(exc.code())

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=20) in (0, 1)
        assert time.monotonic() - start < 1 + 5 + 3  # grace + the hard-exit margin, with slack
        t.join(10)
        assert codes and codes[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()

