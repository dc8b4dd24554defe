"""Helpers of the deployment-kit tests (tests/test_deploy_*.py): the files under test, their tools,
and a loopback HTTP GET."""

from __future__ import annotations

import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC_NAME = re.compile(r"\b(recsys_[a-z_]+)")


def tool(name: str) -> str | None:
    """A command from the venv (where scripts/setup.sh puts hadolint and promtool) or else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def http_get(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET on a loopback port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            current = stages.setdefault(args.split()[-1] if " AS " in args.upper() else args, [])
        current.append((instruction.upper(), " ".join(args.split())))
    return stages


def copied_sources(stage: list[tuple[str, str]]) -> list[str]:
    """The build-context paths a stage COPYs (not those it copies from another stage)."""
    return [src for ins, args in stage if ins == "COPY" and "--from" not in args for src in args.split()[:-1]]
