"""Kubernetes manifests: schema-valid (kubernetes-validate, strict) for current Kubernetes versions, file by
file and as the overlays render, and wired to each other and to the server's defaults."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_kit import DEPLOY, ROOT, dockerfile_stages, load_yaml_docs, tool
from kubernetes_validate.utils import all_versions

from server.config import FLAT, ServeConfig

K8S = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The five newest minor releases the validator has schemas for (1.33-1.37 with kubernetes-validate 1.37.0).
VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))[-5:]


def manifest_files() -> list[Path]:
    """Every file that holds complete resources (kustomizations and overlay patches do not)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and "overlays" not in p.parts)


def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource, over the base and the export Job."""
    return {(d["kind"], d["metadata"]["name"]): d for path in manifest_files() for d in load_yaml_docs(path)}


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
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget",
                     "Secret", "Service", "Service"]


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
