"""Every status code the contract names, each with a message that says what was wrong."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from polling import wait_for
from repo_fixtures import running_server, write_cllm4rec, write_tcf

from server import errors
from server.batching import DynamicBatcher

TOKEN = "tok"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    write_cllm4rec(repo)
    write_tcf(repo, name="tiny-dssm", user_tower="dssm")
    with running_server(
        repo,
        admin_token=TOKEN,
        max_top_k=50,
        max_history_len=20,
        queue_size=1,
        max_batch_size=1,
        max_wait_ms=0.0,
        encoder_instances=1,  # one request encoding at a time, one queued: the admission tests count on it
    ) as (srv, client):
        yield srv, client


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details()


def test_invalid_argument(env) -> None:
    _, c = env
    cases = [
        (dict(user_id="u1", top_k=0), "top_k must be between 1 and 50"),
        (dict(user_id="u1", top_k=51), "top_k must be between 1 and 50"),
        (dict(top_k=5), "empty query"),
        (dict(history=["i1"] * 21, top_k=5), "at most 20"),
        (dict(history=["i1", ""], top_k=5), "history[1] is an empty string"),
        (dict(user_id="u" * 300, top_k=5), "at most 256"),
        (dict(user_id="u1", exclude_item_ids=[""], top_k=5), "exclude_item_ids[0]"),
    ]
    for kwargs, text in cases:
        code, msg = _code(c.recommend, "tiny-cllm", **kwargs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text in msg, (kwargs, msg)
    reqs = [c.request("tiny-cllm", user_id="u1", top_k=3), c.request("tiny-cllm", user_id="u1", top_k=0)]
    code, msg = _code(c.recommend_batch, reqs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("requests[1]: top_k")


def test_not_found(env) -> None:
    _, c = env
    code, msg = _code(c.recommend, "nope", user_id="u1", top_k=3)
    assert code == grpc.StatusCode.NOT_FOUND and "tiny-cllm" in msg  # lists the loaded models
    code, msg = _code(c.recommend, "tiny-cllm", user_id="u1", top_k=3, version=7)
    assert code == grpc.StatusCode.NOT_FOUND and "loaded versions: 1" in msg
    code, msg = _code(c.recommend, "tiny-cllm", user_id="stranger", top_k=3)
    assert code == grpc.StatusCode.NOT_FOUND and "unknown user 'stranger'" in msg and "history" in msg
    code, msg = _code(c.recommend, "tiny-cllm", history=["i1", "bogus"], top_k=3)
    assert code == grpc.StatusCode.NOT_FOUND and "'bogus'" in msg and "allow_unknown_items" in msg
    code, msg = _code(c.recommend, "tiny-cllm", history=["bogus"], top_k=3, allow_unknown_items=True)
    assert code == grpc.StatusCode.NOT_FOUND and "none of the 1 history items" in msg


def test_failed_precondition(env) -> None:
    _, c = env
    code, msg = _code(c.recommend, "tiny-dssm", history=["t1"], top_k=3)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "known users only" in msg
    code, msg = _code(c.upsert_items, "tiny-cllm", [("x", "some text")])
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "TCF" in msg


def test_admin_auth(env, tmp_path) -> None:
    from client import RecommenderClient

    bad = RecommenderClient(f"127.0.0.1:{env[0].port}", admin_token="wrong")
    code, msg = _code(bad.reload)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in msg
    bad.admin_token = None
    assert _code(bad.upsert_items, "tiny-dssm", [("x", "w1")])[0] == grpc.StatusCode.UNAUTHENTICATED
    bad.close()
    write_tcf(tmp_path)
    with running_server(tmp_path) as (_, open_client):  # no token configured: admin is off
        code, msg = _code(open_client.reload)
        assert (
            code == grpc.StatusCode.PERMISSION_DENIED
            and "--admin-token" in msg
            and "RECSYS_ADMIN_TOKEN" in msg
        )


def _slow_encoder(srv, seconds: float):
    with srv.registry.use("tiny-cllm") as mv:
        batcher = mv.batcher
    original = batcher._run

    def slow(payloads):
        time.sleep(seconds)
        return original(payloads)

    batcher._run = slow
    return batcher, original


def test_resource_exhausted_and_deadline(env) -> None:
    srv, c = env
    batcher, original = _slow_encoder(srv, 0.4)
    try:
        with ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(_code, c.recommend, "tiny-cllm", history=["i1"], top_k=2) for _ in range(1)]
            wait_for(lambda: batcher.running == 1, "the first request to be encoded")  # queue_size=1 holds one more
            futs += [pool.submit(c.recommend, "tiny-cllm", history=["i2"], top_k=2)]
            wait_for(lambda: batcher.depth == 1, "the second request to be queued")
            code, msg = _code(c.recommend, "tiny-cllm", history=["i3"], top_k=2)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in msg
            futs[1].result()
            # the measured 0.4 s per request cannot fit a 0.1 s deadline: shed at once, not timed out later
            code, msg = _code(c.recommend, "tiny-cllm", history=["i3"], top_k=2, timeout=0.1)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "expected wait" in msg, msg
    finally:
        batcher._run = original
    assert c.recommend("tiny-cllm", history=["i1"], top_k=2).items  # still serving


def test_batcher_drops_expired_requests_before_compute() -> None:
    ran: list[int] = []
    gate = threading.Event()

    def run(payloads):
        gate.wait(2)
        ran.extend(payloads)
        return [[float(p)] for p in payloads]

    b = DynamicBatcher("m", run, max_batch_size=4, max_wait_ms=0, queue_size=8)
    first = b.submit(1)
    wait_for(lambda: b.running == 1, "the first job to run")
    deadline = time.monotonic() + 0.01
    expired = b.submit(2, deadline=deadline)
    alive = b.submit(3, deadline=time.monotonic() + 30)
    wait_for(lambda: time.monotonic() > deadline, "the short deadline to pass")
    gate.set()
    assert first.result(2) == [1.0] and alive.result(2) == [3.0]
    with pytest.raises(errors.ServingError) as info:
        expired.result(2)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 2 not in ran
    b.close()
    b.join(2)


def test_unavailable_until_loaded_and_internal_errors_are_contained(env) -> None:
    srv, c = env
    srv.registry.ready = False
    try:
        code, msg = _code(c.recommend, "not-yet", user_id="u1", top_k=2)
        assert code == grpc.StatusCode.UNAVAILABLE and "still loading" in msg
    finally:
        srv.registry.ready = True
    batcher, original = _slow_encoder(srv, 0)

    def broken(payloads):
        raise ValueError("boom")

    batcher._run = broken
    try:
        code, msg = _code(c.recommend, "tiny-cllm", history=["i1"], top_k=2)
        assert code == grpc.StatusCode.INTERNAL and "ValueError" in msg
    finally:
        batcher._run = original
    assert c.recommend("tiny-cllm", history=["i1"], top_k=2).items
