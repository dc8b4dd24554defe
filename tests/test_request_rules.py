"""The request rules (server/request_rules.py) on a plain catalogue: no server, no threads, no encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from recsys.v1 import recommender_pb2 as pb
from server import errors
from server import request_rules as rules
from server.catalogue import Catalogue
from server.config import ServeConfig
from server.indexes.faiss_cpu import FaissCpu

CFG = ServeConfig.flat(max_top_k=20, max_history_len=5, max_id_len=8, max_batch_requests=3, max_batch_ids=12,
                  max_upsert_items=3, max_text_len=10)


@dataclass
class Version:
    """The parts of a ModelVersion the rules read."""

    can_user: bool = True
    can_history: bool = True
    batcher: Any = "a batcher"
    name: str = "m"
    version: int = 1
    kind: str = "tcf"
    user_tower: str = "sasrec"
    user_rows: dict[str, int] = field(default_factory=lambda: {"u0": 0, "u1": 1})
    seen: list[list[int]] = field(default_factory=lambda: [[0, 1], [2]])
    catalogue: Catalogue = field(default_factory=lambda: _catalogue())

    def user_seen(self, row: int) -> np.ndarray:
        return np.asarray(self.seen[row])


def _catalogue(n: int = 6) -> Catalogue:
    vectors = np.eye(n, dtype=np.float32)
    ids = [f"i{r}" for r in range(n)]
    return Catalogue.exported(FaissCpu.exact(vectors), ids, vectors, ids, FaissCpu.exact)


def _req(**kw: Any) -> pb.RecommendRequest:
    kw.setdefault("top_k", 3)
    return pb.RecommendRequest(model="m", **kw)


def _fails(code: grpc.StatusCode, text: str, fn, *args) -> None:
    with pytest.raises(errors.ServingError) as info:
        fn(*args)
    assert info.value.code == code and text in info.value.message, info.value.message


def test_limits_are_invalid_argument_with_the_limit_named() -> None:
    inv = grpc.StatusCode.INVALID_ARGUMENT
    _fails(inv, "top_k must be between 1 and 20, got 0", rules.check_request, _req(user_id="u0", top_k=0), CFG)
    _fails(inv, "empty query", rules.check_request, _req(), CFG)
    _fails(inv, "history has 6 items; at most 5", rules.check_request, _req(history=["i1"] * 6), CFG)
    _fails(inv, "exclude_item_ids has 26 ids; at most 25", rules.check_request,
           _req(user_id="u0", exclude_item_ids=["i1"] * 26), CFG)
    _fails(inv, "history[1] is an empty string", rules.check_request, _req(history=["i1", ""]), CFG)
    _fails(inv, "user_id is 9 characters long; at most 8", rules.check_request, _req(user_id="u" * 9), CFG)
    _fails(inv, "model is empty", rules.check_model, "", CFG)


def test_batch_limits_count_requests_and_ids_together() -> None:
    inv = grpc.StatusCode.INVALID_ARGUMENT
    _fails(inv, "at least one request", rules.check_batch, [], CFG)
    _fails(inv, "holds 4 requests; at most 3", rules.check_batch, [_req(user_id="u0")] * 4, CFG)
    reqs = [_req(history=["i1"] * 5, exclude_item_ids=["i2"] * 2)] * 2  # 14 ids
    _fails(inv, "holds 14 item ids", rules.check_batch, reqs, CFG)
    rules.check_batch(reqs[:1], CFG)  # 7 ids: fine


def test_known_user_path_excludes_what_the_user_saw() -> None:
    p = rules.plan(_req(user_id="u0", exclude_item_ids=["i5", "nope"]), Version(), CFG)
    assert (p.path, p.user_row, p.known_user, p.history_rows) == ("user_vector", 0, True, [])
    assert p.excluded == {0, 1, 5}  # seen + asked; an unknown excluded id is ignored
    p = rules.plan(_req(user_id="u0", include_history=True), Version(), CFG)
    assert p.excluded == set()


def test_history_path_and_unknown_items() -> None:
    p = rules.plan(_req(history=["i3", "i4"]), Version(), CFG)
    assert (p.path, p.user_row, p.history_rows, p.excluded) == ("encoder", None, [3, 4], {3, 4})
    p = rules.plan(_req(user_id="stranger", history=["i3", "zz"], allow_unknown_items=True), Version(), CFG)
    assert (p.path, p.unknown, p.known_user) == ("encoder", ["zz"], False)
    nf = grpc.StatusCode.NOT_FOUND
    _fails(nf, "1 history item id(s) unknown to m v1: 'zz'; set allow_unknown_items", rules.plan,
           _req(history=["i3", "zz"]), Version(), CFG)
    _fails(nf, "unknown user 'stranger'", rules.plan, _req(user_id="stranger"), Version(), CFG)
    _fails(nf, "none of the 1 history items", rules.plan, _req(history=["zz"], allow_unknown_items=True),
           Version(), CFG)


def test_a_version_without_history_encoder_serves_known_users_only() -> None:
    dssm = Version(can_history=False, batcher=None, user_tower="dssm")
    assert rules.plan(_req(user_id="u1", history=["i3"]), dssm, CFG).path == "user_vector"  # history excluded only
    _fails(grpc.StatusCode.FAILED_PRECONDITION, "known users only", rules.plan, _req(history=["i3"]), dssm, CFG)


def test_plan_uses_one_catalogue_snapshot() -> None:
    mv = Version()
    p = rules.plan(_req(history=["i1"]), mv, CFG)
    mv.catalogue, _, _ = mv.catalogue.changed(deletes=["i1"])  # a later change does not move the plan's rows
    assert p.catalogue is not mv.catalogue and p.catalogue.row("i1") == 1


def test_admin_rules() -> None:
    inv = grpc.StatusCode.INVALID_ARGUMENT
    _fails(inv, "needs at least one item", rules.check_item_ids, "DeleteItems", [], CFG)
    _fails(inv, "holds 4 items; at most 3", rules.check_item_ids, "DeleteItems", ["a", "b", "c", "d"], CFG)
    _fails(inv, "items[1].item_id 'a' appears twice", rules.check_item_ids, "UpsertItems", ["a", "a"], CFG)
    _fails(inv, "items[0].text is empty", rules.check_upsert, [pb.ItemText(item_id="a", text="  ")], CFG)
    _fails(inv, "longer than 10 characters", rules.check_upsert, [pb.ItemText(item_id="a", text="x" * 11)], CFG)
    cat, _, _ = _catalogue().changed(deletes=["i2"])
    _fails(grpc.StatusCode.NOT_FOUND, "unknown to m v1: 'zz'; nothing was deleted", rules.check_delete,
           ["i1", "zz"], cat, "m", 1, CFG)
    assert rules.check_delete(["i1", "i2"], cat, "m", 1, CFG) == 1  # i2 already deleted
