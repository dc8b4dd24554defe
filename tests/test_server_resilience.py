"""Serving that never wedges: deadline storms, dead or stuck encoder workers, one slow model beside a
cheap one, memory across swaps, malformed payloads. Assertions are on outcomes, never on timings
(a deadline here is only ever a bound far above what the cheap path needs)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ROOT
from polling import eventually
from repo_fixtures import running_server, write_cllm4rec, write_tcf

from client import RecommenderClient
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from server import errors
from server.batching import DynamicBatcher

TOKEN = "tok"


def _wait(predicate, timeout: float = 20.0) -> bool:
    return eventually(predicate, timeout)


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details()


@pytest.fixture
def env(tmp_path: Path):
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path)
    with running_server(tmp_path, admin_token=TOKEN, watchdog_seconds=0.05, encoder_stall_seconds=0.5,
                        max_wait_ms=0.0, queue_size=512,
                        encoder_instances=1) as (srv, client):  # one worker: a gated batch holds the queue still
        yield srv, client


@pytest.fixture
def patient_env(tmp_path: Path):
    """As `env`, with a stall limit (10 s) far above any encoder run a test makes slow on purpose: for tests
    of something other than the watchdog, on a machine loaded enough that a 0.1 s run takes 0.5 s."""
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path)
    with running_server(tmp_path, admin_token=TOKEN, watchdog_seconds=0.05, encoder_stall_seconds=10.0,
                        max_wait_ms=0.0, queue_size=512, encoder_instances=1) as (srv, client):
        yield srv, client


def _batcher(srv, model: str = "tiny-cllm") -> DynamicBatcher:
    with srv.registry.use(model) as mv:
        assert mv.batcher is not None
        return mv.batcher


def _restarts(srv, reason: str) -> float:
    return srv.metrics.registry.get_sample_value("recsys_worker_restarts_total",
                                                 {"model": "tiny-cllm", "reason": reason}) or 0.0


# 2000 history requests with deadlines of 1-50 ms, all in flight at once; prints the status codes counted.
STORM = textwrap.dedent("""
    import json, random, sys
    import grpc
    from recsys.v1 import recommender_pb2 as pb, recommender_pb2_grpc as pb_grpc
    port, n, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        futures = [stub.Recommend.future(pb.RecommendRequest(model="tiny-cllm", history=[f"i{i % 30}", "i2"], top_k=3),
                                         timeout=rng.uniform(0.001, 0.05)) for i in range(n)]
        codes = {}
        for f in futures:
            try:
                f.result()
                name = "OK"
            except grpc.RpcError as exc:
                name = exc.code().name
            codes[name] = codes.get(name, 0) + 1
    print(json.dumps(codes))
