"""The metrics port's HTTP health endpoints and the HEALTHCHECK probe, which the deployment kit relies on
(compose health checks, Prometheus scrapes, `docker run` health)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from deploy_kit import ROOT
from deploy_kit import http_get as get
from repo_fixtures import running_server, write_tcf

from server.metrics import Metrics


def probe(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.health_probe", "--target", target, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_paths_and_readiness_callable() -> None:
    metrics = Metrics()
    ready = {"now": False}
    port = metrics.serve_http(0, "127.0.0.1", ready=lambda: ready["now"])
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz")[0] == 503
        ready["now"] = True
        assert get(port, "/readyz") == (200, "ready\n")
        status, body = get(port, "/metrics")
        assert status == 200 and "# TYPE recsys_requests_total counter" in body
        for path in ("/", "/metrics/extra", "/favicon.ico"):
            assert get(port, path)[0] == 404, path
    finally:
        metrics.stop_http()


def test_readiness_defaults_to_the_overall_serving_gauge() -> None:
    metrics = Metrics()
    port = metrics.serve_http(0, "127.0.0.1")
    try:
        assert get(port, "/readyz")[0] == 503  # nothing set yet: not ready
        metrics.model_serving.labels(model="").set(1)
        assert get(port, "/readyz")[0] == 200
        metrics.model_serving.labels(model="").set(0)
        assert get(port, "/readyz")[0] == 503
    finally:
        metrics.stop_http()


def test_server_readiness_follows_grpc_health(tmp_path: Path) -> None:
    with running_server(tmp_path / "empty") as (srv, client):
        assert client.health() == "NOT_SERVING"
        assert get(srv.metrics_port, "/readyz")[0] == 503
        assert 'recsys_model_serving{model=""} 0.0' in get(srv.metrics_port, "/metrics")[1]
        assert probe(f"127.0.0.1:{srv.port}").returncode == 1
    write_tcf(tmp_path / "repo")
    with running_server(tmp_path / "repo") as (srv, client):
        assert client.health() == "SERVING"
        assert get(srv.metrics_port, "/readyz")[0] == 200
        body = get(srv.metrics_port, "/metrics")[1]
        assert 'recsys_model_serving{model=""} 1.0' in body and 'recsys_model_serving{model="tiny-tcf"} 1.0' in body
        ok = probe(f"127.0.0.1:{srv.port}")
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
        assert probe(f"127.0.0.1:{srv.port}", "--service", "tiny-tcf").returncode == 0
        assert probe(f"127.0.0.1:{srv.port}", "--service", "nope").stdout.strip() == "SERVICE_UNKNOWN"


@pytest.mark.timeout(60)
def test_probe_fails_when_nothing_listens() -> None:
    from server.spawn import free_port

    out = probe(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert out.returncode == 1 and out.stdout.strip() in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
