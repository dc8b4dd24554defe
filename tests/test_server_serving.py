"""Serving answers on tiny repositories: exact equality with numpy brute force, exclusions, titles,
batching, upsert, list/health/reflection/metrics."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from polling import until_value
from repo_fixtures import encode_text, running_server, write_cllm4rec, write_tcf

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    models = {
        "cllm": write_cllm4rec(repo),
        "tcf": write_tcf(repo),
        "dssm": write_tcf(repo, name="tiny-dssm", user_tower="dssm", seed=2),
    }
    with running_server(repo, admin_token=TOKEN, max_wait_ms=20.0, max_batch_size=8) as (srv, client):
        yield srv, client, models


def _check_against_brute_force(rec, model, vector, k, exclude=frozenset()):
    scores = model.item_vectors @ vector
    got_ids = [i for i, _ in rec.items]
    assert len(got_ids) == k
    assert not set(model.rows(got_ids)) & set(exclude)
    for item, score in rec.items:  # every returned score is the true inner product
        assert score == pytest.approx(float(scores[model.item_ids.index(item)]), rel=1e-4, abs=1e-4)
    expected = sorted((float(scores[r]) for r in range(len(scores)) if r not in exclude), reverse=True)[:k]
    np.testing.assert_allclose([s for _, s in rec.items], expected, rtol=1e-4, atol=1e-4)


def test_known_user_matches_brute_force(env) -> None:
    _, client, m = env
    for name, model in (("tiny-cllm", m["cllm"]), ("tiny-tcf", m["tcf"]), ("tiny-dssm", m["dssm"])):
        rec = client.recommend(name, user_id="u3", top_k=7, include_history=True)
        assert (rec.model, rec.version, rec.known_user) == (name, 1, True)
        _check_against_brute_force(rec, model, model.user_vectors[3], 7)


def test_history_paths_match_brute_force(env) -> None:
    _, client, m = env
    cllm, tcf = m["cllm"], m["tcf"]
    hist = ["i3", "i7", "i1"]
    _check_against_brute_force(
        client.recommend("tiny-cllm", history=hist, top_k=5, include_history=True), cllm, cllm.history_vector(hist), 5
    )
    # a known user with a history: the user's token goes into the prompt
    _check_against_brute_force(
        client.recommend("tiny-cllm", user_id="u2", history=hist, top_k=5, include_history=True),
        cllm,
        cllm.history_vector(hist, "u2"),
        5,
    )
    # an unknown user with a history: the anonymous token
    rec = client.recommend("tiny-cllm", user_id="nobody", history=hist, top_k=5, include_history=True)
    assert not rec.known_user
    _check_against_brute_force(rec, cllm, cllm.history_vector(hist), 5)
    # long histories keep only the most recent items (max_history 16 / max_seq_len 5)
    long = [f"i{r % 30}" for r in range(40)]
    _check_against_brute_force(
        client.recommend("tiny-cllm", history=long, top_k=4, include_history=True), cllm, cllm.history_vector(long), 4
    )
    th = [f"t{r}" for r in (5, 9, 11, 2, 30, 31, 7)]
    _check_against_brute_force(
        client.recommend("tiny-tcf", history=th, top_k=6, include_history=True), tcf, tcf.history_vector(th), 6
    )


def test_exclusions_keep_k_results_and_titles(env) -> None:
    _, client, m = env
    cllm = m["cllm"]
    full = client.recommend("tiny-cllm", user_id="u4", top_k=10, include_history=True)
    top5 = [i for i, _ in full.items[:5]]
    rec = client.recommend("tiny-cllm", user_id="u4", top_k=10, include_history=True, exclude_item_ids=top5)
    excluded = set(cllm.rows(top5))
    _check_against_brute_force(rec, cllm, cllm.user_vectors[4], 10, excluded)
    # by default the request history and the known user's stored history are left out
    hist = ["i0", "i1"]
    rec = client.recommend("tiny-cllm", user_id="u4", history=hist, top_k=25)
    banned = set(cllm.rows(hist)) | set(cllm.seen[4])
    assert len(rec.items) == 25 and not set(cllm.rows([i for i, _ in rec.items])) & banned
    everything = client.recommend("tiny-cllm", user_id="u4", history=hist, top_k=30, include_history=True)
    assert set(cllm.rows([i for i, _ in everything.items])) >= banned
    assert rec.titles[0] == f"Title {cllm.item_ids.index(rec.items[0][0])}"
    # asking for more than the catalogue minus exclusions returns what is left
    rec = client.recommend("tiny-cllm", user_id="u4", top_k=30, include_history=True, exclude_item_ids=top5)
    assert len(rec.items) == 25


def test_unknown_history_items_can_be_dropped(env) -> None:
    _, client, m = env
    rec = client.recommend("tiny-cllm", history=["i3", "zzz", "i7"], top_k=3, include_history=True, allow_unknown_items=True)
    assert rec.unknown_item_ids == ["zzz"]
    _check_against_brute_force(rec, m["cllm"], m["cllm"].history_vector(["i3", "i7"]), 3)


def test_batch_rpc_matches_single_calls(env) -> None:
    _, client, _ = env
    reqs = [
        client.request("tiny-cllm", user_id="u1", top_k=3),
        client.request("tiny-tcf", history=["t1"], top_k=3),
        client.request("tiny-cllm", history=["i2", "i9"], top_k=3),
    ]
    batch = client.recommend_batch(reqs)
    singles = [client.stub.Recommend(r) for r in reqs]
    assert [[i for i, _ in b.items] for b in batch] == [[x.item_id for x in s.items] for s in singles]


def test_dynamic_batching_batches_concurrent_history_requests(env) -> None:
    srv, client, m = env
    hist_sets = [[f"i{(j * 3 + r) % 30}" for r in range(1 + j % 5)] for j in range(24)]  # different lengths
    results: dict[int, list[str]] = {}

    def worker(j: int) -> None:
        results[j] = [i for i, _ in client.recommend("tiny-cllm", history=hist_sets[j], top_k=3, include_history=True).items]

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j, hist in enumerate(hist_sets):  # right-padded batches give the same answers as single rows
        scores = m["cllm"].item_vectors @ m["cllm"].history_vector(hist)
        assert results[j] == [m["cllm"].item_ids[r] for r in np.argsort(-scores)[:3]]
    hist = srv.metrics.registry.get_sample_value
    count = hist("recsys_batch_size_count", {"model": "tiny-cllm"})
    total = hist("recsys_batch_size_sum", {"model": "tiny-cllm"})
    assert count and total / count > 1.0, f"no batching: {total} rows in {count} batches"
    assert hist("recsys_batch_size_bucket", {"model": "tiny-cllm", "le": "1.0"}) < count


def test_upsert_makes_new_item_recommendable(env) -> None:
    _, client, m = env
    tcf = m["tcf"]
    text = "w31 w35 w38 w39"  # words no catalogue item uses
    resp = client.upsert_items("tiny-tcf", [("new-1", text, "A brand new item")])
    assert (resp.added, resp.replaced, resp.num_items) == (1, 0, 41)
    rec = client.recommend("tiny-tcf", history=["new-1"], top_k=3, include_history=True)
    assert rec.items[0][0] == "new-1" and rec.titles[0] == "A brand new item"
    assert rec.items[0][1] == pytest.approx(1.0, abs=1e-4)  # normalised vector, identity SASRec
    np.testing.assert_allclose(
        rec.items[0][1],
        float(encode_text(tcf.extra["T"], text) @ encode_text(tcf.extra["T"], text)),
        atol=1e-4,
    )
    # replace: the item now matches another history
    resp = client.upsert_items("tiny-tcf", [("new-1", tcf.extra["texts"][5])])
    assert (resp.added, resp.replaced) == (0, 1)
    rec = client.recommend("tiny-tcf", history=["t5"], top_k=2, include_history=True, exclude_item_ids=["t5"])
    assert rec.items[0][0] == "new-1"
    # DSSM can upsert too (known users see the new item)
    assert client.upsert_items("tiny-dssm", [("d-new", "w1 w2")]).added == 1


def test_upsert_into_ivf_index(tmp_path: Path) -> None:
    model = write_tcf(tmp_path, name="ivf", index_type="ivf")
    with running_server(tmp_path, admin_token=TOKEN) as (_, client):
        client.upsert_items("ivf", [("x", "w32 w33 w34"), ("t3", model.extra["texts"][3])])
        rec = client.recommend("ivf", history=["x"], top_k=1, include_history=True)
        assert rec.items[0][0] == "x"
        assert client.list_models().models[0].versions[0].num_items == 41


def test_list_models_health_reflection(env) -> None:
    _, client, _ = env
    models = {m.name: m for m in client.list_models().models}
    assert set(models) == {"tiny-cllm", "tiny-tcf", "tiny-dssm"}
    v = models["tiny-cllm"].versions[0]
    assert (v.kind, v.user_tower, v.dim, v.num_users, v.index_type, v.is_default) == (
        "cllm4rec",
        "lm",
        8,
        10,
        "flat",
        True,
    )
    assert v.capabilities.history and not v.capabilities.upsert_items and v.loaded_at.endswith("Z")
    for service in ("", "recsys.v1.Recommender", "tiny-cllm", "tiny-tcf"):
        assert client.health(service) == "SERVING"
    assert client.health("no-such-model") == "SERVICE_UNKNOWN"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    answers = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"recsys.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint_after_calls(env) -> None:
    srv, client, _ = env
    client.recommend("tiny-cllm", user_id="u1", top_k=2)
    with pytest.raises(grpc.RpcError):
        client.recommend("tiny-cllm", user_id="u1", top_k=0)
    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read().decode()

    # the server counts before it answers; polled all the same: a scrape is another thread's view
    text = until_value(scrape, lambda t: 'code="INVALID_ARGUMENT"' in t, "the INVALID_ARGUMENT count in /metrics")
    assert 'recsys_requests_total{code="OK",method="Recommend",model="tiny-cllm"}' in text
    assert 'code="INVALID_ARGUMENT"' in text
    assert 'recsys_request_latency_seconds_bucket{le="0.0001",method="Recommend",model="tiny-cllm"}' in text
    assert 'recsys_stage_seconds_count{model="tiny-cllm",stage="search"}' in text
    assert 'recsys_loaded_version{model="tiny-tcf",version="1"} 1.0' in text
    assert 'recsys_reloads_total{model="tiny-cllm",result="success"} 1.0' in text
    assert "recsys_queue_depth" in text
    assert "u1" not in text and "i3" not in text  # no user or item labels
