"""Admin RPCs: UpsertItems, DeleteItems, ReloadModels, behind the admin token.

Each runs whole (validation, item encoding, the fsynced journal append, a reload) on the admin pool: its
cost grows with the request and with the disk, and neither may touch the event loop or the read pool
(a slow fsync under UpsertItems once starved known-user reads of unrelated models).
"""

from __future__ import annotations

import hmac
import time

import grpc
import numpy as np

from common import logs
from recsys.v1 import recommender_pb2 as pb
from repository.journal import ItemChange, JournalRecord, JournalUnavailable
from server import errors
from server import request_rules as rules
from server.config import ServeConfig
from server.item_journal import ItemJournals, JournalApplyError
from server.model_version import ModelVersion
from server.offload import BoundedPool
from server.registry import Registry
from server.reload import Reloader

log = logs.get("server.admin")
WRITE_MARGIN = 0.05  # seconds an fsync and the answer may take after the deadline check


def _unwritable(mv: ModelVersion, exc: OSError) -> errors.ServingError:
    return errors.precondition(f"cannot write the item journal of {mv.name} ({exc}); catalogue changes need a "
                               "writable journal: the file beside the versions, or the --journal Redis stream "
                               "(nothing was changed)")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None or remaining > 1e6 else time.monotonic() + remaining


class AdminRpcs:
    def __init__(self, cfg: ServeConfig, registry: Registry, reloader: Reloader, journals: ItemJournals,
                 pool: BoundedPool) -> None:
        self.cfg = cfg
        self.registry = registry
        self.reloader = reloader
        self.journals = journals
        self.pool = pool

    def check_auth(self, context: grpc.aio.ServicerContext) -> None:
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

    # ---- UpsertItems ----
    async def upsert_items(self, request: pb.UpsertItemsRequest,
                           context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        self.check_auth(context)
        deadline = _deadline(context)
        return await self.pool.run(lambda: self._upsert(request, deadline))

    def _upsert(self, request: pb.UpsertItemsRequest, deadline: float | None = None) -> pb.UpsertItemsResponse:
        items = list(request.items)
        rules.check_upsert(items, self.cfg)
        rules.check_model(request.model, self.cfg)
        with self.registry.use(request.model, request.version) as mv:
            self.journals.at_least(mv, request.min_journal_seq, self.cfg.reload.consistency_wait_seconds, deadline)
            vectors = mv.encode_texts([it.text for it in items])  # before journalling: a failure changes nothing
            new, (added, replaced, _) = self._journal_change(
                mv, [ItemChange("upsert", it.item_id, it.text, it.title) for it in items],
                dict(zip((it.item_id for it in items), vectors, strict=True)), deadline)
            log.info("items upserted", model=mv.name, version=mv.version, added=added, replaced=replaced,
                     seq=new[-1].seq)
            return pb.UpsertItemsResponse(model=mv.name, version=mv.version, added=added, replaced=replaced,
                                          num_items=mv.catalogue.num_items, journal_seq=new[-1].seq)

    # ---- DeleteItems ----
    async def delete_items(self, request: pb.DeleteItemsRequest,
                           context: grpc.aio.ServicerContext) -> pb.DeleteItemsResponse:
        self.check_auth(context)
        deadline = _deadline(context)
        return await self.pool.run(lambda: self._delete(request, deadline))

    def _delete(self, request: pb.DeleteItemsRequest, deadline: float | None = None) -> pb.DeleteItemsResponse:
        ids = list(request.item_ids)
        rules.check_item_ids("DeleteItems", ids, self.cfg)
        rules.check_model(request.model, self.cfg)
        with self.registry.use(request.model, request.version) as mv:
            self.journals.at_least(mv, request.min_journal_seq, self.cfg.reload.consistency_wait_seconds, deadline)
            # What other replicas appended first: an item added there a moment ago exists here too.
            try:
                seq = self.journals.catch_up(mv.name, mv)
            except JournalUnavailable as exc:  # e.g. Redis unreachable: nothing was changed, retryable
                raise errors.unavailable(f"cannot read the item journal of {mv.name} ({exc}); nothing was "
                                         "changed; retry") from None
            except OSError as exc:
                raise _unwritable(mv, exc) from None
            cat = mv.catalogue
            already = rules.check_delete(ids, cat, mv.name, mv.version, self.cfg)
            todo = [x for x in ids if x not in cat.deleted]  # a repeated delete adds no record
            deleted = 0
            if todo:
                new, (_, _, deleted) = self._journal_change(mv, [ItemChange("delete", x) for x in todo], None,
                                                            deadline)
                seq = new[-1].seq
            log.info("items deleted", model=mv.name, version=mv.version, deleted=deleted, seq=seq)
            return pb.DeleteItemsResponse(model=mv.name, version=mv.version, deleted=len(ids) - already,
                                          already_deleted=already, num_items=mv.catalogue.num_items,
                                          journal_seq=seq)

    def _journal_change(self, mv: ModelVersion, changes: list[ItemChange],
                        vectors: dict[str, np.ndarray] | None = None, deadline: float | None = None
                        ) -> tuple[list[JournalRecord], tuple[int, int, int]]:
        def in_time() -> None:
            # Under the journal's lock, just before the write: a call whose client was already told
            # DEADLINE_EXCEEDED must not be journalled later, out of order with changes acknowledged since.
            if deadline is not None and time.monotonic() > deadline - WRITE_MARGIN:
                raise errors.deadline(f"{mv.name}: deadline exceeded before the change was journalled "
                                      "(nothing was changed)")

        try:
            return self.journals.change(mv, changes, vectors, in_time)
        except OSError as exc:
            raise _unwritable(mv, exc) from None
        except JournalApplyError as exc:
            raise errors.internal(
                f"{exc}. The change is durable and this replica retries it at its next journal poll; "
                "the server log has the traceback") from None

    # ---- ReloadModels ----
    async def reload_models(self, request: pb.ReloadModelsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ReloadModelsResponse:
        self.check_auth(context)
        r = await self.pool.run(lambda: self.reloader.reload_now(retry_refused=True))
        self.registry.ready = True
        return pb.ReloadModelsResponse(loaded=r.loaded, unloaded=r.unloaded, refused=r.refused, serving=r.serving)