""")


def _recommend_calls(srv) -> dict[str, float]:
    """Recommend RPCs so far, any model: 'received' (handed to the server by the transport) and the status
    codes our handler ended them with."""
    out: dict[str, float] = {}
    for metric in srv.metrics.registry.collect():
        for s in metric.samples:
            if s.labels.get("method") != "Recommend":
                continue
            key = "received" if s.name == "recsys_rpcs_received_total" else \
                s.labels["code"] if s.name == "recsys_requests_total" else None
            if key is not None:
                out[key] = out.get(key, 0.0) + s.value
    return out


def _settled(srv, b: DynamicBatcher, quiet_s: float = 1.0) -> Callable[[], bool]:
    """A predicate for eventually(): the encoder and the read pool idle, and no Recommend RPC received or
    ended for `quiet_s`. The transport goes on handing over the storm's calls for a while after the storm's
    client has seen them all end (hundreds of them, on a loaded machine)."""
    last: dict[str, Any] = {"counts": None, "since": time.monotonic()}

    def check() -> bool:
        counts = _recommend_calls(srv)
        if counts != last["counts"] or b._queue or b.running or srv.reads.pending:
            last.update(counts=counts, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= quiet_s

    return check


def _since(before: dict[str, float], now: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0.0)) for k, v in now.items() if v != before.get(k, 0.0)}


def test_deadline_storm_leaves_the_batcher_serving(env) -> None:
    srv, _ = env
    b = _batcher(srv)
    original = b._run

    def slow(payloads):
        time.sleep(0.005)
        return original(payloads)

    b._run = slow
    threads_before = threading.active_count()
    # The storm comes from a process of its own, as a real client's would: when it shared this process's gRPC
    # core with the server and the well-behaved client below, that client's first call was, rarely and only
    # under CPU hogs, ended CANCELLED inside this process without reaching the servicer (issue #30).
    out = subprocess.run([sys.executable, "-c", STORM, str(srv.port), "2000", "0"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    codes: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    b._run = original
    # the server is still working off the storm (abandoned calls leave the queue and the read pool, the
    # transport hands over the last of them): wait for that, as a client backing off would, before checking
    # that normal requests are served normally
    assert eventually(_settled(srv, b), 60, interval=0.1)
    # CANCELLED comes from grpcio's transport, for calls that never reached the servicer: the server-side
    # deadline timer firing first, and its HTTP/2 reset-flood protection against a client that abandons
    # thousands of streams at once (as this one does)
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"}, codes
    assert codes.get("DEADLINE_EXCEEDED", 0) + codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes
    # a well-behaved client on a connection of its own (the storm's may have been closed by the server's
    # reset-flood protection; grpcio would otherwise share one connection between channels to one target)
    before = _recommend_calls(srv)
    with RecommenderClient(f"127.0.0.1:{srv.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
        for j in range(20):
            try:
                assert fresh.recommend("tiny-cllm", history=[f"i{j}"], top_k=3, timeout=10).items
            except grpc.RpcError as exc:  # rare under heavy machine load (issue #30): say who ended the call
                pytest.fail(f"fresh request {j}: {exc.code().name} {exc.details()!r}; {exc.debug_error_string()}; "
                            f"Recommend RPCs since the storm ended (received, then the codes our handler sent): "
                            f"{_since(before, _recommend_calls(srv))}; storm codes {codes}")
        assert fresh.health("tiny-cllm") == "SERVING"
    assert b.workers_alive and b.restarts == 0
    assert _wait(lambda: not b._queue and not b.running)  # no job left behind
    assert threading.active_count() <= threads_before + 1  # no stuck threads


def test_dead_encoder_worker_turns_the_model_not_serving_and_recovers(env) -> None:
    srv, c = env
    b = _batcher(srv)
    original = b._run
    gate = threading.Event()
    calls = []

    def dying(payloads):
        calls.append(len(payloads))
        if len(calls) == 1:
            raise SystemExit  # kills the worker thread, as nothing else can
        gate.wait(10)
        return original(payloads)

    b._run = dying
    try:
        code, msg = _code(c.recommend, "tiny-cllm", history=["i1"], top_k=3, timeout=10)
        assert code == grpc.StatusCode.UNAVAILABLE and "died" in msg, msg
        assert _restarts(srv, "died") == 1
        assert c.health("tiny-cllm") == "NOT_SERVING"  # the probe through the new worker waits on the gate
        code, msg = _code(c.recommend, "tiny-cllm", history=["i1"], top_k=3, timeout=10)
        assert code == grpc.StatusCode.UNAVAILABLE and "being restarted" in msg
        assert c.recommend("tiny-cllm", user_id="u1", top_k=3).items  # known users need no encoder
        assert c.health("tiny-tcf") == c.health("") == "SERVING"
    finally:
        gate.set()
    assert _wait(lambda: c.health("tiny-cllm") == "SERVING")
    b._run = original
    assert c.recommend("tiny-cllm", history=["i1"], top_k=3, timeout=10).items
    assert srv.metrics.registry.get_sample_value("recsys_model_serving", {"model": "tiny-cllm"}) == 1


def test_stuck_encoder_worker_is_replaced_and_its_late_result_dropped(env) -> None:
    srv, c = env
    b = _batcher(srv)
    original = b._run
    release = threading.Event()
    first = []

    def stuck(payloads):
        if not first:
            first.append(1)
            release.wait(10)  # far beyond encoder_stall_seconds
        return original(payloads)

    b._run = stuck
    try:
        code, msg = _code(c.recommend, "tiny-cllm", history=["i1"], top_k=3, timeout=10)
        assert code == grpc.StatusCode.UNAVAILABLE and "stalled" in msg, msg
        assert _wait(lambda: c.health("tiny-cllm") == "SERVING")
        assert c.recommend("tiny-cllm", history=["i2"], top_k=3, timeout=10).items
    finally:
        release.set()  # the abandoned thread wakes up; its result must go nowhere
    b._run = original
    assert _wait(lambda: _restarts(srv, "stalled") == 1)
    assert c.recommend("tiny-cllm", history=["i3"], top_k=3, timeout=10).items


def test_cancelled_request_leaves_the_queue_and_never_runs(env) -> None:
    srv, c = env
    b = _batcher(srv)
    original = b._run
    gate = threading.Event()
    ran: list[int] = []

    def gated(payloads):
        gate.wait(10)
        ran.append(len(payloads))
        return original(payloads)

    b._run = gated
    stub = pb_grpc.RecommenderStub(c.channel)
    try:
        first = stub.Recommend.future(pb.RecommendRequest(model="tiny-cllm", history=["i1"], top_k=3), timeout=10)
        assert _wait(lambda: bool(b.running))
        second = stub.Recommend.future(pb.RecommendRequest(model="tiny-cllm", history=["i2"], top_k=3), timeout=10)
        assert _wait(lambda: len(b._queue) == 1)
        second.cancel()
        assert _wait(lambda: not b._queue)  # the server saw the cancellation and freed the slot
    finally:
        gate.set()
    assert first.result().items
    b._run = original
    assert ran == [1]


def test_cheap_model_keeps_answering_while_a_slow_model_is_flooded(patient_env) -> None:
    srv, c = patient_env
    b = _batcher(srv)
    original = b._run

    def slow(payloads):
        time.sleep(0.1)
        return original(payloads)

    b._run = slow
    stop = threading.Event()
    flood_codes: dict[str, int] = {}
    lock = threading.Lock()

    def flood(j: int) -> None:
        while not stop.is_set():
            try:
                c.recommend("tiny-cllm", history=[f"i{j % 30}"], top_k=3, timeout=30)
                name = "OK"
            except grpc.RpcError as exc:
                name = exc.code().name
            with lock:
                flood_codes[name] = flood_codes.get(name, 0) + 1

    with ThreadPoolExecutor(32) as pool:
        for j in range(32):
            pool.submit(flood, j)
        try:
            assert _wait(lambda: len(b._queue) >= 8)  # the slow model is saturated
            cheap = [c.recommend("tiny-tcf", user_id=f"u{j % 8}", top_k=3, timeout=1.0) for j in range(50)]
        finally:
            stop.set()
    b._run = original
    assert all(r.items for r in cheap)
    assert set(flood_codes) <= {"OK", "RESOURCE_EXHAUSTED"} and flood_codes.get("OK", 0) > 0, flood_codes


def test_swapped_out_versions_are_freed_without_garbage_collection(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m", version=1)
    with running_server(tmp_path, admin_token=TOKEN) as (srv, c):
        c.upsert_items("m", [("new-item", "w1 w2 w3", "New")])
        refs = []
        gc.collect()
        gc.disable()
        try:
            for v in range(2, 22):
                with srv.registry.use("m") as mv:  # the version and what holds its ONNX sessions
                    refs += [weakref.ref(mv), weakref.ref(mv.batcher), weakref.ref(mv.history_encoder)]
                    del mv
                assert c.recommend("m", history=["t1", "new-item"], top_k=3).items
                assert c.recommend("m", user_id="u1", top_k=3).items
                write_tcf(tmp_path, name="m", version=v, seed=v)
                assert f"m:{v}" in c.reload().loaded
            _wait(lambda: all(r() is None for r in refs))  # the retired versions' worker threads exit
            alive = [r() for r in refs if r() is not None]
            assert not alive, [type(x).__name__ for x in alive]
        finally:
            gc.enable()
        with srv.registry.use("m") as mv:
            assert mv.version == 21 and mv.catalogue.row("new-item") is not None


def test_upsert_limits_and_malformed_payloads_get_invalid_argument(env) -> None:
    srv, c = env
    items = [(f"x{i}", "w1 w2", "") for i in range(srv.cfg.limits.max_upsert_items + 1)]
    code, msg = _code(c.upsert_items, "tiny-tcf", items)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"at most {srv.cfg.limits.max_upsert_items}" in msg
    code, msg = _code(c.upsert_items, "tiny-tcf", [("x", "w" * (srv.cfg.limits.max_text_len + 1))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-text-len" in msg
    raw = c.channel.unary_unary("/recsys.v1.Recommender/Recommend", request_serializer=None,
                                response_deserializer=pb.RecommendResponse.FromString)
    bad_utf8 = b"\x0a\x08tiny-tcf" + b"\x1a\x02\xff\xfe" + b"\x28\x03"  # user_id = bytes 0xff 0xfe
    for payload in (bad_utf8, b"\xff\xff\xff\xff"):
        code, msg = _code(raw, payload, timeout=5)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid recsys.v1.RecommendRequest" in msg, msg
    get = srv.metrics.registry.get_sample_value
    # counted once the handler has finished (just after the client got its answer)
    assert _wait(lambda: get("recsys_requests_total",
                             {"method": "Recommend", "model": "", "code": "INVALID_ARGUMENT"}) == 2)
    long_name = "m" * 10_000
    code, msg = _code(c.recommend, long_name, user_id="u1", top_k=3)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(msg) < 300
    assert c.recommend("tiny-tcf", user_id="u1", top_k=3).items


def test_batcher_sheds_by_expected_wait_and_by_the_cap() -> None:
    gate = threading.Event()

    def run(payloads):
        gate.wait(5)
        return [[float(p)] for p in payloads]

    b = DynamicBatcher("m", run, max_batch_size=1, max_wait_ms=0, queue_size=8, max_queue_wait_s=2.5)
    b.observe(1.0, 1)  # one second per request, as measured
    first = b.submit(1)  # runs now
    second = b.submit(2, deadline=time.monotonic() + 30)  # fits its deadline
    with pytest.raises(errors.ServingError, match="remaining deadline") as info:
        b.submit(3, deadline=time.monotonic() + 0.5)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(errors.ServingError, match="--max-queue-wait-ms"):
        b.submit(4)  # no deadline: ~3 s expected > the 2.5 s cap
    gate.set()
    assert first.result(5) == [1.0] and second.result(5) == [2.0]
    b.close()
    b.join(2)
