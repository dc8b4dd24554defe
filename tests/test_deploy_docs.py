"""docs/deployment.md and the README's deployment section match the files: links resolve, paths exist,
and the image names the docs build are the ones compose and Kubernetes run."""

from __future__ import annotations

import re
import tomllib

import pytest
from deploy_kit import DEPLOY, ROOT, load_yaml_docs

DOC = ROOT / "docs" / "deployment.md"


def readme_deployment() -> str:
    """The README's deployment and scale-out bullets (the rest of the README is not this kit's)."""
    text = (ROOT / "README.md").read_text()
    return text[text.index("- Deployment (") : text.index("## Commands")]


@pytest.mark.parametrize("path", [DOC, ROOT / "README.md"], ids=lambda p: p.name)
def test_links_and_deploy_paths_exist(path) -> None:
    text = path.read_text() if path == DOC else readme_deployment()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
    for mentioned in re.findall(r"(deploy/[\w./-]+\w)", text):
        assert (ROOT / mentioned).exists(), f"{path.name} mentions missing {mentioned}"


def test_images_built_are_images_run() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    built = set(re.findall(r"-t (llmrec[\w-]*:[\w.]+)", DOC.read_text()))
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):  # their usage comments build the same names
        assert set(re.findall(r"-t (llmrec[\w-]*:[\w.]+)", (ROOT / dockerfile).read_text())) <= built
    run = {s["image"] for s in load_yaml_docs(DEPLOY / "compose.yaml")[0]["services"].values()
           if s["image"].startswith("llmrec")}
    for path in (DEPLOY / "kubernetes").rglob("*.yaml"):
        text = path.read_text()
        run |= set(re.findall(r"image: (llmrec[\w-]*:[\w.]+)", text))
        run |= {f"{n}:{t}" for n, t in re.findall(r"newName: (\S+)\s+newTag: \"([\w.]+)\"", text)}
    assert run == built == {f"llmrec-serve:{version}", f"llmrec-train:{version}", f"llmrec-serve-gpu:{version}"}


def test_compose_and_kubernetes_export_the_same_way() -> None:
    """The compose `export` service and the Kubernetes Job are one example: same image, same commands."""
    compose = load_yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["export"]
    job = load_yaml_docs(DEPLOY / "kubernetes" / "export-job.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert compose["image"] == job["image"]
    assert compose["entrypoint"] == job["command"] and compose["command"] == job["args"]
