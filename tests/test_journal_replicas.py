"""Catalogue changes through live gRPC servers sharing one repository: read-your-writes behind a round-robin
balancer, DeleteItems that reads the journal before checking ids (R8), an upsert that timed out is not
journalled later (R7), a version folder replaced in place is reloaded (R17). Rows refer to issue 29."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from polling import wait_for
from repo_fixtures import encode_text, running_server, write_tcf

from client import RecommenderClient
from repository import journal

TOKEN = "tok"


@contextlib.contextmanager
def _replicas(repo: Path, n: int = 2) -> Iterator[list]:
    """n in-process servers on one repository that never poll the journal on their own (journal poll 0):
    whatever one learns from another, it learns because a request asked for it."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(repo, admin_token=TOKEN, journal_poll_seconds=0.0))
               for _ in range(n)]


def _balanced(servers: list, **kwargs) -> RecommenderClient:
    """One client whose channel spreads calls over every replica, as a round-robin balancer does."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{srv.port}" for srv, _ in servers)
    return RecommenderClient(target, admin_token=TOKEN, options=[("grpc.lb_policy_name", "round_robin")],
                             **kwargs)


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details()


def _ports_used(servers: list, client: RecommenderClient) -> None:
    """Calls until every replica has answered this client (the balancer connects to each, then alternates)."""
    def answered() -> list[float]:
        return [srv.metrics.registry.get_sample_value("recsys_requests_total", {
            "method": "ListModels", "model": "", "code": "OK"}) or 0 for srv, _ in servers]

    before = answered()

    def spread() -> bool:
        client.list_models()
        return all(a > b for a, b in zip(answered(), before, strict=True))

    wait_for(spread, "the balancer to reach every replica")


def test_read_your_writes_across_two_replicas_behind_a_round_robin_balancer(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    with _replicas(tmp_path) as servers:
        with _balanced(servers) as client:
            _ports_used(servers, client)
            ack = client.upsert_items("m", [("fresh", "w1 w2 w3", "Fresh")])
            assert ack.journal_seq == 1 and client.token("m") == 1
            codes = []
            for _ in range(100):  # right after the acknowledgement, alternating replicas
                try:
                    codes.append(bool(client.recommend("m", history=["fresh"], top_k=3).items))
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
            assert codes == [True] * 100
            gone = client.delete_items("m", ["fresh"])  # whichever replica gets it has the item already
            assert gone.deleted == 1 and gone.journal_seq == 2
            for _ in range(10):
                assert "fresh" not in {i for i, _ in client.recommend("m", user_id="u1", top_k=40).items}
        # without the token, the replica that did not answer the upsert still has not heard of it
        with _balanced(servers, consistent=False) as blind:
            _ports_used(servers, blind)
            blind.upsert_items("m", [("other", "w4 w5", "")])
            results = []
            for _ in range(10):
                try:
                    results.append(bool(blind.recommend("m", history=["other"], top_k=3).items))
                except grpc.RpcError as exc:
                    results.append(exc.code() == grpc.StatusCode.NOT_FOUND and "NOT_FOUND")
            assert "NOT_FOUND" in results and True in results


def test_a_replica_that_cannot_reach_the_token_says_unavailable(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    with running_server(tmp_path, admin_token=TOKEN, journal_poll_seconds=0.0, consistency_wait_seconds=0.2) as (
            srv, c):
        c.upsert_items("m", [("a", "w1", "")])
        with RecommenderClient(f"127.0.0.1:{srv.port}", min_journal_seq=5) as ahead:
            code, msg = _code(ahead.recommend, "m", history=["a"], top_k=2)
            assert code == grpc.StatusCode.UNAVAILABLE and "not yet 5" in msg and "retry" in msg, msg
        assert c.recommend("m", history=["a"], top_k=2).journal_seq == 1


# ---- R8: DeleteItems reads what other replicas appended before checking ids ----
def test_delete_of_an_item_another_replica_just_added(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    with _replicas(tmp_path) as [(_, a), (_, b)]:
        b.consistent = False  # no token: the replica must read the journal by itself before checking ids
        for j in range(10):
            a.upsert_items("m", [(f"new{j}", "w1 w2", "")])
            assert b.delete_items("m", [f"new{j}"]).deleted == 1


# ---- R7: an upsert that already answered DEADLINE_EXCEEDED is never journalled later ----
def test_an_upsert_past_its_deadline_is_not_journalled(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    with running_server(tmp_path, admin_token=TOKEN) as (srv, c):
        release, done = threading.Event(), threading.Event()
        with srv.registry.use("m") as mv:
            real = mv.encode_texts

            def slow(texts):  # the item encoder is slower than the client's deadline
                release.wait(30)
                return real(texts)

            mv.encode_texts = slow
            real_upsert = srv.admin._upsert

            def upsert(*args):
                try:
                    return real_upsert(*args)
                finally:
                    done.set()

            srv.admin._upsert = upsert
            with RecommenderClient(f"127.0.0.1:{srv.port}", admin_token=TOKEN, timeout=0.5) as hasty:
                code, _ = _code(hasty.upsert_items, "m", [("late", "w1 w2", "")])
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            assert done.wait(30)
            mv.encode_texts = real
        later = c.upsert_items("m", [("on-time", "w3", "")])
        assert later.journal_seq == 1
        records = journal.read_new(tmp_path / "m" / journal.JOURNAL).records
        assert [r.item_id for r in records] == ["on-time"]


# ---- R17: a version folder replaced in place under the same number is reloaded ----
def test_a_version_replaced_in_place_is_reloaded(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m", seed=1)
    with running_server(tmp_path, admin_token=TOKEN) as (srv, c):
        c.upsert_items("m", [("fresh", "w1 w2 w3", "")])
        staged = tmp_path / "staging"
        other = write_tcf(staged, name="m", seed=7)  # another item tower, same version number
        old = tmp_path / "m" / "1"
        shutil.move(str(old), str(tmp_path / "old-1"))
        shutil.move(str(other.path), str(old))
        assert "m:1" in c.reload().loaded
        with srv.registry.use("m") as mv:
            cat = mv.catalogue
            assert np.allclose(cat.vectors([cat.row("fresh")])[0], encode_text(other.extra["T"], "w1 w2 w3"),
                               atol=1e-6)  # the journal was replayed by the new content's item tower
            assert np.allclose(cat.base.vectors, other.item_vectors)
        assert not c.reload().loaded  # unchanged since: not reloaded by every scan
        wait_for(lambda: c.recommend("m", history=["fresh"], top_k=2).items, "the reloaded version to answer")


def test_replicas_on_a_redis_stream_read_their_writes(tmp_path: Path) -> None:
    """The same through `--journal redis://...`: no shared volume for the log, a real redis-server."""
    from redis_server import redis_server

    write_tcf(tmp_path, name="m")
    with redis_server(tmp_path / "redis") as redis, contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(tmp_path, admin_token=TOKEN, journal_poll_seconds=0.0,
                                                      journal=redis.url)) for _ in range(2)]
        with _balanced(servers) as client:
            _ports_used(servers, client)
            assert client.upsert_items("m", [("fresh", "w1 w2 w3", "Fresh")]).journal_seq == 1
            assert all(client.recommend("m", history=["fresh"], top_k=3).items for _ in range(20))
            assert client.delete_items("m", ["fresh"]).journal_seq == 2
        assert not (tmp_path / "m" / journal.JOURNAL).exists()  # the log is the stream, not a file
    with redis_server(tmp_path / "redis2") as redis, running_server(tmp_path, admin_token=TOKEN,
                                                                    journal=redis.url) as (_, c):
        assert c.list_models().models[0].versions[0].journal_seq == 0  # another Redis: another log


def test_an_unreachable_redis_journal_is_a_retryable_answer_and_a_one_line_compact_error(tmp_path: Path,
                                                                                         capsys) -> None:
    """Reading the log fails (Redis down): a token or a delete gets UNAVAILABLE, never INTERNAL; the
    operator's compaction says so in one line."""
    from redis_server import redis_server

    from llmrec.client_cli import journal_compact_main

    write_tcf(tmp_path, name="m")
    with redis_server(tmp_path / "redis") as redis, running_server(tmp_path, admin_token=TOKEN, journal_poll_seconds=0.0,
                                                                   journal=redis.url) as (srv, c):
        c.upsert_items("m", [("a", "w1", "")])
        url = redis.url
        redis.kill9()
        with RecommenderClient(f"127.0.0.1:{srv.port}", min_journal_seq=5) as ahead:
            code, msg = _code(ahead.recommend, "m", history=["a"], top_k=2)
            assert code == grpc.StatusCode.UNAVAILABLE and "cannot read the item journal" in msg, msg
        code, msg = _code(c.delete_items, "m", ["a"])
        assert code == grpc.StatusCode.UNAVAILABLE and "nothing was changed" in msg, msg
        assert c.recommend("m", history=["a"], top_k=2).items  # still serving what it has
    capsys.readouterr()  # the server's log lines
    assert journal_compact_main(["--model", "m", "--journal", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmrec journal compact: cannot compact") and "\n" not in err, err


def test_a_version_refused_during_a_redis_outage_is_retried_by_later_scans_with_back_off(tmp_path: Path) -> None:
    """A new version cannot be brought up to date while Redis is down, so it is refused; nothing is wrong
    with its files, so a later scan (not only ReloadModels) loads it once Redis is back, with the change
    acknowledged before the outage. Between tries the scans back off: one poll interval, then twice that."""
    from redis_server import redis_server

    write_tcf(tmp_path, name="m")
    now = [1000.0]
    with redis_server(tmp_path / "redis") as redis, running_server(tmp_path, admin_token=TOKEN, journal_poll_seconds=0.0,
                                                                   journal=redis.url) as (srv, c):
        srv.reloader.clock = lambda: now[0]
        srv.cfg.reload.poll_seconds = 10.0  # the scans below stand in for the poller's
        c.upsert_items("m", [("a", "w1", "")])
        redis.kill9()
        write_tcf(tmp_path, name="m", version=2, seed=2)
        first = srv.reloader.reload_now()
        assert first.serving == ["m:1"] and len(first.refused) == 1, first
        assert "item journal unreachable" in first.refused[0] and "retried in 10 s" in first.refused[0], first
        assert c.recommend("m", history=["a"], top_k=2).items  # the old version keeps serving
        assert srv.reloader.reload_now().refused == []  # backing off: not tried again yet
        now[0] += 11
        second = srv.reloader.reload_now()
        assert len(second.refused) == 1 and "retried in 20 s" in second.refused[0], second  # doubled
        redis.start()
        assert srv.reloader.reload_now().serving == ["m:1"]  # still backing off
        now[0] += 21
        third = srv.reloader.reload_now()
        assert third.loaded == ["m:2"] and third.serving == ["m:2"], third
        answer = c.recommend("m", history=["a"], top_k=2)  # "a" exists in v2 only through the journal replay
        assert answer.items and answer.version == 2, answer
