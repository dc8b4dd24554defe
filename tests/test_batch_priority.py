"""Big batches beside single requests (issue 30, "big batch + admin storm"): a RecommendBatch is parsed request
by request (server/batch_parse.py), equal to protobuf's own parse for every input, and its thread steps aside
between requests while single requests are in flight (server/offload.py ReadPriority), never for longer than
its bound and never on the event loop. Outcomes are asserted, never timings."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from polling import wait_for
from repo_fixtures import running_server, write_tcf

from client import RecommenderClient
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.batch_parse import parse_batch
from server.offload import ReadPriority


def _batch(n: int, seed: int = 0) -> pb.RecommendBatchRequest:
    rng = random.Random(seed)
    return pb.RecommendBatchRequest(requests=[
        pb.RecommendRequest(model=f"m{i % 3}", user_id=f"u{i}é", top_k=rng.randint(1, 50), min_journal_seq=i * 1000,
                            history=[f"h{rng.randint(0, 99)}" for _ in range(rng.randint(0, 5))],
                            exclude_item_ids=[f"x{j}" for j in range(rng.randint(0, 300))])
        for i in range(n)])


def _outcome(fn: Any, raw: bytes) -> Any:
    try:
        return list(fn(raw))
    except DecodeError:
        return DecodeError


def test_the_piecewise_parse_equals_protobufs_for_valid_unknown_and_broken_messages() -> None:
    raw = _batch(40).SerializeToString()
    assert parse_batch(raw) == list(pb.RecommendBatchRequest.FromString(raw).requests)
    assert parse_batch(b"") == []
    # fields a newer client may send (varint, fixed64, fixed32, bytes, a group) are skipped as protobuf skips them
    unknown = b"\x10\x96\x01" + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x2a\x03abc" + b"\x33\x08\x01\x34"
    assert parse_batch(unknown + raw) == list(pb.RecommendBatchRequest.FromString(unknown + raw).requests)
    rng = random.Random(1)
    from_string = pb.RecommendBatchRequest.FromString
    errors = 0
    for _ in range(3000):  # mutated messages: the same requests, or an error wherever protobuf has one
        b = bytearray(_batch(3, rng.randint(0, 9)).SerializeToString())
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            op = rng.random()
            if op < 0.5:
                b[i] = rng.randrange(256)
            elif op < 0.75:
                b.insert(i, rng.randrange(256))
            else:
                del b[i:i + rng.randint(1, 4)]
        want = _outcome(lambda r: from_string(r).requests, bytes(b))
        assert _outcome(parse_batch, bytes(b)) == want, bytes(b)
        errors += want is DecodeError
    assert 0 < errors < 3000  # both kinds of input were exercised


def test_the_parse_calls_between_every_few_requests() -> None:
    calls = []
    parse_batch(_batch(20).SerializeToString(), lambda: calls.append(1), every=4)
    assert len(calls) == 5


def test_step_aside_waits_for_single_requests_in_flight_and_no_longer_than_its_bound() -> None:
    p = ReadPriority(max_wait_ms=60_000)
    p.step_aside()  # none in flight: returns at once (the test would hang otherwise)
    p.begin()
    done = threading.Event()
    t = threading.Thread(target=lambda: (p.step_aside(), done.set()))
    t.start()
    assert not done.wait(0.2)  # still waiting: a single request is in flight
    p.end()
    wait_for(done.is_set, "step_aside to return once no single request is in flight")
    t.join()
    bounded = ReadPriority(max_wait_ms=1)
    bounded.begin()  # a single request that never ends cannot hold batches up
    bounded.step_aside()
    off = ReadPriority(max_wait_ms=0)
    off.begin()
    off.step_aside()


class _Recording(ReadPriority):
    def __init__(self, max_wait_ms: float) -> None:
        super().__init__(max_wait_ms)
        self.asides: list[str] = []
        self.seen_active: list[int] = []

    def step_aside(self) -> None:
        self.asides.append(threading.current_thread().name)
        super().step_aside()

    def begin(self) -> None:
        super().begin()
        self.seen_active.append(self.active)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, RecommenderClient, _Recording]]:
    write_tcf(tmp_path)
    with running_server(tmp_path, max_batch_ids=100_000) as (srv, client):
        rec = _Recording(srv.cfg.pools.batch_yield_ms)
        srv.service.priority = rec
        yield srv, client, rec


def test_a_batch_steps_aside_on_its_own_threads_for_each_request(served) -> None:
    _, c, rec = served
    reqs = [c.request("tiny-tcf", user_id=f"u{j % 8}", top_k=3, exclude_item_ids=[f"t{k}" for k in range(20)])
            for j in range(10)]
    assert len(c.recommend_batch(reqs)) == 10  # small: parsed on the loop, which never steps aside
    assert len(rec.asides) >= 10 and all(name.startswith("batch") for name in rec.asides), rec.asides
    rec.asides.clear()
    big = [c.request("tiny-tcf", user_id=f"u{j % 8}", top_k=3, exclude_item_ids=[f"t{k}" for k in range(30)])
           for j in range(200)]  # > 16 KB: parsed on a batch thread, stepping aside while it parses
    assert len(c.recommend_batch(big)) == 200
    assert len(rec.asides) >= 200 + 200 // 8 and all(n.startswith("batch") for n in rec.asides), set(rec.asides)
    assert c.recommend("tiny-tcf", user_id="u1", top_k=3).items
    assert rec.seen_active and rec.active == 0  # single calls begin and end: nothing is left counted


def test_a_single_request_that_never_ends_cannot_stall_a_batch(served) -> None:
    srv, c, rec = served
    rec.begin()  # as if a single request were in flight for ever
    try:
        stub = pb_grpc.RecommenderStub(c.channel)
        big = pb.RecommendBatchRequest(requests=[
            pb.RecommendRequest(model="tiny-tcf", user_id=f"u{j % 8}", top_k=3,
                                exclude_item_ids=[f"t{k}" for k in range(30)]) for j in range(200)])
        assert len(stub.RecommendBatch(big, timeout=60).responses) == 200  # each step waits its bound, then goes on
        assert c.recommend("tiny-tcf", user_id="u2", top_k=3).items
    finally:
        rec.end()
    assert srv.service.priority.active == 0
