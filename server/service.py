"""The Recommender servicer on grpc.aio: request validation, the user-vector path per model kind,
exclusions and search, plus admin RPCs.

Why asyncio: a request waiting for an encoder batch is a suspended coroutine, not a blocked thread,
so a flood of slow history requests on one model cannot starve cheap requests on another (with a
thread per request, 16 waiting CLLM4Rec requests held every worker thread). Blocking work runs
elsewhere: encoders on each version's batcher thread, large searches and admin calls on a small
thread pool.

Requests arrive as raw bytes and are parsed here, so a malformed payload (bad protobuf, invalid
UTF-8) gets INVALID_ARGUMENT and is counted like every other outcome, instead of an INTERNAL from
grpcio's deserializer with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import structlog
from google.protobuf.message import DecodeError, Message

from llmrec import logs
from recsys.v1 import recommender_pb2 as pb
from server import errors
from server.catalogue import Catalogue
from server.config import ServeConfig
from server.item_journal import ItemJournals
from server.metrics import Metrics
from server.models_runtime import ModelVersion
from server.registry import Registry
from server.reload import Reloader
from server.request_log import RequestLog

log = logs.get("server.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
# A flat search cheaper than this many multiply-adds runs inline on the event loop: handing it to a
# thread would cost more than the search itself (FAISS scans ~1-4 GFLOP/s per core).
INLINE_SEARCH_FLOPS = 1 << 22
DEADLINE_MARGIN = 0.002  # seconds
REQUEST_ID = "x-request-id"


@dataclass
class _Prepared:
    mv: ModelVersion
    catalogue: Catalogue
    top_k: int
    excluded: set[int]
    unknown: list[str]
    known_user: bool
    vector: np.ndarray | None = None
    future: Future | None = None
    timings: dict[str, float] = field(default_factory=dict)


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


def _shown(value: str, limit: int = 64) -> str:
    """A client-supplied string as echoed in an error: quoted, and cut short if long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


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
    def __init__(self, cfg: ServeConfig, registry: Registry, reloader: Reloader, journals: ItemJournals,
                 metrics: Metrics, executor: Executor, request_log: RequestLog | None = None) -> None:
        self.cfg = cfg
        self.request_log = request_log
        self.registry = registry
        self.reloader = reloader
        self.journals = journals
        self.metrics = metrics
        self.executor = executor

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[type[Message], Callable[[Any, Any], Awaitable[Message]], type[Message]]] = {
            "Recommend": (pb.RecommendRequest, self._recommend, pb.RecommendResponse),
            "RecommendBatch": (pb.RecommendBatchRequest, self._recommend_batch, pb.RecommendBatchResponse),
            "ListModels": (pb.ListModelsRequest, self._list_models, pb.ListModelsResponse),
            "UpsertItems": (pb.UpsertItemsRequest, self._upsert_items, pb.UpsertItemsResponse),
            "DeleteItems": (pb.DeleteItemsRequest, self._delete_items, pb.DeleteItemsResponse),
            "ReloadModels": (pb.ReloadModelsRequest, self._reload_models, pb.ReloadModelsResponse),
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

    async def _call(self, method: str, raw: bytes, req_type: type[Message], context: grpc.aio.ServicerContext,
                    fn: Callable[[Any, Any], Awaitable[Message]]) -> Message:
        t0 = time.perf_counter()
        label, code = "", grpc.StatusCode.OK
        rid = request_id(context)
        context.set_trailing_metadata(((REQUEST_ID, rid),))
        structlog.contextvars.bind_contextvars(request_id=rid)  # this task's log lines carry it
        try:
            req = req_type()
            try:
                req.ParseFromString(raw)
            except DecodeError as exc:
                raise errors.invalid(f"the request is not a valid {req_type.DESCRIPTOR.full_name} message ({exc}); "
                                     "strings must be UTF-8") from None
            model = getattr(req, "model", "") or (req.requests[0].model if method == "RecommendBatch"
                                                  and req.requests else "")
            label = self._label(model)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise errors.deadline(f"{method}: the deadline had passed before the server could start on it")
            return await fn(req, context)
        except errors.ServingError as exc:
            code = exc.code
            await _abort(context, exc.code, exc.message, rid)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            if remaining is None or remaining > DEADLINE_MARGIN or context.done():
                code = grpc.StatusCode.CANCELLED  # the client went away, or the server is stopping
                raise
            # The transport cancelled us as the deadline fired: say so, rather than a bare CANCELLED.
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await _abort(context, code, f"{method}: deadline exceeded while the request was being served", rid)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.exception("request failed", method=method, model=label)
            await _abort(context, grpc.StatusCode.INTERNAL, f"internal error in {method} ({type(exc).__name__}); "
                         f"the server log has the traceback under request_id {rid}", rid)
        finally:
            self.metrics.requests.labels(method=method, model=label, code=code.name).inc()
            self.metrics.latency.labels(method=method, model=label).observe(time.perf_counter() - t0)
        raise AssertionError("unreachable: abort raises")

    async def _blocking(self, fn: Callable[[], Any]) -> Any:
        ctx = contextvars.copy_context()  # the request id follows into the thread's log lines
        return await asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, fn)

    def _check_admin(self, context: grpc.aio.ServicerContext) -> None:
        if not self.cfg.admin_token:
            raise errors.ServingError(
                grpc.StatusCode.PERMISSION_DENIED,
                "admin RPCs are disabled on this server: start it with --admin-token TOKEN (or RECSYS_ADMIN_TOKEN) "
                "and send metadata 'authorization: Bearer TOKEN'")
        md = dict(context.invocation_metadata() or ())
        auth = md.get("authorization", "")
        if not auth.startswith("Bearer ") or not hmac.compare_digest(auth[7:].encode(),
                                                                     self.cfg.admin_token.encode()):
            raise errors.ServingError(grpc.StatusCode.UNAUTHENTICATED,
                                      "admin RPC needs metadata 'authorization: Bearer <admin token>' "
                                      "matching the server's --admin-token")

    def _check_id(self, what: str, value: str) -> None:
        if not value:
            raise errors.invalid(f"{what} is an empty string; ids are non-empty strings of at most "
                                 f"{self.cfg.max_id_len} characters")
        if len(value) > self.cfg.max_id_len:
            raise errors.invalid(f"{what} is {len(value)} characters long; at most {self.cfg.max_id_len} "
                                 "are accepted")

    def _acquire(self, model: str, version: int) -> ModelVersion:
        if not model:
            raise errors.invalid("model is empty; name one of the loaded models (ListModels)")
        self._check_id("model", model)
        return self.registry.acquire(model, version)

    def _search(self, p: _Prepared) -> list[tuple[int, float]]:
        t0 = time.perf_counter()
        hits = p.catalogue.search(p.vector, p.top_k, p.excluded)
        self.metrics.stage.labels(stage="search", model=p.mv.name).observe(time.perf_counter() - t0)
        return hits

    # ---- Recommend ----
    def _prepare(self, req: pb.RecommendRequest, mv: ModelVersion, deadline: float | None) -> _Prepared:
        cfg = self.cfg
        if not 1 <= req.top_k <= cfg.max_top_k:
            raise errors.invalid(f"top_k must be between 1 and {cfg.max_top_k}, got {req.top_k}")
        if not req.user_id and not req.history:
            raise errors.invalid("empty query: give a user_id, a history of item ids, or both")
        if len(req.history) > cfg.max_history_len:
            raise errors.invalid(f"history has {len(req.history)} items; at most {cfg.max_history_len} are "
                                 "accepted (the encoder uses only the most recent ones anyway)")
        if len(req.exclude_item_ids) > cfg.max_history_len + cfg.max_top_k:
            raise errors.invalid(f"exclude_item_ids has {len(req.exclude_item_ids)} ids; at most "
                                 f"{cfg.max_history_len + cfg.max_top_k} are accepted")
        if req.user_id:
            self._check_id("user_id", req.user_id)
        for i, item in enumerate(req.history):
            self._check_id(f"history[{i}]", item)
        for i, item in enumerate(req.exclude_item_ids):
            self._check_id(f"exclude_item_ids[{i}]", item)
        cat = mv.catalogue
        user_row = mv.user_rows.get(req.user_id) if req.user_id and mv.can_user else None
        rows, unknown = [], []
        for item in req.history:
            row = cat.row(item)
            if row is None:
                unknown.append(item)
            else:
                rows.append(row)
        if unknown and not req.allow_unknown_items:
            shown = ", ".join(_shown(x) for x in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise errors.not_found(f"{len(unknown)} history item id(s) unknown to {mv.name} v{mv.version}: "
                                   f"{shown}; set allow_unknown_items to drop them instead")
        if user_row is None and not rows:
            if req.user_id and not req.history:
                raise errors.not_found(f"unknown user {_shown(req.user_id)} for {mv.name} v{mv.version} and no "
                                       "history given; send a history of item ids to get recommendations")
            if req.history:
                raise errors.not_found(f"none of the {len(req.history)} history items is known to {mv.name} "
                                       f"v{mv.version} and the request has no known user")
        excluded = {r for r in map(cat.row, req.exclude_item_ids) if r is not None}
        if not req.include_history:
            excluded.update(rows)
            if user_row is not None:
                excluded.update(int(r) for r in mv.user_seen(user_row))
        p = _Prepared(mv, cat, req.top_k, excluded, unknown, user_row is not None)
        if rows and mv.can_history and mv.batcher is not None:
            p.future = mv.batcher.submit(mv.history_payload(user_row, rows, cat), deadline)
        elif user_row is not None:
            p.vector = mv.user_vector(user_row)
        else:
            raise errors.precondition(
                f"model {mv.name} v{mv.version} ({mv.kind}, {mv.user_tower} user tower) cannot encode a history: "
                "it serves known users only. Send a known user_id, or use a model with history capability")
        return p

    async def _finish(self, p: _Prepared, deadline: float | None) -> pb.RecommendResponse:
        mv = p.mv
        if p.future is not None:
            # Give up a little before the transport's own deadline, so the client is told why
            # (DEADLINE_EXCEEDED with a message) instead of the call being cut under us.
            timeout = None if deadline is None else deadline - time.monotonic() - DEADLINE_MARGIN
            try:  # cancelling the wrapper cancels the job, which leaves the batcher's queue
                if timeout is not None and timeout <= 0 and not p.future.done():
                    raise TimeoutError
                p.vector = await asyncio.wait_for(asyncio.wrap_future(p.future), timeout)
            except TimeoutError:
                p.future.cancel()
                raise errors.deadline(f"deadline exceeded while waiting for the {mv.name} encoder") from None
        if deadline is not None and time.monotonic() > deadline:
            raise errors.deadline(f"deadline exceeded before searching {mv.name}")
        base = p.catalogue.base
        if mv.index_type == "flat" and base.vectors.size > INLINE_SEARCH_FLOPS:
            hits = await self._blocking(lambda: self._search(p))
        else:
            hits = self._search(p)
        cat = p.catalogue
        return pb.RecommendResponse(
            items=[pb.ScoredItem(item_id=cat.item_id(r), score=s, title=cat.title(r)) for r, s in hits],
            model=mv.name, version=mv.version, unknown_item_ids=p.unknown, known_user=p.known_user)

    def _log_request(self, req: pb.RecommendRequest, p: _Prepared, resp: pb.RecommendResponse) -> None:
        if self.request_log is None:
            return
        self.request_log.record({
            "request_id": structlog.contextvars.get_contextvars().get("request_id"),
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "model": resp.model,
            "version": resp.version, "path": "encoder" if p.future is not None else "user_vector",
            "engine": p.mv.engines.get("user_encoder") if p.future is not None else None, "user": self.request_log.user(req.user_id),
            "known_user": p.known_user, "history_len": len(req.history), "top_k": req.top_k,
            "items": [x.item_id for x in resp.items], "scores": [round(x.score, 6) for x in resp.items]})

    async def _recommend(self, req: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        deadline = _deadline(context)
        mv = self._acquire(req.model, req.version)
        try:
            p = self._prepare(req, mv, deadline)
            resp = await self._finish(p, deadline)
            self._log_request(req, p, resp)
            return resp
        finally:
            mv.release()

    async def _recommend_batch(self, request: pb.RecommendBatchRequest,
                               context: grpc.aio.ServicerContext) -> pb.RecommendBatchResponse:
        reqs = list(request.requests)
        if not reqs:
            raise errors.invalid("RecommendBatch needs at least one request")
        if len(reqs) > self.cfg.max_batch_requests:
            raise errors.invalid(f"RecommendBatch holds {len(reqs)} requests; at most "
                                 f"{self.cfg.max_batch_requests} are accepted")
        deadline = _deadline(context)
        held: list[ModelVersion] = []
        prepared: list[_Prepared] = []
        try:
            for i, r in enumerate(reqs):  # submit every encoder job first so they batch together
                try:
                    mv = self._acquire(r.model, r.version)
                    held.append(mv)
                    prepared.append(self._prepare(r, mv, deadline))
                except errors.ServingError as exc:
                    raise exc.prefixed(f"requests[{i}]") from None
            out = []
            for i, p in enumerate(prepared):
                try:
                    out.append(await self._finish(p, deadline))
                except errors.ServingError as exc:
                    raise exc.prefixed(f"requests[{i}]") from None
            for r, p, resp in zip(reqs, prepared, out, strict=True):
                self._log_request(r, p, resp)
            return pb.RecommendBatchResponse(responses=out)
        finally:
            for p in prepared:  # jobs of a failed batch must not run for nobody
                if p.future is not None:
                    p.future.cancel()
            for mv in held:
                mv.release()

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

    # ---- admin ----
    def _check_item_ids(self, what: str, ids: list[str]) -> None:
        if not ids:
            raise errors.invalid(f"{what} needs at least one item")
        if len(ids) > self.cfg.max_upsert_items:
            raise errors.invalid(f"{what} holds {len(ids)} items; at most {self.cfg.max_upsert_items} per call "
                                 "are accepted (--max-upsert-items): split the call")
        seen: set[str] = set()
        for i, item_id in enumerate(ids):
            self._check_id(f"items[{i}].item_id", item_id)
            if item_id in seen:
                raise errors.invalid(f"items[{i}].item_id {_shown(item_id)} appears twice in one request")
            seen.add(item_id)

    async def _upsert_items(self, request: pb.UpsertItemsRequest,
                            context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        self._check_admin(context)
        self._check_item_ids("UpsertItems", [it.item_id for it in request.items])
        for i, it in enumerate(request.items):
            if not it.text.strip():
                raise errors.invalid(f"items[{i}].text is empty; the item encoder needs the item's text")
            if len(it.text) > self.cfg.max_text_len or len(it.title) > self.cfg.max_text_len:
                raise errors.invalid(f"items[{i}]: text or title longer than {self.cfg.max_text_len} characters "
                                     "(--max-text-len)")
        mv = self._acquire(request.model, request.version)
        try:
            return await self._blocking(lambda: self._upsert(mv, request))
        finally:
            mv.release()

    def _upsert(self, mv: ModelVersion, request: pb.UpsertItemsRequest) -> pb.UpsertItemsResponse:
        items = list(request.items)
        vectors = mv.encode_texts([it.text for it in items])  # before journalling: a failure changes nothing
        new, (added, replaced, _) = self._journal_change(
            mv, [("upsert", it.item_id, it.text, it.title) for it in items],
            dict(zip((it.item_id for it in items), vectors, strict=True)))
        log.info("items upserted", model=mv.name, version=mv.version, added=added, replaced=replaced,
                 seq=new[-1].seq)
        return pb.UpsertItemsResponse(model=mv.name, version=mv.version, added=added, replaced=replaced,
                                      num_items=mv.catalogue.num_items, journal_seq=new[-1].seq)

    async def _delete_items(self, request: pb.DeleteItemsRequest,
                            context: grpc.aio.ServicerContext) -> pb.DeleteItemsResponse:
        self._check_admin(context)
        ids = list(request.item_ids)
        self._check_item_ids("DeleteItems", ids)
        mv = self._acquire(request.model, request.version)
        try:
            cat = mv.catalogue
            unknown = [x for x in ids if cat.row(x) is None]
            if unknown:
                shown = ", ".join(_shown(x) for x in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise errors.not_found(f"{len(unknown)} item id(s) unknown to {mv.name} v{mv.version}: {shown}; "
                                       "nothing was deleted")
            already = sum(x in cat.deleted for x in ids)
            new, (_, _, deleted) = await self._blocking(
                lambda: self._journal_change(mv, [("delete", x, "", "") for x in ids]))
            log.info("items deleted", model=mv.name, version=mv.version, deleted=deleted, seq=new[-1].seq)
            return pb.DeleteItemsResponse(model=mv.name, version=mv.version, deleted=len(ids) - already,
                                          already_deleted=already, num_items=mv.catalogue.num_items,
                                          journal_seq=new[-1].seq)
        finally:
            mv.release()

    def _journal_change(self, mv: ModelVersion, changes: list[tuple[str, str, str, str]],
                        vectors: dict[str, np.ndarray] | None = None) -> tuple[list[Any], tuple[int, int, int]]:
        try:
            return self.journals.change(mv, changes, vectors)
        except OSError as exc:
            raise errors.precondition(
                f"cannot write the item journal of {mv.name} ({exc}); catalogue changes need a writable model "
                "repository (nothing was changed)") from None

    async def _reload_models(self, request: pb.ReloadModelsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ReloadModelsResponse:
        self._check_admin(context)
        r = await self._blocking(lambda: self.reloader.reload_now(retry_refused=True))
        self.registry.ready = True
        return pb.ReloadModelsResponse(loaded=r.loaded, unloaded=r.unloaded, refused=r.refused, serving=r.serving)
