"""The Recommender servicer on grpc.aio: Recommend, RecommendBatch and ListModels; the admin RPCs are in
server/admin.py, the request rules in server/request_rules.py.

Why asyncio: a request waiting for an encoder batch is a suspended coroutine, not a blocked thread,
so a flood of slow history requests on one model cannot starve cheap requests on another (with a
thread per request, 16 waiting CLLM4Rec requests held every worker thread).

What the event loop runs: only work of bounded, request-independent cost (routing, counters, awaiting).
Everything whose cost grows with the request runs on a pool (server/offload.py): parsing a large message,
the id lookups and exclusions, every index search (flat, IVF, HNSW, the delta index), building the response
and its request-log line; single Recommend calls on the read pool, RecommendBatch calls on their own batch
pool (a few large batches cannot take every read thread), admin calls on the admin pool. One 2.4 MB RecommendBatch searched on the loop used to stall every RPC of every
model for half a second.

Requests arrive as raw bytes and are parsed here, so a malformed payload (bad protobuf, invalid
UTF-8) gets INVALID_ARGUMENT and is counted like every other outcome, instead of an INTERNAL from
grpcio's deserializer with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import structlog
from google.protobuf.message import DecodeError, Message

from common import logs
from recsys.v1 import recommender_pb2 as pb
from server import errors
from server import request_rules as rules
from server.admin import AdminRpcs
from server.batch_parse import parse_batch
from server.config import ServeConfig
from server.metrics import Metrics
from server.model_version import ModelVersion
from server.offload import BoundedPool, ReadPriority
from server.registry import Registry
from server.request_log import RequestLog
from server.request_rules import Plan

log = logs.get("server.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
# A message up to this size is parsed on the loop (microseconds); a larger one on the read pool.
INLINE_PARSE_BYTES = 16 * 1024
DEADLINE_MARGIN = 0.002  # seconds
REQUEST_ID = "x-request-id"


@dataclass
class _Job:
    """One Recommend request on its way: its version, its plan, then its encoder job or its answer."""

    req: pb.RecommendRequest
    mv: ModelVersion
    plan: Plan
    future: Future | None = None  # the user-encoder job (encoder path)
    vector: np.ndarray | None = None
    response: pb.RecommendResponse | None = None


@dataclass
class _Batch:
    """A parsed RecommendBatchRequest: its requests, parsed one by one (server.batch_parse)."""

    requests: list[pb.RecommendRequest]


@dataclass
class _Started:
    """What the first hop hands to the coroutine: the jobs, and the version references they hold."""

    jobs: list[_Job]
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def abandon(self) -> None:
        """Nobody awaits these any more (client gone): their encoder jobs must not run for nobody."""
        for job in self.jobs:
            if job.future is not None:
                job.future.cancel()
        self.held.close()


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining() if context is not None else None
    # gRPC reports "no deadline" as an enormous number of seconds.
    return None if remaining is None or remaining > 1e6 else time.monotonic() + remaining


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's `x-request-id` metadata when it is a sane token, else a new id."""
    sent = dict(context.invocation_metadata() or ()).get(REQUEST_ID, "")
    if isinstance(sent, str) and 0 < len(sent) <= 64 and all(c.isalnum() or c in "-_.:" for c in sent):
        return sent
    return uuid.uuid4().hex[:16]


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, rid: str) -> None:
    """Sends the error status, unless the call already ended (its deadline fired or the client left
    while we were finishing): then there is nobody to tell, and grpcio would log a failed batch."""
    if context.done():
        raise asyncio.CancelledError
    try:
        await context.abort(code, message, trailing_metadata=((REQUEST_ID, rid),))
    except grpc.aio.AbortError:
        raise
    except Exception:  # the call ended while we were sending (grpcio's ExecuteBatchError)
        raise asyncio.CancelledError from None


def _prefixed(batch: bool, i: int, exc: errors.ServingError) -> errors.ServingError:
    return exc.prefixed(f"requests[{i}]") if batch else exc


