"""Issue 30: the event loop runs no request-sized work, reads and admin calls have their own bounded pools,
limits answer with clear statuses, a hung encoder cannot leak threads without end, retired versions stay
supervised, admin calls never answer OK for changes they did not apply, and the queue-depth metric counts
every version. Each test waits by polling (tests/polling.py) and asserts outcomes, never timings."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from polling import eventually, wait_for
from repo_fixtures import running_server, write_cllm4rec, write_tcf

import repository.journal
from client import RecommenderClient
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.batching import DynamicBatcher
from server.catalogue import Catalogue
from server.metrics import Metrics
from server.watchdog import Watchdog

TOKEN = "tok"


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code(), info.value.details()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Any, RecommenderClient]]:
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path, index_type="ivf")
    with running_server(tmp_path, admin_token=TOKEN, threads=4, admin_threads=2, admin_queue_size=4,
                        max_batch_ids=5000, max_message_mb=1.0, encoder_instances=1) as (srv, client):
        yield srv, client


# ---- R9: no search on the event loop ----
def test_no_search_of_any_backend_runs_on_the_event_loop(env, monkeypatch) -> None:
    _, c = env
    threads: list[str] = []
    original = Catalogue.search

    def recording(self, query, k, excluded):
        threads.append(threading.current_thread().name)
        return original(self, query, k, excluded)

    monkeypatch.setattr(Catalogue, "search", recording)
    c.upsert_items("tiny-tcf", [("delta-1", "w31 w32 w33")])  # the tcf model now searches its delta index too
    assert c.recommend("tiny-cllm", user_id="u1", top_k=3).items  # flat, known user
    assert c.recommend("tiny-cllm", history=["i1", "i2"], top_k=3).items  # flat, encoder
    assert c.recommend("tiny-tcf", user_id="u1", top_k=3).items  # IVF + delta, known user
    assert c.recommend("tiny-tcf", history=["delta-1"], top_k=3).items  # IVF + delta, encoder
    reqs = [c.request("tiny-cllm", user_id="u2", top_k=3, exclude_item_ids=[f"i{j}" for j in range(20)]),
            c.request("tiny-tcf", history=["t1"], top_k=3)] * 8
    assert len(c.recommend_batch(reqs)) == 16
    assert len(threads) == 4 + 16
    assert "grpc-aio" not in threads, threads
    assert all(name.startswith("read") for name in threads[:4]), threads  # single calls: the read pool
    assert all(name.startswith("batch") for name in threads[4:]), threads  # RecommendBatch: the batch pool


def test_a_batch_stuck_in_search_stalls_no_other_rpc(env) -> None:
    srv, c = env
    with srv.registry.use("tiny-tcf") as mv:
        index = mv.catalogue.base.index
    gate, entered = threading.Event(), threading.Event()
    original = index.search

    def held(queries, k):
        entered.set()
        gate.wait(30)
        return original(queries, k)

    index.search = held
    stub = pb_grpc.RecommenderStub(c.channel)
    excluded = [f"t{j}" for j in range(30)]
    big = pb.RecommendBatchRequest(requests=[
        pb.RecommendRequest(model="tiny-tcf", user_id=f"u{j % 8}", top_k=5, exclude_item_ids=excluded)
        for j in range(100)])
    try:
        pending = stub.RecommendBatch.future(big, timeout=60)
        wait_for(entered.is_set, "the batch to reach the index search")
        # while it is held, every other kind of RPC still answers (on the loop or another read thread)
        assert c.recommend("tiny-cllm", user_id="u1", top_k=3, timeout=10).items
        assert c.recommend("tiny-cllm", history=["i3"], top_k=3, timeout=10).items
        assert {m.name for m in c.list_models().models} == {"tiny-cllm", "tiny-tcf"}
        assert c.health("tiny-cllm") == "SERVING"
        assert not pending.done()
    finally:
        gate.set()
        index.search = original
    assert len(pending.result().responses) == 100


# ---- R6: admin calls have their own bounded pool ----
def test_admin_calls_stuck_on_a_slow_disk_starve_no_read(tmp_path: Path, monkeypatch) -> None:
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path)
    # a flat catalogue large enough (4200 x 1024) that even the old server searched it off the loop, on the
    # one pool it shared with admin calls: there, known-user reads of this model timed out behind the upserts
    write_tcf(tmp_path, name="big", num_items=4200, dim=1024, user_tower="dssm")
    with running_server(tmp_path, admin_token=TOKEN, threads=4, admin_threads=2, admin_queue_size=4) as (srv, c):
        _starve_reads(srv, c, monkeypatch)


def _starve_reads(srv: Any, c: RecommenderClient, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    original = repository.journal.append

    def slow_disk(*args, **kwargs):
        gate.wait(60)  # an fsync on a dead NFS server
        return original(*args, **kwargs)

    monkeypatch.setattr(repository.journal, "append", slow_disk)
    admin = RecommenderClient(f"127.0.0.1:{srv.port}", admin_token=TOKEN, timeout=60)
    capacity = srv.cfg.pools.admin_threads + srv.cfg.pools.admin_queue_size  # 2 running + 4 waiting: the six
    pool = ThreadPoolExecutor(capacity)
    try:
        upserts = [pool.submit(admin.upsert_items, "tiny-tcf", [(f"slow-{j}", "w1 w2")]) for j in range(capacity)]
        wait_for(lambda: srv.admin_pool.pending == capacity, "every admin slot to be taken")
        code, msg = _code(admin.upsert_items, "tiny-tcf", [("one-more", "w1")])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "admin pool is saturated" in msg, msg
        for j in range(20):  # reads on every model, both paths, while every admin thread waits on the disk
            assert c.recommend("big", user_id=f"u{j % 8}", top_k=3, timeout=10).items
            assert c.recommend("tiny-cllm", user_id=f"u{j % 10}", top_k=3, timeout=10).items
            assert c.recommend("tiny-tcf", history=[f"t{j}"], top_k=3, timeout=10).items
        assert not any(f.done() for f in upserts)
    finally:
        gate.set()
        results = [f.result(60) for f in upserts]
        pool.shutdown()
        admin.close()
    assert sorted(r.added for r in results) == [1] * capacity


# ---- limits ----
def test_limits_on_batch_ids_message_size_reads_and_concurrent_rpcs(env, tmp_path: Path) -> None:
    _, c = env
    many = [f"i{j % 30}" for j in range(1000)]
    reqs = [c.request("tiny-cllm", user_id="u1", top_k=3, exclude_item_ids=many)] * 6  # 6000 ids > 5000
    code, msg = _code(c.recommend_batch, reqs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "6000 item ids" in msg and "--max-batch-ids" in msg
    huge = [c.request("tiny-cllm", user_id="u1", top_k=3, exclude_item_ids=["x" * 200] * 1000)] * 6  # ~1.2 MB
    code, msg = _code(c.recommend_batch, huge)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
    assert c.recommend_batch(reqs[:5])  # 5000 ids: accepted, and parsed off the loop (> 16 KiB)

    write_cllm4rec(tmp_path / "repo")
    with running_server(tmp_path / "repo", threads=1, read_queue_size=1, max_concurrent_rpcs=4, queue_size=64,
                        max_batch_size=1, max_wait_ms=0.0, encoder_instances=1) as (small, sc):
        with small.registry.use("tiny-cllm") as mv:
            index, batcher = mv.catalogue.base.index, mv.batcher
        stub = pb_grpc.RecommenderStub(sc.channel)

        def known_user() -> Future:
            return stub.Recommend.future(pb.RecommendRequest(model="tiny-cllm", user_id="u1", top_k=2), timeout=60)

        # the read pool: 1 thread + 1 waiting, then RESOURCE_EXHAUSTED at once
        gate = threading.Event()
        original = index.search
        index.search = lambda q, k: (gate.wait(30), original(q, k))[1]
        try:
            held = [known_user(), known_user()]
            wait_for(lambda: small.reads.pending == 2, "the read pool to fill")
            code, msg = _code(sc.recommend, "tiny-cllm", user_id="u2", top_k=2)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "read pool is saturated" in msg, msg
        finally:
            gate.set()
            index.search = original
        assert all(f.result().items for f in held)
        # concurrent RPCs: 4 history requests waiting for a held encoder, then RESOURCE_EXHAUSTED at once
        gate = threading.Event()
        run = batcher._run
        batcher._run = lambda payloads: (gate.wait(30), run(payloads))[1]
        try:
            held = []
            for j in range(4):  # one at a time: each first passes the 1-thread read pool
                held.append(stub.Recommend.future(pb.RecommendRequest(model="tiny-cllm", history=[f"i{j}"], top_k=2),
                                                  timeout=60))
                wait_for(lambda j=j: batcher.running + batcher.depth == j + 1, f"{j + 1} RPCs at the encoder")
            code, msg = _code(sc.list_models)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
        finally:
            gate.set()
            batcher._run = run
        assert all(f.result().items for f in held)
        assert sc.recommend("tiny-cllm", user_id="u1", top_k=2).items


# ---- S3: an admin call never answers OK for a change it did not apply ----
def test_upsert_the_answering_version_fails_to_apply_is_not_ok(env) -> None:
    srv, c = env
    with srv.registry.use("tiny-tcf") as mv:
        original = mv.apply_journal

        def broken(records, through, vectors=None, fresh=False):
            if records:
                raise RuntimeError("apply failed")
            return original(records, through, vectors, fresh)

        mv.apply_journal = broken
        try:
            code, msg = _code(c.upsert_items, "tiny-tcf", [("fresh", "w1 w2 w3")])
        finally:
            mv.apply_journal = original
    assert code == grpc.StatusCode.INTERNAL and "journalled" in msg and "next journal poll" in msg, msg
    get = srv.metrics.registry.get_sample_value
    assert get("recsys_journal_apply_failures_total", {"model": "tiny-tcf"}) == 1
    # durable: the journal tail applies it (and the same upsert again answers, idempotently)
    wait_for(lambda: c.recommend("tiny-tcf", history=["fresh"], top_k=1, include_history=True).items[0][0]
             == "fresh", "the journalled item to be applied by the tail", ignore=(grpc.RpcError,))


# ---- S5: the queue-depth metric sums every version of a model ----
def test_queue_depth_counts_every_loaded_version(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path, version=1)
    write_cllm4rec(tmp_path, version=2, seed=5)
    with running_server(tmp_path, pins=("tiny-cllm:1",), encoder_instances=1, max_batch_size=1,
                        max_wait_ms=0.0) as (srv, c):
        loaded = srv.registry.loaded()["tiny-cllm"]
        assert set(loaded) == {1, 2}
        old = loaded[1].batcher
        gate = threading.Event()
        original = old._run
        old._run = lambda payloads: (gate.wait(30), original(payloads))[1]
        stub = pb_grpc.RecommenderStub(c.channel)
        try:
            held = [stub.Recommend.future(pb.RecommendRequest(model="tiny-cllm", version=1, history=[f"i{j}"],
                                                              top_k=2), timeout=60) for j in range(3)]
            wait_for(lambda: old.running == 1 and old.depth == 2, "one running and two queued on version 1")
            for j in range(5):  # version 2's batcher takes and finishes its own jobs meanwhile
                assert c.recommend("tiny-cllm", history=[f"i{j}"], top_k=2).version == 2
            get = srv.metrics.registry.get_sample_value
            assert get("recsys_queue_depth", {"model": "tiny-cllm"}) == 2
        finally:
            gate.set()
            old._run = original
        assert all(f.result().items for f in held)
        wait_for(lambda: srv.metrics.registry.get_sample_value("recsys_queue_depth", {"model": "tiny-cllm"}) == 0,
                 "the queue to drain")


# ---- R12: a hung encoder: back-off, a bounded number of threads, /healthz fails ----
class _Version:
    """What the watchdog reads from a model version."""

    def __init__(self, batcher: DynamicBatcher, name: str = "m", version: int = 1) -> None:
        self.batcher, self.name, self.version = batcher, name, version

    def probe_payload(self) -> int:
        return 0


def _hanging(release: threading.Event):
    def run(payloads):
        release.wait()  # a driver call that never returns
        return [[1.0] for _ in payloads]

    return run


def test_hung_encoder_backs_off_then_gives_up_with_bounded_threads_and_healthz_fails() -> None:
    release = threading.Event()
    b = DynamicBatcher("m", _hanging(release), max_batch_size=1, max_wait_ms=0, queue_size=8, instances=2)
    metrics = Metrics()
    loaded = {"m": {1: _Version(b)}}
    wd = Watchdog(lambda: loaded, metrics, lambda name: None, interval=0, stall_seconds=0.01,
                  backoff_seconds=0.001, backoff_max_seconds=0.002, max_failed_restarts=3)
    port = metrics.serve_http(0, "127.0.0.1", alive=lambda: wd.healthy)
    try:
        b.submit(1)
        b.submit(2)  # both workers hang
        wait_for(lambda: (wd.check_once(), not wd.healthy)[1], "the watchdog to give up", interval=0.002)
        assert b.restarts == 3  # a restart at 0, 1 and 2 failed restarts; the 3rd failure ends it
        threads = b.threads
        assert threads <= b.instances * (3 + 1), threads  # the first hung pair + one pair per restart
        for _ in range(50):  # no more restarts, no more threads, however long it stays hung
            wd.check_once()
        assert b.restarts == 3 and b.threads <= threads
        assert wd.given_up == ["m v1"]
        assert metrics.registry.get_sample_value("recsys_watchdog_gave_up", {"model": "m"}) == 1
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert info.value.code == 503
    finally:
        metrics.stop_http()
        release.set()
        b.close()


def test_a_restart_that_did_not_recover_waits_for_its_back_off() -> None:
    release = threading.Event()
    b = DynamicBatcher("m", _hanging(release), max_batch_size=1, max_wait_ms=0, queue_size=8)
    loaded = {"m": {1: _Version(b)}}
    wd = Watchdog(lambda: loaded, Metrics(), lambda name: None, interval=0, stall_seconds=0.01,
                  backoff_seconds=3600.0, backoff_max_seconds=3600.0, max_failed_restarts=0)
    try:
        b.submit(1)
        wait_for(lambda: (wd.check_once(), b.restarts == 1)[1], "the first restart", interval=0.002)
        wait_for(lambda: b.check(0.01) == "stalled", "the probe to hang the new worker too")
        for _ in range(50):
            wd.check_once()
        assert b.restarts == 1 and b.threads == 2  # the next restart waits an hour, not a stall period
        assert wd.healthy  # max_failed_restarts=0: never gives up
    finally:
        release.set()
        b.close()


# ---- S1 / S2: retired versions ----
def test_a_swapped_out_version_finishing_requests_is_still_supervised(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path, version=1)
    with running_server(tmp_path, admin_token=TOKEN, watchdog_seconds=0.02, encoder_stall_seconds=0.2,
                        encoder_instances=1) as (srv, c):
        with srv.registry.use("tiny-cllm") as old:  # a request holding version 1 across the swap
            write_cllm4rec(tmp_path, version=2, seed=4)
            assert "tiny-cllm:2" in c.reload().loaded
            assert old in srv.registry.draining()
            release = threading.Event()
            old.batcher._run = _hanging(release)
            try:
                fut: Future = old.batcher.submit(old.probe_payload())
                wait_for(fut.done, "the watchdog to answer the retired version's stuck job")
                assert "stalled" in str(fut.exception())
            finally:
                release.set()
        wait_for(lambda: old.batcher.closed, "the retired version to close after its last request")
        assert old not in srv.registry.draining()
        assert c.recommend("tiny-cllm", history=["i1"], top_k=2).version == 2


def _retired_with_a_stuck_probe(release: threading.Event) -> tuple[weakref.ref, Watchdog]:
    b = DynamicBatcher("m", _hanging(release), max_batch_size=1, max_wait_ms=0, queue_size=8)
    loaded: dict[str, dict[int, _Version]] = {"m": {1: _Version(b)}}
    wd = Watchdog(lambda: loaded, Metrics(), lambda name: None, interval=0, stall_seconds=0.01,
                  backoff_seconds=3600.0, max_failed_restarts=0)
    b.submit(1)
    wait_for(lambda: (wd.check_once(), b.restarts == 1)[1], "the restart", interval=0.002)
    wait_for(lambda: b.running == 1, "the probe to hang in the new worker")
    loaded.clear()  # the version is unloaded; no watchdog round runs after this
    b.close()
    return weakref.ref(b), wd


def test_a_stuck_probe_does_not_keep_a_retired_batcher_alive() -> None:
    release = threading.Event()
    ref, _watchdog = _retired_with_a_stuck_probe(release)  # the watchdog lives on, as in a server
    assert ref() is not None  # the hung threads hold it: nothing in Python can end them
    release.set()  # the hung calls return; their threads end
    assert eventually(lambda: ref() is None), "the watchdog's probe entry keeps the retired batcher alive"


# ---- R10: deep searches on the GPU backend ----
class _GpuLike:
    """A CPU index that refuses k above the GPU limit, as FAISS's GPU indexes do."""

    def __init__(self, index: Any, max_k: int) -> None:
        self._index, self.max_k = index, max_k
        self.ntotal, self.d = index.ntotal, index.d

    def search(self, q: np.ndarray, k: int):
        if k > self.max_k:
            raise RuntimeError(f"k {k} > {self.max_k}")
        return self._index.search(q, k)

    def add(self, x: np.ndarray) -> None:
        self._index.add(x)


def test_gpu_index_returns_top_k_when_exclusions_fill_its_k_limit() -> None:
    import faiss

    from server.indexes.faiss_cpu import FaissCpu
    from server.indexes.faiss_gpu import GPU_MAX_K, GpuFaissIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(GPU_MAX_K + 500, 8)).astype(np.float32)
    cpu = faiss.IndexFlatIP(8)
    cpu.add(vectors)
    gpu = GpuFaissIndex(_GpuLike(faiss.clone_index(cpu), GPU_MAX_K), cpu)
    ids = [f"x{r}" for r in range(len(vectors))]
    cat = Catalogue.exported(gpu, ids, vectors, ids, FaissCpu.exact)
    query = rng.normal(size=8).astype(np.float32)
    order = np.argsort(-(vectors @ query), kind="stable")
    excluded = {int(r) for r in order[:GPU_MAX_K]}  # exclusions fill the whole GPU depth
    hits = cat.search(query, 10, excluded)
    assert [r for r, _ in hits] == [int(r) for r in order[GPU_MAX_K:GPU_MAX_K + 10]]
    assert [r for r, _ in cat.search(query, 10, set())] == [int(r) for r in order[:10]]  # shallow: the GPU
