"""A hybrid item tower (text + ID) served: a replaced item keeps its trained ID part, a new item is its
text vector alone, live and when folded into the next version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from repo_fixtures import _finish_manifest, encode_text, running_server, write_tcf


def _make_hybrid(version: Path, dim: int, n: int, seed: int = 4) -> np.ndarray:
    id_part = np.random.default_rng(seed).normal(scale=0.5, size=(n, dim)).astype(np.float32)
    np.save(version / "item_id_part.npy", id_part)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest.pop("files")
    manifest["item_tower"] = "hybrid"
    manifest["tcf"]["id_part"] = "item_id_part.npy"
    _finish_manifest(version, manifest)
    return id_part


def test_replaced_items_keep_their_id_part_and_new_items_are_text_only(tmp_path: Path) -> None:
    model = write_tcf(tmp_path, name="h")
    id_part = _make_hybrid(model.path, dim=16, n=len(model.item_ids))
    with running_server(tmp_path, admin_token="tok") as (srv, client):
        client.upsert_items("h", [("t3", "w7 w8 w9", ""), ("brand-new", "w1 w2", "")])
        with srv.registry.use("h") as mv:
            assert mv.item_tower == "hybrid"
            cat = mv.catalogue
            replaced, new = cat.vectors([cat.row("t3"), cat.row("brand-new")])
    T = model.extra["T"]
    assert np.allclose(replaced, encode_text(T, "w7 w8 w9") + id_part[3], atol=1e-5)
    assert np.allclose(new, encode_text(T, "w1 w2"), atol=1e-5)
