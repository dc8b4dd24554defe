"""The CPU serving image, built and run: what tests/test_deploy_*.py can only infer from the Dockerfile.

Built by scripts/build-images.sh (layers reused when unchanged), run read-only with a repository that the
real exporter wrote mounted at /models, then asked over HTTP and gRPC from the host like a client would.
The answers must be the exact ones (brute force over the exported vectors), an admin UpsertItems must reach
the journal on the mounted volume, and SIGTERM must end the container with exit 0 inside its grace period.
Figures (start-up, memory, stop) go to benchmarks/results/images.{json,md}.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from container_kit import Container, build, export_tiny_repository, inspect, record_run
from deploy_kit import http_get

from client import RecommenderClient

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

TOKEN = "container-test-token"
STOP_TIMEOUT = 15  # the engine's SIGKILL comes after this; > the server's default RECSYS_GRACE_SECONDS (10)
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def image(engine: str) -> str:
    return build(engine, "serve")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return export_tiny_repository(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def container(engine: str, image: str, repository):
    repo, _ = repository
    # --read-only: the image must work with a read-only root filesystem (docs/deployment.md); podman and
    # docker then give /tmp a tmpfs, as the Kubernetes Deployment does with an emptyDir.
    extra = ["--read-only", "--tmpfs", "/tmp"] if engine == "docker" else ["--read-only"]
    ctr = Container(engine, image, "llmrec-test-serve", repo,
                    env={"RECSYS_ADMIN_TOKEN": TOKEN, "RECSYS_POLL_SECONDS": "0"}, extra=extra)
    try:
        FIGURES["ready_s"] = round(ctr.wait_ready(), 2)
        yield ctr
    finally:
        ctr.remove()


@pytest.fixture(scope="module")
def client(container: Container):
    with RecommenderClient(container.grpc_target, admin_token=TOKEN) as c:
        yield c


def test_image_config_non_root_with_healthcheck(engine: str, image: str) -> None:
    info = inspect(engine, image)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    health = config.get("Healthcheck") or info.get("Healthcheck") or {}  # docker: in Config; podman: beside it
    assert health.get("Test") == ["CMD", "python", "-m", "server.health_probe"], \
        f"HEALTHCHECK missing from the image config (podman needs --format docker): {health}"
    assert config["Entrypoint"] == ["llmrec", "serve"]
    assert {"50051/tcp", "9095/tcp"} <= set(config.get("ExposedPorts") or {})


def test_no_torch_in_the_image(engine: str, image: str) -> None:
    out = subprocess.run([engine, "run", "--rm", "--entrypoint", "python", image, "-c", "import torch"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "No module named 'torch'" in out.stderr, out.stderr


def test_runs_as_uid_10001(container: Container) -> None:
    out = container.exec("id", "-u")
    assert out.stdout.strip() == "10001", out.stdout + out.stderr
    assert container.exec("touch", "/opt/venv/x").returncode != 0, "the root filesystem should be read-only"


def test_http_health_endpoints(container: Container) -> None:
    assert http_get(container.metrics_port, "/healthz")[0] == 200
    status, body = http_get(container.metrics_port, "/readyz")
    assert status == 200, body
    status, body = http_get(container.metrics_port, "/metrics")
    assert status == 200 and 'recsys_model_serving{model="tcf"} 1.0' in body, body[-2000:]


def test_health_probe_and_engine_healthcheck(engine: str, container: Container) -> None:
    probe = container.exec("python", "-m", "server.health_probe")
    assert probe.returncode == 0 and probe.stdout.strip() == "SERVING", probe.stdout + probe.stderr
    if engine == "podman":  # runs the image's HEALTHCHECK command now, as the engine's timer would
        check = subprocess.run([engine, "healthcheck", "run", container.name], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def _top(bundle: Any, vector: np.ndarray, k: int) -> list[str]:
    scores = np.asarray(bundle.item_vectors) @ vector
    return [bundle.item_ids[r] for r in np.argsort(-scores)[:k]]


@pytest.mark.parametrize("name", ["tcf", "lm"])
def test_recommend_known_users_exactly(client: RecommenderClient, repository, name: str) -> None:
    bundle = repository[1][name]
    for u in (0, 7):
        rec = client.recommend(name, user_id=bundle.user_ids[u], top_k=10, include_history=True)
        assert [i for i, _ in rec.items] == _top(bundle, np.asarray(bundle.user_vectors)[u], 10)


def test_recommend_from_history_runs_the_onnx_encoder(client: RecommenderClient, repository) -> None:
    bundle = repository[1]["tcf"]
    history = [bundle.item_ids[int(r)] for r in bundle.user_histories[3]]
    rec = client.recommend("tcf", history=history, top_k=10, include_history=True)
    scores = np.asarray(bundle.item_vectors) @ np.asarray(bundle.user_vectors)[3]
    np.testing.assert_allclose([s for _, s in rec.items], np.sort(scores)[::-1][:10], rtol=1e-3, atol=1e-3)


def test_upsert_items_reaches_the_mounted_journal(client: RecommenderClient, repository) -> None:
    repo, bundles = repository
    n = len(bundles["tcf"].item_ids)
    resp = client.upsert_items("tcf", [("fresh-item", "a new item text")])
    assert resp.added == 1 and resp.num_items == n + 1
    rec = client.recommend("tcf", history=["fresh-item"], top_k=n + 1, include_history=True)
    assert "fresh-item" in [i for i, _ in rec.items]
    journal = repo / "tcf" / "items.journal"
    assert journal.is_file() and journal.stat().st_uid == 10001 and b"fresh-item" in journal.read_bytes()


def test_memory_in_the_container(container: Container) -> None:
    rss = container.rss_mb()
    FIGURES["rss_mb"] = round(rss)
    assert 30 < rss < 2048, f"server RSS {rss:.0f} MB"


def test_sigterm_drains_and_exits_0(container: Container, image: str) -> None:
    """Last in this module: stops the shared container."""
    seconds, code = container.stop(STOP_TIMEOUT)
    assert code == 0, f"exit {code} after {seconds:.1f} s (137: killed, SIGTERM did not end it)\n{container.logs()}"
    assert seconds < STOP_TIMEOUT
    if {"ready_s", "rss_mb"} <= FIGURES.keys():  # the whole module ran
        record_run("serve", {"image": image, **FIGURES, "stop_s": round(seconds, 2), "exit_code": code})
