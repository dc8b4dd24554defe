"""The committed stubs are exactly what `python -m server.proto_gen` generates from the .proto."""

from __future__ import annotations

from pathlib import Path

from recsys.v1 import recommender_pb2 as pb
from server import proto_gen


def test_committed_stubs_match_regeneration(tmp_path: Path) -> None:
    generated = proto_gen.generate(out_root=tmp_path)
    assert generated
    for path in generated:
        committed = proto_gen.PROTO_ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `make proto` and commit the stubs"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run `make proto`"


def test_contract_has_the_documented_rpcs_and_fields() -> None:
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    assert service.full_name == "recsys.v1.Recommender"
    assert {m.name for m in service.methods} == {
        "Recommend",
        "RecommendBatch",
        "ListModels",
        "UpsertItems",
        "DeleteItems",
        "ReloadModels",
    }
    fields = set(pb.RecommendRequest.DESCRIPTOR.fields_by_name)
    assert {
        "model",
        "version",
        "user_id",
        "history",
        "top_k",
        "exclude_item_ids",
        "exclude_history",
        "include_history",
        "allow_unknown_items",
    } <= fields
    assert {"items", "model", "version", "unknown_item_ids"} <= set(
        pb.RecommendResponse.DESCRIPTOR.fields_by_name
    )
