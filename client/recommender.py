"""A typed Python client for the Recommender service (what the CLI, benchmarks and demos use):
`from client import RecommenderClient`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc

REQUEST_ID = "x-request-id"


@dataclass
class Recommendations:
    items: list[tuple[str, float]]
    model: str
    version: int
    titles: list[str] = field(default_factory=list)
    unknown_item_ids: list[str] = field(default_factory=list)
    known_user: bool = False
    request_id: str = ""  # the server's id for this request (its logs and request log use it)
    journal_seq: int = 0  # item-journal records applied by the version that answered


class RecommenderClient:
    """Reads its own writes across replicas by default: the journal_seq of every answer (UpsertItems,
    DeleteItems, Recommend) becomes this client's consistency token for that model, sent as min_journal_seq
    with its later calls, so a replica behind a balancer catches up before answering (or says UNAVAILABLE).
    `consistent=False` sends no token."""

    def __init__(self, target: str, admin_token: str | None = None, tls_ca: Path | None = None,
                 timeout: float | None = 10.0, options: Sequence[tuple[str, Any]] = (), consistent: bool = True,
                 min_journal_seq: int = 0) -> None:
        """`options`: gRPC channel arguments, e.g. ("grpc.use_local_subchannel_pool", 1) for a connection of
        its own (channels to one target otherwise share a connection within a process). `min_journal_seq`: a
        token from another client (e.g. printed by `llmrec upsert`), the least this client asks for."""
        if tls_ca is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca.read_bytes()),
                                               options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.admin_token = admin_token
        self.timeout = timeout
        self.consistent = consistent
        self.tokens: dict[str, int] = {}  # model -> the largest journal_seq seen in an answer
        self.min_journal_seq = min_journal_seq

    def token(self, model: str) -> int:
        """The min_journal_seq this client sends for `model` (0 when not consistent)."""
        return max(self.tokens.get(model, 0), self.min_journal_seq) if self.consistent else 0

    def saw(self, model: str, seq: int) -> None:
        if seq > self.tokens.get(model, 0):
            self.tokens[model] = seq

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin_md(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.admin_token}")] if self.admin_token else []

    @staticmethod
    def request(model: str, user_id: str = "", history: Sequence[str] = (), top_k: int = 10, version: int = 0,
                exclude_item_ids: Sequence[str] = (), include_history: bool = False,
                allow_unknown_items: bool = False, min_journal_seq: int = 0) -> pb.RecommendRequest:
        return pb.RecommendRequest(model=model, version=version, user_id=user_id, history=list(history),
                                   top_k=top_k, exclude_item_ids=list(exclude_item_ids),
                                   include_history=include_history, allow_unknown_items=allow_unknown_items,
                                   min_journal_seq=min_journal_seq)

    def _convert(self, resp: pb.RecommendResponse, request_id: str = "") -> Recommendations:
        self.saw(resp.model, resp.journal_seq)
        return Recommendations([(x.item_id, x.score) for x in resp.items], resp.model, resp.version,
                               [x.title for x in resp.items], list(resp.unknown_item_ids), resp.known_user,
                               request_id, resp.journal_seq)

    def recommend(self, model: str, user_id: str = "", history: Sequence[str] = (), top_k: int = 10,
                  version: int = 0, exclude_item_ids: Sequence[str] = (), include_history: bool = False,
                  allow_unknown_items: bool = False, timeout: float | None = None,
                  request_id: str | None = None) -> Recommendations:
        """Items the user has seen (the history, a known user's past) are left out unless include_history."""
        req = self.request(model, user_id, history, top_k, version, exclude_item_ids, include_history,
                           allow_unknown_items, self.token(model))
        metadata = [(REQUEST_ID, request_id)] if request_id else None
        resp, call = self.stub.Recommend.with_call(req, timeout=timeout or self.timeout, metadata=metadata)
        return self._convert(resp, dict(call.trailing_metadata() or ()).get(REQUEST_ID, ""))

    def recommend_batch(self, requests: Sequence[pb.RecommendRequest],
                        timeout: float | None = None) -> list[Recommendations]:
        requests = list(requests)
        for i, r in enumerate(requests):
            if not r.min_journal_seq and self.token(r.model):
                requests[i] = pb.RecommendRequest()
                requests[i].CopyFrom(r)  # the caller's message stays as it was
                requests[i].min_journal_seq = self.token(r.model)
        resp = self.stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests),
                                        timeout=timeout or self.timeout)
        return [self._convert(r) for r in resp.responses]

    def list_models(self) -> pb.ListModelsResponse:
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)

    def upsert_items(self, model: str, items: Sequence[tuple[str, str] | tuple[str, str, str]],
                     version: int = 0) -> pb.UpsertItemsResponse:
        msgs = [pb.ItemText(item_id=it[0], text=it[1], title=it[2] if len(it) > 2 else "") for it in items]
        resp = self.stub.UpsertItems(pb.UpsertItemsRequest(model=model, version=version, items=msgs,
                                                           min_journal_seq=self.token(model)),
                                     metadata=self._admin_md(), timeout=self.timeout)
        self.saw(resp.model, resp.journal_seq)
        return resp

    def delete_items(self, model: str, item_ids: Sequence[str], version: int = 0) -> pb.DeleteItemsResponse:
        resp = self.stub.DeleteItems(pb.DeleteItemsRequest(model=model, version=version, item_ids=list(item_ids),
                                                           min_journal_seq=self.token(model)),
                                     metadata=self._admin_md(), timeout=self.timeout)
        self.saw(resp.model, resp.journal_seq)
        return resp

    def reload(self) -> pb.ReloadModelsResponse:
        return self.stub.ReloadModels(pb.ReloadModelsRequest(), metadata=self._admin_md(), timeout=self.timeout)

    def health(self, service: str = "") -> str:
        """"SERVING" / "NOT_SERVING" / "SERVICE_UNKNOWN" for the overall server or a model name."""
        try:
            resp = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
