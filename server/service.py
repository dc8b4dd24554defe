"""The Recommender servicer: request validation, the user-vector path per model kind, exclusions and
search, plus admin RPCs. Every RPC goes through `_call`, which counts, times and turns exceptions into
status codes; an unexpected exception becomes INTERNAL with a logged traceback, never a crash."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from llmrec import logs
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from server import errors
from server.config import ServeConfig
from server.metrics import Metrics
from server.models_runtime import Catalogue, ModelVersion
from server.registry import Registry
from server.reload import Reloader

log = logs.get("server.service")


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


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining() if context is not None else None
    # gRPC reports "no deadline" as an enormous number of seconds.
    return None if remaining is None or remaining > 1e6 else time.monotonic() + remaining


class RecommenderService(pb_grpc.RecommenderServicer):
    def __init__(self, cfg: ServeConfig, registry: Registry, reloader: Reloader, metrics: Metrics) -> None:
        self.cfg = cfg
        self.registry = registry
        self.reloader = reloader
        self.metrics = metrics

    # ---- plumbing ----
    def _call(self, method: str, model: str, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        label = model if model in self.registry.loaded() else ("" if not model else "unknown")
        code = grpc.StatusCode.OK
        try:
            return fn()
        except errors.ServingError as exc:
            code = exc.code
            context.abort(exc.code, exc.message)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("request failed", method=method, model=label)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} ({type(exc).__name__}); "
                          "the server log has the traceback")
        finally:
            self.metrics.requests.labels(method=method, model=label, code=code.name).inc()
            self.metrics.latency.labels(method=method, model=label).observe(time.perf_counter() - t0)

    def _check_admin(self, context: grpc.ServicerContext) -> None:
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
            row = cat.rows.get(item)
            if row is None:
                unknown.append(item)
            else:
                rows.append(row)
        if unknown and not req.allow_unknown_items:
            shown = ", ".join(repr(x) for x in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise errors.not_found(f"{len(unknown)} history item id(s) unknown to {mv.name} v{mv.version}: "
                                   f"{shown}; set allow_unknown_items to drop them instead")
        if user_row is None and not rows:
            if req.user_id and not req.history:
                raise errors.not_found(f"unknown user {req.user_id!r} for {mv.name} v{mv.version} and no history "
                                       "given; send a history of item ids to get recommendations")
            if req.history:
                raise errors.not_found(f"none of the {len(req.history)} history items is known to {mv.name} "
                                       f"v{mv.version} and the request has no known user")
        excluded = {cat.rows[x] for x in req.exclude_item_ids if x in cat.rows}
        if req.exclude_history:
            excluded.update(rows)
            if user_row is not None:
                excluded.update(int(r) for r in mv.user_seen(user_row))
        p = _Prepared(mv, cat, req.top_k, excluded, unknown, user_row is not None)
        if rows and mv.can_history:
            p.future = mv.batcher.submit(mv.history_payload(user_row, rows, cat), deadline)
        elif user_row is not None:
            p.vector = mv.user_vector(user_row)
        else:
            raise errors.precondition(
                f"model {mv.name} v{mv.version} ({mv.kind}, {mv.user_tower} user tower) cannot encode a history: "
                "it serves known users only. Send a known user_id, or use a model with history capability")
        return p

    def _finish(self, p: _Prepared, deadline: float | None) -> pb.RecommendResponse:
        mv = p.mv
        if p.future is not None:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                p.vector = p.future.result(timeout=timeout)
            except FutureTimeout:
                p.future.cancel()
                raise errors.deadline(f"deadline exceeded while waiting for the {mv.name} encoder") from None
        if deadline is not None and time.monotonic() > deadline:
            raise errors.deadline(f"deadline exceeded before searching {mv.name}")
        t0 = time.perf_counter()
        hits = p.catalogue.search(p.vector, p.top_k, p.excluded)
        self.metrics.stage.labels(stage="search", model=mv.name).observe(time.perf_counter() - t0)
        ids, titles = p.catalogue.item_ids, p.catalogue.titles
        return pb.RecommendResponse(
            items=[pb.ScoredItem(item_id=ids[r], score=s, title=titles[r]) for r, s in hits],
            model=mv.name, version=mv.version, unknown_item_ids=p.unknown, known_user=p.known_user)

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        def run() -> pb.RecommendResponse:
            deadline = _deadline(context)
            with self.registry.use(request.model, request.version) as mv:
                return self._finish(self._prepare(request, mv, deadline), deadline)

        return self._call("Recommend", request.model, context, run)

    def RecommendBatch(self, request: pb.RecommendBatchRequest,
                       context: grpc.ServicerContext) -> pb.RecommendBatchResponse:
        def run() -> pb.RecommendBatchResponse:
            reqs = list(request.requests)
            if not reqs:
                raise errors.invalid("RecommendBatch needs at least one request")
            if len(reqs) > self.cfg.max_batch_requests:
                raise errors.invalid(f"RecommendBatch holds {len(reqs)} requests; at most "
                                     f"{self.cfg.max_batch_requests} are accepted")
            deadline = _deadline(context)
            held: list[ModelVersion] = []
            try:
                prepared = []
                for i, r in enumerate(reqs):  # submit every encoder job first so they batch together
                    try:
                        mv = self.registry.acquire(r.model, r.version)
                        held.append(mv)
                        prepared.append(self._prepare(r, mv, deadline))
                    except errors.ServingError as exc:
                        raise exc.prefixed(f"requests[{i}]") from None
                out = []
                for i, p in enumerate(prepared):
                    try:
                        out.append(self._finish(p, deadline))
                    except errors.ServingError as exc:
                        raise exc.prefixed(f"requests[{i}]") from None
                return pb.RecommendBatchResponse(responses=out)
            finally:
                for mv in held:
                    mv.release()

        model = request.requests[0].model if request.requests else ""
        return self._call("RecommendBatch", model, context, run)

    # ---- ListModels ----
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        def run() -> pb.ListModelsResponse:
            models = []
            for name, versions in sorted(self.registry.loaded().items()):
                default = self.registry.default(name) or 0
                infos = []
                for v in sorted(versions):
                    d = versions[v].info()
                    infos.append(pb.ModelVersionInfo(
                        version=d["version"], kind=d["kind"], user_tower=d["user_tower"], item_tower=d["item_tower"],
                        dim=d["dim"], num_items=d["num_items"], num_users=d["num_users"], index_type=d["index_type"],
                        capabilities=pb.Capabilities(**d["capabilities"]), loaded_at=d["loaded_at"],
                        is_default=v == default, pinned=d["pinned"]))
                models.append(pb.ModelInfo(name=name, default_version=default, versions=infos))
            return pb.ListModelsResponse(models=models)

        return self._call("ListModels", "", context, run)

    # ---- admin ----
    def UpsertItems(self, request: pb.UpsertItemsRequest, context: grpc.ServicerContext) -> pb.UpsertItemsResponse:
        def run() -> pb.UpsertItemsResponse:
            self._check_admin(context)
            if not request.items:
                raise errors.invalid("UpsertItems needs at least one item (item_id, text)")
            seen: set[str] = set()
            for i, it in enumerate(request.items):
                self._check_id(f"items[{i}].item_id", it.item_id)
                if not it.text.strip():
                    raise errors.invalid(f"items[{i}].text is empty; the item encoder needs the item's text")
                if it.item_id in seen:
                    raise errors.invalid(f"items[{i}].item_id {it.item_id!r} appears twice in one request")
                seen.add(it.item_id)
            with self.registry.use(request.model, request.version) as mv:
                added, replaced = mv.upsert([(it.item_id, it.text, it.title) for it in request.items])
                log.info("items upserted", model=mv.name, version=mv.version, added=added, replaced=replaced)
                return pb.UpsertItemsResponse(model=mv.name, version=mv.version, added=added, replaced=replaced,
                                              num_items=len(mv.catalogue.item_ids))

        return self._call("UpsertItems", request.model, context, run)

    def ReloadModels(self, request: pb.ReloadModelsRequest,
                     context: grpc.ServicerContext) -> pb.ReloadModelsResponse:
        def run() -> pb.ReloadModelsResponse:
            self._check_admin(context)
            r = self.reloader.reload_now()
            self.registry.ready = True
            return pb.ReloadModelsResponse(loaded=r.loaded, unloaded=r.unloaded, refused=r.refused,
                                           serving=r.serving)

        return self._call("ReloadModels", "", context, run)