class ReceivedCounter(grpc.aio.ServerInterceptor):
    """Counts every RPC the transport hands over, before its message is read. An RPC whose deadline
    passes (or whose client leaves) before the servicer runs never gets a status from us; the gap
    between this counter and recsys_requests_total shows how many did."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    KNOWN = frozenset({*pb.DESCRIPTOR.services_by_name["Recommender"].methods_by_name, "Check", "Watch",
                       "ServerReflectionInfo"})

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        method = str(details.method).rsplit("/", 1)[-1]
        self._metrics.received.labels(method=method if method in self.KNOWN else "other").inc()  # bounded labels
        return await continuation(details)


class RecommenderService:
    def __init__(self, cfg: ServeConfig, registry: Registry, metrics: Metrics, reads: BoundedPool,
                 batches: BoundedPool, admin: AdminRpcs, request_log: RequestLog | None = None,
                 priority: ReadPriority | None = None) -> None:
        self.cfg = cfg
        self.priority = priority or ReadPriority(cfg.pools.batch_yield_ms)  # batches step aside for single requests
        self.request_log = request_log
        self.registry = registry
        self.metrics = metrics
        self.reads = reads  # single Recommend calls
        self.batches = batches  # RecommendBatch calls: large ones must not take every read thread
        self.admin = admin

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[type[Message], Callable[[Any, Any], Awaitable[Message]], type[Message]]] = {
            "Recommend": (pb.RecommendRequest, self._recommend, pb.RecommendResponse),
            "RecommendBatch": (pb.RecommendBatchRequest, self._recommend_batch, pb.RecommendBatchResponse),
            "ListModels": (pb.ListModelsRequest, self._list_models, pb.ListModelsResponse),
            "UpsertItems": (pb.UpsertItemsRequest, self.admin.upsert_items, pb.UpsertItemsResponse),
            "DeleteItems": (pb.DeleteItemsRequest, self.admin.delete_items, pb.DeleteItemsResponse),
            "ReloadModels": (pb.ReloadModelsRequest, self.admin.reload_models, pb.ReloadModelsResponse),
        }
        handlers = {}
        for name, (req_type, fn, resp_type) in methods.items():
            async def behaviour(raw: bytes, context: grpc.aio.ServicerContext, name: str = name,
                                req_type: type[Message] = req_type, fn: Any = fn) -> Message:
                return await self._call(name, raw, req_type, context, fn)

            handlers[name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=None, response_serializer=resp_type.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    # ---- plumbing ----
    def _label(self, model: str) -> str:
        """Metric label: only names of loaded models (never arbitrary client strings)."""
        if not model:
            return ""
        return model if model in self.registry.loaded() else "unknown"

    async def _parse(self, raw: bytes, req_type: type[Message], pool: BoundedPool) -> Any:
        def parse(between: Callable[[], None] = lambda: None) -> Any:
            try:
                if req_type is pb.RecommendBatchRequest:  # request by request, stepping aside in between
                    return _Batch(parse_batch(raw, between))
                req = req_type()
                req.ParseFromString(raw)
                return req
            except DecodeError as exc:
                raise errors.invalid(f"the request is not a valid {req_type.DESCRIPTOR.full_name} message ({exc}); "
                                     "strings must be UTF-8") from None

        # a small message on the loop (never stepping aside there: single requests need the loop to finish)
        return parse() if len(raw) <= INLINE_PARSE_BYTES else await pool.run(lambda: parse(self.priority.step_aside))

    async def _call(self, method: str, raw: bytes, req_type: type[Message], context: grpc.aio.ServicerContext,
                    fn: Callable[[Any, Any], Awaitable[Message]]) -> Message:
        t0 = time.perf_counter()
        label, code = "", grpc.StatusCode.OK
        counted = False
        rid = request_id(context)
        context.set_trailing_metadata(((REQUEST_ID, rid),))
        structlog.contextvars.bind_contextvars(request_id=rid)  # this task's log lines carry it

        def count() -> None:
            # Before an error status is sent: whoever saw the status must find it in /metrics.
            nonlocal counted
            if not counted:
                counted = True
                self.metrics.requests.labels(method=method, model=label, code=code.name).inc()
                self.metrics.latency.labels(method=method, model=label).observe(time.perf_counter() - t0)

        single = method in ("Recommend", "ListModels")
        if single:
            self.priority.begin()
        try:
            req: Any = await self._parse(raw, req_type, self.batches if method == "RecommendBatch" else self.reads)
            model = getattr(req, "model", "") or (req.requests[0].model if method == "RecommendBatch"
                                                  and req.requests else "")
            label = self._label(model)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise errors.deadline(f"{method}: the deadline had passed before the server could start on it")
            return await fn(req, context)
        except errors.ServingError as exc:
            code = exc.code
            count()
            await _abort(context, exc.code, exc.message, rid)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            if remaining is None or remaining > DEADLINE_MARGIN or context.done():
                code = grpc.StatusCode.CANCELLED  # the client went away, or the server is stopping
                raise
            # The transport cancelled us as the deadline fired: say so, rather than a bare CANCELLED.
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            count()
            await _abort(context, code, f"{method}: deadline exceeded while the request was being served", rid)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.exception("request failed", method=method, model=label)
            count()
            await _abort(context, grpc.StatusCode.INTERNAL, f"internal error in {method} ({type(exc).__name__}); "
                         f"the server log has the traceback under request_id {rid}", rid)
        finally:
            count()
            if single:
                self.priority.end()
        raise AssertionError("unreachable: abort raises")

    # ---- Recommend / RecommendBatch: first hop (read pool) ----
    def _start(self, reqs: Sequence[pb.RecommendRequest], deadline: float | None, batch: bool) -> _Started:
        """Takes a reference to each request's version, applies the rules and submits every encoder job
        before any waits, so that a batch's history requests are encoded together; answers the known-user
        requests at once when nothing else has to wait."""
        started = _Started([])
        with contextlib.ExitStack() as held:  # released here on failure; handed to the caller on success
            try:
                for i, r in enumerate(reqs):
                    if batch:
                        self.priority.step_aside()
                    try:
                        rules.check_model(r.model, self.cfg)
                        mv = held.enter_context(self.registry.use(r.model, r.version))
                        if r.min_journal_seq:  # read-your-writes: before the plan, which takes the catalogue
                            self.admin.journals.at_least(mv, r.min_journal_seq,
                                                         self.cfg.reload.consistency_wait_seconds, deadline)
                        job = _Job(r, mv, rules.plan(r, mv, self.cfg))
                        started.jobs.append(job)
                        if job.plan.path == "encoder":
                            payload = mv.history_payload(job.plan.user_row, job.plan.history_rows,
                                                         job.plan.catalogue)
                            job.future = mv.batcher.submit(payload, deadline)
                        else:
                            assert job.plan.user_row is not None
                            job.vector = mv.user_vector(job.plan.user_row)
                    except errors.ServingError as exc:
                        raise _prefixed(batch, i, exc) from None
                if all(job.future is None for job in started.jobs):
                    self._finish(started.jobs, deadline, batch)
            except BaseException:
                for job in started.jobs:  # jobs of a failed batch must not run for nobody
                    if job.future is not None:
                        job.future.cancel()
                raise
            started.held = held.pop_all()
        return started

    # ---- last hop (read pool): searches, responses, request log ----
    def _finish(self, jobs: list[_Job], deadline: float | None, batch: bool) -> None:
        for i, job in enumerate(jobs):
            if job.response is not None:
                continue
            if batch:
                self.priority.step_aside()
            mv, p = job.mv, job.plan
            if deadline is not None and time.monotonic() > deadline:
                raise _prefixed(batch, i, errors.deadline(f"deadline exceeded before searching {mv.name}"))
            t0 = time.perf_counter()
            hits = p.catalogue.search(job.vector, p.top_k, p.excluded)
            self.metrics.stage.labels(stage="search", model=mv.name).observe(time.perf_counter() - t0)
            cat = p.catalogue
            job.response = pb.RecommendResponse(
                items=[pb.ScoredItem(item_id=cat.item_id(r), score=s, title=cat.title(r)) for r, s in hits],
                model=mv.name, version=mv.version, unknown_item_ids=p.unknown, known_user=p.known_user,
                journal_seq=mv.applied_seq)
        for job in jobs:  # only once every request of the call succeeded
            self._log_request(job)

    def _log_request(self, job: _Job) -> None:
        if self.request_log is None or job.response is None:
            return
        req, resp, encoder = job.req, job.response, job.plan.path == "encoder"
        self.request_log.record({
            "request_id": structlog.contextvars.get_contextvars().get("request_id"),
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "model": resp.model,
            "version": resp.version, "path": "encoder" if encoder else "user_vector",
            "engine": job.mv.engines.get("user_encoder") if encoder else None,
            "user": self.request_log.user(req.user_id), "known_user": job.plan.known_user,
            "history_len": len(req.history), "top_k": req.top_k,
            "items": [x.item_id for x in resp.items], "scores": [round(x.score, 6) for x in resp.items]})

    async def _serve(self, reqs: Sequence[pb.RecommendRequest], context: grpc.aio.ServicerContext,
                     batch: bool) -> list[pb.RecommendResponse]:
        deadline = _deadline(context)
        pool = self.batches if batch else self.reads
        started = await pool.run(lambda: self._start(reqs, deadline, batch), on_abandon=_Started.abandon)
        with started.held:
            try:
                for i, job in enumerate(started.jobs):
                    if job.future is not None:
                        try:
                            job.vector = await self._encoded(job, deadline)
                        except errors.ServingError as exc:
                            raise _prefixed(batch, i, exc) from None
                if any(job.response is None for job in started.jobs):
                    await pool.run(lambda: self._finish(started.jobs, deadline, batch), admit=False)
            finally:
                for job in started.jobs:
                    if job.future is not None:
                        job.future.cancel()
        return [job.response for job in started.jobs if job.response is not None]

    async def _encoded(self, job: _Job, deadline: float | None) -> np.ndarray:
        assert job.future is not None
        # Give up a little before the transport's own deadline, so the client is told why
        # (DEADLINE_EXCEEDED with a message) instead of the call being cut under us.
        timeout = None if deadline is None else deadline - time.monotonic() - DEADLINE_MARGIN
        try:  # cancelling the wrapper cancels the job, which leaves the batcher's queue
            if timeout is not None and timeout <= 0 and not job.future.done():
                raise TimeoutError
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        except TimeoutError:
            job.future.cancel()
            raise errors.deadline(f"deadline exceeded while waiting for the {job.mv.name} encoder") from None

    async def _recommend(self, req: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        return (await self._serve([req], context, batch=False))[0]

    async def _recommend_batch(self, request: _Batch, context: grpc.aio.ServicerContext) -> pb.RecommendBatchResponse:
        reqs = request.requests
        rules.check_batch(reqs, self.cfg)
        return pb.RecommendBatchResponse(responses=await self._serve(reqs, context, batch=True))

    # ---- ListModels ----
    async def _list_models(self, request: pb.ListModelsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        models = []
        for name, versions in sorted(self.registry.loaded().items()):
            default = self.registry.default(name) or 0
            infos = []
            for v in sorted(versions):
                d = versions[v].info()
                caps = pb.Capabilities(**d.pop("capabilities"))
                infos.append(pb.ModelVersionInfo(capabilities=caps, is_default=v == default, **d))
            models.append(pb.ModelInfo(name=name, default_version=default, versions=infos))
        return pb.ListModelsResponse(models=models)
