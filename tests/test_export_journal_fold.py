"""`llmrec export --fold-journal`: items added while serving become part of the next version, with the
vector a server would give them, and servers then replay only what came after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from repo_fixtures import running_server

from export.config import ExportConfig
from export.journal_fold import FoldError
from export.testing import tiny_bundle
from export.writer import export_bundle
from repository import journal

torch.set_num_threads(1)


def test_folded_journal_matches_what_the_server_would_serve(tmp_path: Path) -> None:
    bundle = tiny_bundle("tcf", tmp_path)
    repo = tmp_path / "repo"
    export_bundle(bundle, repo, "m", ExportConfig())
    existing, gone = bundle.item_ids[0], bundle.item_ids[1]
    path = repo / "m" / journal.JOURNAL
    journal.append(path, 0, 0, [("upsert", "brand-new", "a new item", "New"), ("upsert", existing, "changed text", ""),
                                ("delete", gone, "", "")])
    v2 = export_bundle(bundle, repo, "m", ExportConfig(fold_journal=True))
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["journal"] == {"file": journal.JOURNAL, "folded_through": 3, "folded_upserts": 2, "hidden": [gone]}
    assert manifest["num_items"] == len(bundle.item_ids) + 1
    with running_server(repo, admin_token="tok") as (srv, client):
        with srv.registry.use("m") as mv:
            cat = mv.catalogue
            assert mv.version == 2 and not cat.delta_ids  # nothing left to replay but the deletion
            assert cat.row("brand-new") < len(cat.base.ids) and cat.title(cat.row("brand-new")) == "New"
            served = mv.item_encoder.encode(["a new item", "changed text"])
            assert np.array_equal(cat.vectors([cat.row("brand-new"), cat.row(existing)]), served)
            assert gone in cat.deleted and mv.applied_seq == 3
        client.upsert_items("m", [("later", "another one", "")])  # seq 4 > folded_through: replayed
        with srv.registry.use("m") as mv:
            assert mv.catalogue.delta_ids == ["later"]


def test_fold_refuses_upserts_for_a_model_without_a_text_encoder(tmp_path: Path) -> None:
    bundle = tiny_bundle("cllm4rec", tmp_path)
    repo = tmp_path / "repo"
    export_bundle(bundle, repo, "c", ExportConfig())
    journal.append(repo / "c" / journal.JOURNAL, 0, 0, [("upsert", "x", "text", "")])
    with pytest.raises(FoldError, match="no text item encoder"):
        export_bundle(bundle, repo, "c", ExportConfig(fold_journal=True))
    assert sorted(p.name for p in (repo / "c").iterdir()) == ["1", journal.JOURNAL]


def test_fold_carries_deleted_items_as_hidden_rows_that_histories_may_name(tmp_path: Path) -> None:
    """R1 at the fold: an item added while serving and deleted since is a row of the new version (its last
    upsert's vector), hidden, so a history naming it is still answered; an exported item deleted stays hidden."""
    bundle = tiny_bundle("tcf", tmp_path)
    repo = tmp_path / "repo"
    export_bundle(bundle, repo, "m", ExportConfig())
    gone = bundle.item_ids[1]
    path = repo / "m" / journal.JOURNAL
    journal.append(path, 0, 0, [("upsert", "brief", "a short-lived item", "Brief"), ("delete", "brief", "", ""),
                                ("upsert", "brief", "its second life", ""), ("delete", "brief", "", ""),
                                ("delete", gone, "", "")])
    v2 = export_bundle(bundle, repo, "m", ExportConfig(fold_journal=True))
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["journal"]["hidden"] == sorted(["brief", gone])
    with running_server(repo, admin_token="tok") as (srv, client):
        with srv.registry.use("m") as mv:
            cat = mv.catalogue
            row = cat.row("brief")
            assert row is not None and row < len(cat.base.ids) and cat.hidden(row) and cat.hidden(cat.row(gone))
            assert cat.title(row) == "Brief"  # an upsert without a title keeps the one given before
            assert np.array_equal(cat.vectors([row])[0], mv.item_encoder.encode(["its second life"])[0])
        answer = client.recommend("m", history=["brief", bundle.item_ids[2]], top_k=5)
        assert answer.items and "brief" not in {i for i, _ in answer.items}
        assert gone not in {i for i, _ in client.recommend("m", history=["brief"], top_k=50).items}


def test_folded_vectors_are_bit_exact_only_with_the_fp32_item_engine(tmp_path: Path) -> None:
    """R16: the fold encodes with ONNX Runtime on CPU in fp32. A server whose item engine is
    onnxruntime-cpu:fp32 gives the same bits; a bf16 engine gives vectors within bf16 rounding, not equal."""
    bundle = tiny_bundle("tcf", tmp_path)
    repo = tmp_path / "repo"
    export_bundle(bundle, repo, "m", ExportConfig())
    journal.append(repo / "m" / journal.JOURNAL, 0, 0, [("upsert", "n", "a new item with some words", "")])
    export_bundle(bundle, repo, "m", ExportConfig(fold_journal=True))
    text = ["a new item with some words"]
    with running_server(repo) as (srv, _), srv.registry.use("m") as mv:
        assert mv.engines["item_encoder"] == "onnxruntime-cpu:fp32"
        folded = mv.catalogue.vectors([mv.catalogue.row("n")])[0]
        assert np.array_equal(folded, mv.item_encoder.encode(text)[0])
    pytest.importorskip("openvino")
    from server.engines import engine_candidates
    from server.machine import detect

    try:
        engine_candidates(detect(), "openvino-cpu:bf16")
    except ValueError as exc:
        pytest.skip(f"no bf16 item engine on this machine: {exc}")
    with running_server(repo, engine="openvino-cpu:bf16", gate_min_cosine=0.9) as (srv, _), \
            srv.registry.use("m") as mv:
        if not mv.engines["item_encoder"].endswith("bf16"):
            pytest.skip(f"no bf16 item engine on this machine ({mv.engines['item_encoder']})")
        live = mv.item_encoder.encode(text)[0]
        assert np.allclose(live, folded, atol=0.02, rtol=0.02)


def test_fold_reads_the_redis_stream_the_servers_use(tmp_path: Path) -> None:
    from redis_server import redis_server

    from repository.journal_redis import open_log

    bundle = tiny_bundle("tcf", tmp_path)
    repo = tmp_path / "repo"
    export_bundle(bundle, repo, "m", ExportConfig())
    with redis_server(tmp_path / "redis") as redis:
        open_log(redis.url, "m").append(journal.Cursor(), [journal.ItemChange("upsert", "n", "a new item", "N"),
                                                           journal.ItemChange("delete", bundle.item_ids[0])])
        v2 = export_bundle(bundle, repo, "m", ExportConfig(fold_journal=True, journal=redis.url))
        fold = json.loads((v2 / "manifest.json").read_text())["journal"]
        assert (fold["file"], fold["folded_through"], fold["hidden"]) == ("llmrec:m:journal", 2, [bundle.item_ids[0]])
        with running_server(repo, journal=redis.url) as (srv, _), srv.registry.use("m") as mv:
            assert mv.version == 2 and mv.applied_seq == 2 and not mv.catalogue.delta_ids
            assert mv.catalogue.row("n") < len(mv.catalogue.base.ids)
            assert mv.catalogue.hidden(mv.catalogue.row(bundle.item_ids[0]))
