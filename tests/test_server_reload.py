"""Hot reload: health transitions, zero lost requests while versions change under load, broken versions
refused while the old one serves, pinned versions, polling."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import grpc
import pytest
from repo_fixtures import _finish_manifest, running_server, write_cllm4rec, write_tcf

TOKEN = "t"


def test_health_not_serving_until_loaded(tmp_path) -> None:
    with running_server(tmp_path, admin_token=TOKEN) as (_, client):
        assert client.health("") == "NOT_SERVING"
        assert client.health("recsys.v1.Recommender") == "NOT_SERVING"
        assert client.health("m") == "SERVICE_UNKNOWN"
        with pytest.raises(grpc.RpcError) as info:
            client.recommend("m", user_id="u1", top_k=2)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        write_cllm4rec(tmp_path, name="m")
        result = client.reload()
        assert list(result.loaded) == ["m:1"] and list(result.serving) == ["m:1"]
        assert client.health("") == client.health("m") == client.health("recsys.v1.Recommender") == "SERVING"
        assert client.recommend("m", user_id="u1", top_k=2).version == 1


def test_reload_under_load_loses_no_request(tmp_path) -> None:
    write_cllm4rec(tmp_path, name="m", version=1, seed=1)
    with running_server(tmp_path, admin_token=TOKEN, threads=12) as (srv, client):
        stop = threading.Event()
        versions: Counter[int] = Counter()
        failures: list[str] = []
        lock = threading.Lock()

        def load(j: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    if n % 2:
                        rec = client.recommend("m", history=[f"i{(j + n) % 30}", "i2"], top_k=5, timeout=10)
                    else:
                        rec = client.recommend("m", user_id=f"u{j}", top_k=5, timeout=10)
                    assert len(rec.items) == 5
                    with lock:
                        versions[rec.version] += 1
                except Exception as exc:
                    with lock:
                        failures.append(repr(exc))
                n += 1

        threads = [threading.Thread(target=load, args=(j,)) for j in range(8)]
        for t in threads:
            t.start()
        for v in (2, 3):
            time.sleep(0.8)
            write_cllm4rec(tmp_path, name="m", version=v, seed=v)
            assert f"m:{v}" in client.reload().loaded
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        assert versions[1] > 0 and versions[3] > 0, versions
        assert sum(versions.values()) > 50
        assert set(srv.registry.loaded()["m"]) == {3}  # older versions were swapped out and closed


def test_broken_versions_are_refused_and_old_one_serves(tmp_path) -> None:
    write_tcf(tmp_path, name="m", version=1)
    with running_server(tmp_path, admin_token=TOKEN) as (srv, client):
        # 2: a file changed after the manifest was written
        v2 = write_tcf(tmp_path, name="m", version=2, seed=5).path
        with (v2 / "item_vectors.npy").open("ab") as f:
            f.write(b"x")
        result = client.reload()
        assert not result.loaded and "m:2: " in result.refused[0] and "item_vectors.npy" in result.refused[0]
        # 3: an ONNX file that is not a graph, with a matching hash
        v3 = write_tcf(tmp_path, name="m", version=3, seed=6).path
        (v3 / "user_encoder.onnx").write_bytes(b"not an onnx graph")
        manifest = json.loads((v3 / "manifest.json").read_text())
        manifest.pop("files")
        _finish_manifest(v3, manifest)
        # 4: passes the hash checks but fails warm-up (the user encoder returns the wrong dimension)
        v4 = write_tcf(tmp_path, name="m", version=4, seed=7).path
        other = write_tcf(tmp_path / "other", name="x", version=1, dim=8).path
        (v4 / "user_encoder.onnx").write_bytes((other / "user_encoder.onnx").read_bytes())
        manifest = json.loads((v4 / "manifest.json").read_text())
        manifest.pop("files")
        _finish_manifest(v4, manifest)
        result = client.reload()
        refused = "\n".join(result.refused)
        assert "m:4: " in refused and "user_encoder cannot be served" in refused and "invalid dimensions" in refused
        assert "m:3: " in refused and "Protobuf parsing failed" in refused
        assert list(result.serving) == ["m:1"]
        assert client.recommend("m", history=["t1"], top_k=3).version == 1
        assert client.health("m") == "SERVING"
        get = srv.metrics.registry.get_sample_value
        # v2 was refused by both ReloadModels calls (each retries every refused version)
        assert get("recsys_reloads_total", {"model": "m", "result": "failure"}) == 4
        assert not srv.reloader.reload_now().refused  # a poll retries a refused version only when it changed
        assert len(client.reload().refused) == 3
        write_tcf(tmp_path, name="m", version=5, seed=8)
        assert list(client.reload().loaded) == ["m:5"]
        assert client.recommend("m", history=["t1"], top_k=3).version == 5


def test_pinned_versions_and_version_requests(tmp_path) -> None:
    a = write_cllm4rec(tmp_path, name="m", version=1, seed=1)
    write_cllm4rec(tmp_path, name="m", version=2, seed=2)
    with running_server(tmp_path, admin_token=TOKEN, pins=("m:1",)) as (_, client):
        info = client.list_models().models[0]
        assert info.default_version == 2
        assert [(v.version, v.pinned, v.is_default) for v in info.versions] == [(1, True, False), (2, False, True)]
        assert client.recommend("m", user_id="u1", top_k=2).version == 2
        rec = client.recommend("m", user_id="u1", top_k=2, version=1)
        assert rec.version == 1 and rec.items[0][0] == a.top_k(a.user_vectors[1], 1)[0]
        with pytest.raises(grpc.RpcError) as info_err:
            client.recommend("m", user_id="u1", top_k=2, version=3)
        assert info_err.value.code() == grpc.StatusCode.NOT_FOUND and "loaded versions: 1, 2" in info_err.value.details()


def test_polling_picks_up_new_versions(tmp_path) -> None:
    write_cllm4rec(tmp_path, name="m", version=1)
    with running_server(tmp_path, poll_seconds=0.2) as (_, client):
        assert client.recommend("m", user_id="u1", top_k=1).version == 1
        write_cllm4rec(tmp_path, name="m", version=2, seed=3)
        end = time.monotonic() + 10
        while time.monotonic() < end and client.recommend("m", user_id="u1", top_k=1).version != 2:
            time.sleep(0.1)
        assert client.recommend("m", user_id="u1", top_k=1).version == 2
