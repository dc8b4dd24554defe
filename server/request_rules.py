"""The rules a request must pass, and what serving it takes: limits, id lookups, exclusions and the choice
of path (a known user's stored vector, or the history through the user encoder).

Pure: no gRPC server, no threads, no I/O. A rule broken raises errors.ServingError with the status and a
message saying what was wrong; the servicer (server/service.py) only moves bytes and awaits. Kept apart
so that every rule is unit-tested on a plain catalogue (tests/test_request_rules.py), and so that the
servicer can run all of this off the event loop in one hop: its cost grows with the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from recsys.v1 import recommender_pb2 as pb
from server import errors
from server.catalogue import Catalogue
from server.config import ServeConfig


class Servable(Protocol):
    """What the rules read from a model version (server/model_version.py: ModelVersion)."""

    name: str
    version: int
    kind: str
    user_tower: str
    can_user: bool
    can_history: bool
    user_rows: Mapping[str, int]
    batcher: Any

    @property
    def catalogue(self) -> Catalogue: ...

    def user_seen(self, row: int) -> np.ndarray: ...


@dataclass
class Plan:
    """How one Recommend request is served, decided before any encoder or index work."""

    catalogue: Catalogue  # the snapshot every lookup came from; the search must use the same one
    top_k: int
    excluded: set[int]
    unknown: list[str]  # history ids dropped under allow_unknown_items
    user_row: int | None  # a known user's row, or None
    history_rows: list[int]
    path: Literal["encoder", "user_vector"]

    @property
    def known_user(self) -> bool:
        return self.user_row is not None


def shown(value: str, limit: int = 64) -> str:
    """A client-supplied string as echoed in an error: quoted, and cut short if long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _listed(values: Sequence[str]) -> str:
    return ", ".join(shown(x) for x in values[:5]) + (" ..." if len(values) > 5 else "")


def check_id(what: str, value: str, cfg: ServeConfig) -> None:
    if not value:
        raise errors.invalid(f"{what} is an empty string; ids are non-empty strings of at most "
                             f"{cfg.limits.max_id_len} characters")
    if len(value) > cfg.limits.max_id_len:
        raise errors.invalid(f"{what} is {len(value)} characters long; at most {cfg.limits.max_id_len} are accepted")


def check_model(model: str, cfg: ServeConfig) -> None:
    if not model:
        raise errors.invalid("model is empty; name one of the loaded models (ListModels)")
    check_id("model", model, cfg)


def check_request(req: pb.RecommendRequest, cfg: ServeConfig, exclude: Sequence[str] | None = None) -> None:
    """The limits of one Recommend request, before anything is looked up. `exclude`: req.exclude_item_ids
    already as a list (reading a protobuf repeated field makes new strings each time)."""
    if not 1 <= req.top_k <= cfg.limits.max_top_k:
        raise errors.invalid(f"top_k must be between 1 and {cfg.limits.max_top_k}, got {req.top_k}")
    if not req.user_id and not req.history:
        raise errors.invalid("empty query: give a user_id, a history of item ids, or both")
    if len(req.history) > cfg.limits.max_history_len:
        raise errors.invalid(f"history has {len(req.history)} items; at most {cfg.limits.max_history_len} are "
                             "accepted (the encoder uses only the most recent ones anyway)")
    if len(req.exclude_item_ids) > cfg.limits.max_history_len + cfg.limits.max_top_k:
        raise errors.invalid(f"exclude_item_ids has {len(req.exclude_item_ids)} ids; at most "
                             f"{cfg.limits.max_history_len + cfg.limits.max_top_k} are accepted")
    if req.user_id:
        check_id("user_id", req.user_id, cfg)
    check_ids("history", req.history, cfg)
    check_ids("exclude_item_ids", req.exclude_item_ids if exclude is None else exclude, cfg)


def check_ids(what: str, values: Sequence[str], cfg: ServeConfig) -> None:
    """check_id on every value, with the lengths measured in C first: a batch may hold 500,000 ids, and a
    Python call per id was most of its cost."""
    lengths = list(map(len, values))
    if lengths and (min(lengths) == 0 or max(lengths) > cfg.limits.max_id_len):
        for i, value in enumerate(values):
            check_id(f"{what}[{i}]", value, cfg)


