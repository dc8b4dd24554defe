"""End to end with the real exporter: tiny bundles -> export.writer.export_bundle -> served over gRPC.

The exporter computed each known user's vector by running the same encoder over that user's stored
history, so a history request carrying that history must reproduce the user's precomputed answer:
this checks the server's CLLM4Rec prompt building and SASRec padding against the exporter's.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from repo_fixtures import running_server

from export.config import ExportConfig, GraphConfig
from export.testing import tiny_bundle
from export.writer import export_bundle

TOKEN = "tok"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    import torch

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("bundles")
    repo = tmp_path_factory.mktemp("repo")
    cfg = ExportConfig(graph=GraphConfig(ort_optimize="basic"), report=False)
    for name in ("lm", "tcf", "dssm"):
        (work / name).mkdir()
    bundles = {"lm": tiny_bundle("cllm4rec", work / "lm"), "tcf": tiny_bundle("tcf", work / "tcf"),
               "dssm": tiny_bundle("tcf", work / "dssm", user_tower="dssm")}
    for name, bundle in bundles.items():
        export_bundle(bundle, repo, name, cfg)
    with running_server(repo, admin_token=TOKEN) as (_srv, client):
        yield client, bundles


def _top(bundle, vector: np.ndarray, k: int) -> list[str]:
    scores = np.asarray(bundle.item_vectors) @ vector
    return [bundle.item_ids[r] for r in np.argsort(-scores)[:k]]


@pytest.mark.parametrize("name", ["lm", "tcf", "dssm"])
def test_known_users_match_brute_force(served, name) -> None:
    client, bundles = served
    b = bundles[name]
    for u in (0, 3, 7):
        rec = client.recommend(name, user_id=b.user_ids[u], top_k=10, include_history=True)
        assert [i for i, _ in rec.items] == _top(b, np.asarray(b.user_vectors)[u], 10)


@pytest.mark.parametrize("name", ["lm", "tcf"])
def test_history_requests_reproduce_the_exporters_user_vectors(served, name) -> None:
    client, bundles = served
    b = bundles[name]
    for u in (0, 5, 11):
        history = [b.item_ids[int(r)] for r in b.user_histories[u]]
        user = b.user_ids[u] if name == "lm" else ""  # the LM prompt carries the user token
        rec = client.recommend(name, user_id=user, history=history, top_k=10, include_history=True)
        expected = np.asarray(b.user_vectors)[u]
        scores = np.asarray(b.item_vectors) @ expected
        got = [b.item_ids.index(i) for i, _ in rec.items]
        np.testing.assert_allclose([s for _, s in rec.items], scores[got], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(sorted(scores[got], reverse=True), np.sort(scores)[::-1][:10], rtol=1e-3,
                                   atol=1e-3)


def test_exported_tcf_upsert_and_list_models(served) -> None:
    client, bundles = served
    models = {m.name: m for m in client.list_models().models}
    assert models["dssm"].versions[0].capabilities.upsert_items and not models["lm"].versions[0].capabilities.upsert_items
    resp = client.upsert_items("tcf", [("fresh", "a new item text")])
    assert resp.added == 1 and resp.num_items == len(bundles["tcf"].item_ids) + 1
    rec = client.recommend("tcf", history=["fresh"], top_k=len(bundles["tcf"].item_ids) + 1, include_history=True)
    assert "fresh" in [i for i, _ in rec.items]
