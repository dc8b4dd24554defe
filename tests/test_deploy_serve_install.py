"""The serve image's install step, proven without Docker: the paths the Dockerfile COPYs, installed as its
serve-venv stage installs them (`pip install ".[redis]"`) into a clean virtualenv, serve a model repository
that the real exporter wrote. torch must not be importable there (the redis client of `--journal redis://`
must), health must say SERVING (asked by the image's HEALTHCHECK probe), one Recommend must answer, and
SIGTERM must exit 0.

Slow the first time on a machine (pip resolves the serving set, ~1-2 min); pip's cache keeps later runs
short."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_kit import ROOT, copied_sources, dockerfile_stages, http_get

from client import RecommenderClient

pytestmark = pytest.mark.timeout(900)


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that points Python at the source tree or our venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _install_target() -> str:
    """What the Dockerfile's serve-venv stage passes to `pip install` (".", or "." with extras)."""
    run = " ".join(args for ins, args in dockerfile_stages(ROOT / "Dockerfile")["serve-venv"] if ins == "RUN")
    found = re.search(r'pip install "?(\.(?:\[[\w,-]+\])?)"?', run)
    assert found, f"no `pip install .` in the serve-venv stage: {run}"
    return found.group(1)


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtualenv holding what the serve image installs."""
    tmp = tmp_path_factory.mktemp("serve-image")
    app = tmp / "app"
    app.mkdir()
    for rel in copied_sources(dockerfile_stages(ROOT / "Dockerfile")["source"]):
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, app / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "results"))
        else:
            shutil.copy2(src, app / rel)
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    bin_dir = tmp / "venv" / "bin"
    out = subprocess.run([str(bin_dir / "pip"), "install", "-q", _install_target()], cwd=app, env=_clean_env(),
                         capture_output=True, text=True, timeout=840)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return bin_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """A repository written by the real exporter (which needs torch: it runs here, not in the clean venv)."""
    pytest.importorskip("torch")
    from export.config import ExportConfig, GraphConfig
    from export.testing import tiny_bundle
    from export.writer import export_bundle

    work = tmp_path_factory.mktemp("bundle")
    repo = tmp_path_factory.mktemp("repository")
    bundle = tiny_bundle("tcf", work)
    export_bundle(bundle, repo, "tcf", ExportConfig(graph=GraphConfig(ort_optimize="basic"), report=False))
    return repo, bundle


def test_serving_set_has_no_torch(serve_venv: Path, tmp_path: Path) -> None:
    script = "import server, redis, sys; print(server.__file__); import torch"
    out = subprocess.run([str(serve_venv / "python"), "-c", script], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert "ModuleNotFoundError: No module named 'torch'" in out.stderr, out.stderr
    assert out.stdout.startswith(str(serve_venv.parent)), f"server imported from {out.stdout}, not the venv"


def test_serve_smoke_in_clean_venv(serve_venv: Path, exported, tmp_path: Path) -> None:
    repo, bundle = exported
    log = tmp_path / "server.log"  # a file, not a pipe: a full pipe would block the server's logging
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [str(serve_venv / "llmrec"), "serve", "--repository", str(repo), "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--poll-seconds", "0"],
            cwd=tmp_path, env=_clean_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()  # "serving REPO on port N (metrics on M)"
        assert "on port" in line, line + log.read_text()[-3000:]
        port, metrics_port = int(line.split("on port ")[1].split()[0]), int(line.split("metrics on ")[1].rstrip(")\n"))
        probe = [str(serve_venv / "python"), "-m", "server.health_probe", "--target", f"127.0.0.1:{port}"]
        end = time.monotonic() + 120
        while (status := subprocess.run(probe, cwd=tmp_path, env=_clean_env(), capture_output=True, text=True,
                                        timeout=60)).returncode != 0:
            assert time.monotonic() < end and proc.poll() is None, status.stdout + status.stderr
            time.sleep(0.5)
        assert status.stdout.strip() == "SERVING"
        with RecommenderClient(f"127.0.0.1:{port}") as client:
            rec = client.recommend("tcf", user_id=bundle.user_ids[0], top_k=5)
        assert len(rec.items) == 5 and all(item in bundle.item_ids for item, _ in rec.items)
        assert http_get(metrics_port, "/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
