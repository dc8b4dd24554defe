"""Fixtures of the container suite (`pytest tests/containers`; `make test` leaves this folder out through
pyproject's norecursedirs): the engine, or a skip that says why there is none, and a tiny repository
written by the real exporter on the host, shared by every container."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from container_kit import LOCAL_BASE, VERSION, export_tiny_repository, find_engine, record_suite


@pytest.fixture(scope="session")
def engine() -> str:
    name, why_not = find_engine()
    if name is None:
        pytest.skip(why_not)
    return name


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return export_tiny_repository(tmp_path_factory.mktemp("containers"))


@pytest.fixture(scope="session", autouse=True)
def suite_wall_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """Records the suite's wall time (docs/deployment.md quotes it against CI's 10-minute allowance), with
    whether the images already existed, since a run that builds everything takes several times longer."""
    name, _ = find_engine()
    present = {}
    if name is not None:
        for image in (f"llmrec-serve:{VERSION}", f"llmrec-serve-gpu:{VERSION}", LOCAL_BASE):
            present[image] = subprocess.run([name, "image", "inspect", image], capture_output=True,
                                            timeout=60).returncode == 0
    start = time.monotonic()
    yield
    if name is not None and request.session.testscollected:
        record_suite({"wall_s": round(time.monotonic() - start), "images_present_at_start": present,
                      "tests": request.session.testscollected, "failed": request.session.testsfailed})