def check_batch(reqs: Sequence[pb.RecommendRequest], cfg: ServeConfig) -> None:
    """The limits of a RecommendBatch as a whole: its cost is the sum of its requests'."""
    if not reqs:
        raise errors.invalid("RecommendBatch needs at least one request")
    if len(reqs) > cfg.limits.max_batch_requests:
        raise errors.invalid(f"RecommendBatch holds {len(reqs)} requests; at most {cfg.limits.max_batch_requests} are "
                             "accepted")
    ids = total_ids(reqs)
    if ids > cfg.limits.max_batch_ids:
        raise errors.invalid(f"RecommendBatch holds {ids} item ids (histories and exclusions together); at most "
                             f"{cfg.limits.max_batch_ids} are accepted (--max-batch-ids): split the batch")


def plan(req: pb.RecommendRequest, mv: Servable, cfg: ServeConfig) -> Plan:
    """Checks one request against a version and decides how to serve it; raises NOT_FOUND for unknown
    ids (unless allowed), FAILED_PRECONDITION for a history the version cannot encode."""
    exclude = list(req.exclude_item_ids)
    check_request(req, cfg, exclude)
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
        raise errors.not_found(f"{len(unknown)} history item id(s) unknown to {mv.name} v{mv.version}: "
                               f"{_listed(unknown)}; set allow_unknown_items to drop them instead")
    if user_row is None and not rows:
        if req.user_id and not req.history:
            raise errors.not_found(f"unknown user {shown(req.user_id)} for {mv.name} v{mv.version} and no "
                                   "history given; send a history of item ids to get recommendations")
        if req.history:
            raise errors.not_found(f"none of the {len(req.history)} history items is known to {mv.name} "
                                   f"v{mv.version} and the request has no known user")
    excluded = _known_rows(cat, exclude)
    if not req.include_history:
        excluded.update(rows)
        if user_row is not None:
            excluded.update(cat.current_rows(mv.user_seen(user_row)))  # an edited item has a new row
    if rows and mv.can_history and mv.batcher is not None:
        path: Literal["encoder", "user_vector"] = "encoder"
    elif user_row is not None:
        path = "user_vector"
    else:
        raise errors.precondition(
            f"model {mv.name} v{mv.version} ({mv.kind}, {mv.user_tower} user tower) cannot encode a history: "
            "it serves known users only. Send a known user_id, or use a model with history capability")
    return Plan(cat, req.top_k, excluded, unknown, user_row, rows, path)


def _known_rows(cat: Catalogue, ids: Iterable[str]) -> set[int]:
    """Rows of the known ids among `ids`, unknown ones ignored. Without items added while serving, a C-level
    dict lookup per id: thousands of excluded ids per request are the common large case."""
    if not cat.delta_ids:
        found = set(map(cat.base.rows.get, ids))
        found.discard(None)
        return found  # type: ignore[return-value]
    return {r for r in map(cat.row, ids) if r is not None}


# ---- admin calls ----
def check_item_ids(what: str, ids: Sequence[str], cfg: ServeConfig) -> None:
    if not ids:
        raise errors.invalid(f"{what} needs at least one item")
    if len(ids) > cfg.limits.max_upsert_items:
        raise errors.invalid(f"{what} holds {len(ids)} items; at most {cfg.limits.max_upsert_items} per call "
                             "are accepted (--max-upsert-items): split the call")
    seen: set[str] = set()
    for i, item_id in enumerate(ids):
        check_id(f"items[{i}].item_id", item_id, cfg)
        if item_id in seen:
            raise errors.invalid(f"items[{i}].item_id {shown(item_id)} appears twice in one request")
        seen.add(item_id)


def check_upsert(items: Sequence[pb.ItemText], cfg: ServeConfig) -> None:
    check_item_ids("UpsertItems", [it.item_id for it in items], cfg)
    for i, it in enumerate(items):
        if not it.text.strip():
            raise errors.invalid(f"items[{i}].text is empty; the item encoder needs the item's text")
        if len(it.text) > cfg.limits.max_text_len or len(it.title) > cfg.limits.max_text_len:
            raise errors.invalid(f"items[{i}]: text or title longer than {cfg.limits.max_text_len} characters "
                                 "(--max-text-len)")


def check_delete(ids: Sequence[str], cat: Catalogue, name: str, version: int, cfg: ServeConfig) -> int:
    """Checks a DeleteItems call; returns how many of its ids are already deleted."""
    check_item_ids("DeleteItems", ids, cfg)
    unknown = [x for x in ids if cat.row(x) is None]
    if unknown:
        raise errors.not_found(f"{len(unknown)} item id(s) unknown to {name} v{version}: {_listed(unknown)}; "
                               "nothing was deleted")
    return sum(x in cat.deleted for x in ids)


def total_ids(reqs: Iterable[pb.RecommendRequest]) -> int:
    return sum(len(r.history) + len(r.exclude_item_ids) for r in reqs)
