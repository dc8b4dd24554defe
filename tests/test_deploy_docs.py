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


def _parsers() -> dict[tuple[str, ...], object]:
    """The config parse of each command the export example runs, without running it."""
    from common.config import parse
    from export.config import ExportConfig
    from models.cllm4rec import cli as cllm4rec_cli
    from models.tcf import cli as tcf_cli

    return {
        ("train", "cllm4rec"): lambda a: parse(cllm4rec_cli.TrainCli, a, presets=cllm4rec_cli.SCHEDULES),
        ("train", "tcf"): lambda a: parse(tcf_cli.TrainCli, a, presets=tcf_cli.SCHEDULES),
        ("export",): lambda a: parse(ExportConfig, a),
    }


def test_export_example_commands_parse() -> None:
    """Every `llmrec` line of the compose export service (the Kubernetes Job runs the same lines) is
    accepted by that command's own flag parser: a renamed flag fails here, not in a user's cluster."""
    import shlex

    parsers = _parsers()
    script = load_yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["export"]["command"][0]
    lines = [shlex.split(line) for line in script.splitlines() if line.strip().startswith("llmrec ")]
    assert len(lines) == 4
    for words in lines:
        key = next(k for k in parsers if tuple(words[1 : 1 + len(k)]) == k)
        try:
            parsers[key](words[1 + len(key) :])
        except SystemExit as exc:  # tyro's answer to an unknown or malformed flag
            pytest.fail(f"`{' '.join(words)}` does not parse (exit {exc.code})")


def test_journal_compact_example_parses() -> None:
    """The compaction command docs/deployment.md gives for the Redis journal is accepted by its parser."""
    import shlex

    import tyro

    from llmrec.client_cli import CompactArgs

    lines = [ln for ln in DOC.read_text().splitlines() if "llmrec journal compact --" in ln and "sh -c" in ln]
    assert lines, "no `kubectl exec ... llmrec journal compact` example in docs/deployment.md"
    for line in lines:
        inner = shlex.split(line.split("sh -c", 1)[1])[0].replace("$RECSYS_JOURNAL", "redis://:pw@llmrec-redis:6379/0")
        args = tyro.cli(CompactArgs, args=shlex.split(inner)[3:])
        assert args.journal.startswith("redis://") and args.model
