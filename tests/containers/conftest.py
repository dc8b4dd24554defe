"""Fixtures of the container suite (`pytest tests/containers`; `make test` leaves this folder out through
pyproject's norecursedirs): the engine, or a skip that says why there is none, and a tiny repository
written by the real exporter on the host, shared by every container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from container_kit import export_tiny_repository, find_engine


@pytest.fixture(scope="session")
def engine() -> str:
    name, why_not = find_engine()
    if name is None:
        pytest.skip(why_not)
    return name


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return export_tiny_repository(tmp_path_factory.mktemp("containers"))
