"""The GPU serving image, built where no CUDA base image can be pulled and no GPU exists: on a stand-in base
(scripts/build-images.sh picks the Python base when nvidia/cuda cannot be pulled), which still proves the
Dockerfile's install and swap of the GPU builds, and the image's fallback: with RECSYS_ENGINE=auto and no
GPU visible it must serve on CPU, with the exact answers, and stop cleanly.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from container_kit import Container, build, export_tiny_repository, inspect, record_run
from deploy_kit import http_get

from client import RecommenderClient

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

STOP_TIMEOUT = 15


@pytest.fixture(scope="module")
def image(engine: str) -> str:
    return build(engine, "gpu", timeout=1700)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return export_tiny_repository(tmp_path_factory.mktemp("gpu"))


def test_gpu_image_config(engine: str, image: str) -> None:
    info = inspect(engine, image)
    config = info["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["llmrec", "serve"]
    assert "RECSYS_ENGINE=auto" in config["Env"]
    health = config.get("Healthcheck") or info.get("Healthcheck") or {}
    assert health.get("Test") == ["CMD", "python", "-m", "server.health_probe"]


def test_gpu_builds_installed_without_torch(engine: str, image: str) -> None:
    script = ("import importlib.metadata as m, onnxruntime as o\n"
              "print(o.get_available_providers())\n"
              "print(sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'] in "
              "('onnxruntime', 'onnxruntime-gpu', 'faiss-cpu', 'faiss-gpu-cu12', 'torch')))\n")
    out = subprocess.run([engine, "run", "--rm", "--entrypoint", "python", image, "-c", script],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    providers, dists = out.stdout.strip().splitlines()[-2:]
    assert "CUDAExecutionProvider" in providers
    assert dists == "['faiss-gpu-cu12', 'onnxruntime-gpu']", dists


def test_gpu_image_serves_on_cpu_without_a_gpu(engine: str, image: str, repository) -> None:
    repo, bundles = repository
    ctr = Container(engine, image, "llmrec-test-serve-gpu", repo, env={"RECSYS_POLL_SECONDS": "0"})
    try:
        ready = ctr.wait_ready()
        probe = ctr.exec("python", "-m", "server.health_probe")
        assert probe.stdout.strip() == "SERVING", probe.stdout + probe.stderr
        bundle = bundles["tcf"]
        with RecommenderClient(ctr.grpc_target) as client:
            rec = client.recommend("tcf", user_id=bundle.user_ids[2], top_k=10, include_history=True)
        scores = np.asarray(bundle.item_vectors) @ np.asarray(bundle.user_vectors)[2]
        assert [i for i, _ in rec.items] == [bundle.item_ids[r] for r in np.argsort(-scores)[:10]]
        status, metrics = http_get(ctr.metrics_port, "/metrics")
        assert status == 200, metrics
        serving = re.findall(r'^recsys_engine_info\{([^}]*)\} 1\.0$', metrics, re.M)
        assert serving, metrics[-2000:]
        assert not [s for s in serving if re.search(r"cuda|gpu", s, re.I)], f"a GPU engine without a GPU: {serving}"
        rss = ctr.rss_mb()
        seconds, code = ctr.stop(STOP_TIMEOUT)
        assert code == 0 and seconds < STOP_TIMEOUT, f"exit {code} after {seconds:.1f} s\n{ctr.logs()}"
    finally:
        ctr.remove()
    record_run("gpu-on-cpu", {"image": image, "ready_s": round(ready, 2), "rss_mb": round(rss),
                              "stop_s": round(seconds, 2), "exit_code": code})
