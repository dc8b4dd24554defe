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
    assert manifest["journal"] == {"file": journal.JOURNAL, "folded_through": 3, "folded_upserts": 2}
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
