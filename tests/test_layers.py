"""The packages form layers that only point down (README, Layout):

    llmrec (CLI, demo) -> benchmarks -> server -> repository <- export -> models -> common
                                        server -> client -> recsys (proto)

An import that runs back up (the server reaching into the exporter, the exporter into the server, the
models into the exporter, anything into the CLI) fails here, whether it sits at the top of a module or
inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "client": {"common", "recsys"},
    "repository": {"common"},
    "models": {"common", "repository"},
    "export": {"common", "repository", "models"},
    "server": {"common", "repository", "client", "recsys"},
    "benchmarks": {"common", "client", "repository", "models", "export", "server", "recsys"},
    "llmrec": {"common", "client", "repository", "models", "export", "server", "benchmarks", "recsys"},
}
PROJECT = {*ALLOWED, "recsys"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every import in a file, nested ones included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out.update((n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in PROJECT)
    return out


def violations(root: Path) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for target, line in sorted(imported_packages(path)):
                if target != package and target not in allowed:
                    found.append(f"{path.relative_to(root)}:{line} imports {target}")
    return found


def test_every_import_points_down_the_layers() -> None:
    assert violations(ROOT) == []


def test_every_project_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(ALLOWED), "a new top-level package needs its place in ALLOWED (and in the docs)"


@pytest.mark.parametrize("source", ["from export.writer import export_bundle\n",
                                    "def f():\n    import llmrec.cli\n"])
def test_an_import_running_back_up_is_caught(tmp_path: Path, source: str) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "bad.py").write_text(source)
    assert [v.split(" imports ")[0] for v in violations(tmp_path)] == [f"server/bad.py:{source.count(chr(10))}"]
