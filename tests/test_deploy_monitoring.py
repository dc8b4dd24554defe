"""Monitoring kit: the alert rules and Prometheus config pass promtool (syntax and unit tests), the
Grafana dashboard's queries parse, and every metric the dashboard and the alerts use is one that a live
server really exports after some traffic."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_kit import DEPLOY, METRIC_NAME, http_get, load_yaml_docs, tool
from prometheus_client.parser import text_string_to_metric_families
from repo_fixtures import running_server, write_cllm4rec, write_tcf

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llmrec.json"
# Grafana's own variables, replaced by what they expand to before PromQL sees them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$model": ".*"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = tool("promtool")
    if exe is None:
        pytest.skip("promtool not installed: `make setup` unpacks it from Debian's prometheus package "
                    "(needs apt-get; on other systems put promtool on PATH)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def dashboard_exprs() -> dict[str, list[str]]:
    """Panel title -> its PromQL queries, Grafana variables expanded."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    out = {}
    for p in panels:
        exprs = [t["expr"] for t in p.get("targets", [])]
        for var, value in GRAFANA_VARS.items():
            exprs = [e.replace(var, value) for e in exprs]
        out[p["title"]] = exprs
    return out


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


@pytest.mark.parametrize("args", [("check", "rules", "alerts.yml"), ("test", "rules", "alerts.test.yml"),
                                  ("check", "config", "prometheus.yml")], ids=" ".join)
def test_promtool(args: tuple[str, ...]) -> None:
    out = promtool(*args[:2], str(PROMETHEUS / args[2]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alerts_cover_the_issue() -> None:
    assert set(alert_exprs()) >= {"LlmrecHighErrorRatio", "LlmrecHighP99Latency", "LlmrecNotServing",
                                  "LlmrecQueueSaturated", "LlmrecReloadFailed"}


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool has no offline query check, so every panel query becomes a recording rule and is checked."""
    rules = [{"record": f"panel:{i}", "expr": e} for i, exprs in enumerate(dashboard_exprs().values()) for e in exprs]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_shows_what_the_issue_asks() -> None:
    used = {m for exprs in dashboard_exprs().values() for e in exprs for m in METRIC_NAME.findall(e)}
    assert used >= {"recsys_requests_total", "recsys_request_latency_seconds_bucket", "recsys_stage_seconds_bucket",
                    "recsys_queue_depth", "recsys_batch_size_bucket", "recsys_loaded_version",
                    "recsys_reloads_total", "recsys_model_serving"}
    assert all(dashboard_exprs().values()), "a panel without a query"


def _exported_samples(tmp_path: Path) -> set[str]:
    """Sample names on a live server's /metrics after history, known-user, upsert and failing requests."""
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path)
    with running_server(tmp_path, admin_token="tok") as (srv, client):
        client.recommend("tiny-cllm", history=["i1", "i2"], top_k=3)
        client.recommend("tiny-tcf", user_id="u1", top_k=3)
        client.upsert_items("tiny-tcf", [("fresh", "w1 w2 w3")])
        with pytest.raises(Exception, match="NOT_FOUND"):
            client.recommend("nope", user_id="u1", top_k=3)
        status, body = http_get(srv.metrics_port, "/metrics")
    assert status == 200
    return {s.name for family in text_string_to_metric_families(body) for s in family.samples}


def test_dashboard_and_alert_metrics_exist_on_a_live_server(tmp_path: Path) -> None:
    exported = _exported_samples(tmp_path)
    for title, exprs in dashboard_exprs().items():
        missing = {m for e in exprs for m in METRIC_NAME.findall(e)} - exported
        assert not missing, f"panel {title!r} queries {missing}, which the server does not export"
    for alert, expr in alert_exprs().items():
        missing = set(METRIC_NAME.findall(expr)) - exported
        assert not missing, f"alert {alert} uses {missing}, which the server does not export"


def test_compose_wiring() -> None:
    """The compose file, Prometheus and Grafana point at each other and at files that exist."""
    from server.config import ServeConfig

    compose = load_yaml_docs(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    defaults = ServeConfig()
    # "${LLMREC_GRPC_PORT:-50051}:50051": the host port may be moved, its default and the container's may not
    published = {(re.sub(r"^\$\{\w+:-(\d+)\}$", r"\1", host), inside)
                 for host, inside in (p.rsplit(":", 1) for p in services["server"]["ports"])}
    assert published == {(str(defaults.network.port), str(defaults.network.port)),
                         (str(defaults.network.metrics_port), str(defaults.network.metrics_port))}
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"server:{defaults.network.metrics_port}"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            elif not source.startswith("$"):
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provider = load_yaml_docs(DEPLOY / "grafana/provisioning/dashboards/llmrec.yml")[0]["providers"][0]
    assert grafana_mounts["./grafana/dashboards"] == provider["options"]["path"]
    datasource = load_yaml_docs(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    assert targets == {"serve", "train"}
