"""Helpers of the container suite: find an engine, build through scripts/build-images.sh (the same path as
`make images`), run a container with a repository mounted, and record measured figures.

Everything goes through the engine's CLI, so podman and docker are driven the same way; nothing here
needs a registry (the build script makes a local base when none can be pulled).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "images.json"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
LOCAL_BASE = "localhost/llmrec-python:3.11-bookworm"  # what scripts/build-images.sh makes without a registry
GRPC_PORT, METRICS_PORT = 50051, 9095  # the images' RECSYS_PORT / RECSYS_METRICS_PORT


def find_engine() -> tuple[str | None, str]:
    """(engine, why not): podman first, then a docker whose daemon answers; LLMREC_CONTAINER_ENGINE picks one."""
    wanted = os.environ.get("LLMREC_CONTAINER_ENGINE")
    reasons = []
    for name in [wanted] if wanted else ["podman", "docker"]:
        if shutil.which(name) is None:
            reasons.append(f"{name}: not installed")
            continue
        out = subprocess.run([name, "info"], capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            return name, ""
        reasons.append(f"{name}: `{name} info` failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
    return None, "no container engine runs here (" + "; ".join(reasons) + "); scripts/build-images.sh --setup installs podman"


def build(engine: str, target: str, timeout: float = 900, **env: str) -> str:
    """Builds one image with the build script (layer cache on) and returns its name; a failed build fails."""
    image = {"serve": "llmrec-serve", "gpu": "llmrec-serve-gpu", "train": "llmrec-train"}[target] + f":{VERSION}"
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build-images.sh"), target], cwd=ROOT,
                         env={**os.environ, "ENGINE": engine, **env}, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"building {image} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return image


def inspect(engine: str, ref: str, kind: str = "image") -> dict[str, Any]:
    out = subprocess.run([engine, kind, "inspect", ref], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)[0]


class Container:
    """One detached container of a serving image with `repo` at /models and random loopback ports."""

    def __init__(self, engine: str, image: str, name: str, repo: Path, env: dict[str, str] | None = None,
                 extra: list[str] | None = None) -> None:
        self.engine, self.image, self.name = engine, image, name
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=120)
        args = [engine, "run", "-d", "--name", name, "-v", f"{repo}:/models",
                "-p", f"127.0.0.1::{GRPC_PORT}", "-p", f"127.0.0.1::{METRICS_PORT}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        self.started = time.monotonic()
        out = subprocess.run([*args, *(extra or []), image], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.grpc_target = self._port(GRPC_PORT)
        self.metrics_port = int(self._port(METRICS_PORT).rsplit(":", 1)[1])

    def _port(self, port: int) -> str:
        out = subprocess.run([self.engine, "port", self.name, f"{port}/tcp"], capture_output=True, text=True,
                             timeout=60, check=True)
        return out.stdout.split()[0].replace("0.0.0.0", "127.0.0.1")

    def state(self) -> dict[str, Any]:
        return inspect(self.engine, self.name, "container")["State"]

    def logs(self) -> str:
        out = subprocess.run([self.engine, "logs", self.name], capture_output=True, text=True, timeout=60)
        return (out.stdout + out.stderr)[-6000:]

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.engine, "exec", self.name, *cmd], capture_output=True, text=True, timeout=timeout)

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from `run` until /readyz answers 200 (grpc.health SERVING: versions loaded and warmed)."""
        from deploy_kit import http_get

        end = time.monotonic() + timeout
        while True:
            try:
                if http_get(self.metrics_port, "/readyz")[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass  # not listening yet
            state = self.state()
            if not state["Running"] or time.monotonic() > end:
                pytest.fail(f"{self.name} not ready (state {state['Status']}, exit {state['ExitCode']}):\n{self.logs()}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        """Resident memory of the server's processes inside the container, read from the container's /proc."""
        script = ("import pathlib\n"
                  "kb = 0\n"
                  "for p in pathlib.Path('/proc').glob('[0-9]*'):\n"
                  "    try:\n"
                  "        if b'server.health_probe' in (p / 'cmdline').read_bytes() or p.name == str(__import__('os').getpid()):\n"
                  "            continue\n"
                  "        kb += next(int(ln.split()[1]) for ln in (p / 'status').read_text().splitlines() if ln.startswith('VmRSS'))\n"
                  "    except (OSError, StopIteration):\n"
                  "        pass\n"
                  "print(kb)\n")
        out = self.exec("python", "-c", script)
        assert out.returncode == 0, out.stderr
        return int(out.stdout) / 1024

    def stop(self, grace: int) -> tuple[float, int]:
        """(seconds from SIGTERM to exit, exit code), the engine waiting up to `grace` before it kills."""
        start = time.monotonic()
        subprocess.run([self.engine, "stop", "-t", str(grace), self.name], capture_output=True, timeout=grace + 60,
                       check=True)
        return time.monotonic() - start, int(self.state()["ExitCode"])

    def remove(self) -> None:
        subprocess.run([self.engine, "rm", "-f", self.name], capture_output=True, timeout=120)


def export_tiny_repository(root: Path) -> tuple[Path, dict[str, Any]]:
    """A repository written by the real exporter (torch runs here, on the host; the images have none):
    a TCF (SASRec + text tower, UpsertItems-capable) and a CLLM4Rec model. Readable and writable by the
    images' uid 10001, which appends the item journal of admin calls to it."""
    pytest.importorskip("torch")
    from export.config import ExportConfig, GraphConfig
    from export.testing import tiny_bundle
    from export.writer import export_bundle

    repo = root / "repository"
    repo.mkdir()
    bundles = {}
    for name, kind in (("tcf", "tcf"), ("lm", "cllm4rec")):
        (root / name).mkdir()
        bundles[name] = tiny_bundle(kind, root / name)
        export_bundle(bundles[name], repo, name, ExportConfig(graph=GraphConfig(ort_optimize="basic"), report=False))
    for path in [repo, *repo.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, 10001, 10001)
        else:  # a rootless engine maps uids: let any of them read and write
            path.chmod(0o777 if path.is_dir() else 0o666)
    return repo, bundles


def record_run(key: str, values: dict[str, Any]) -> None:
    """Merges one container run's figures into benchmarks/results/images.json and re-renders images.md."""
    _record(lambda data, now: data.setdefault("runs", {}).__setitem__(key, {**values, "measured_at": now}))


def record_suite(values: dict[str, Any]) -> None:
    _record(lambda data, now: data.__setitem__("suite", {**values, "measured_at": now}))


def _record(update: Callable[[dict[str, Any], str], None]) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    update(data, datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    spec = importlib.util.spec_from_file_location("images_report", ROOT / "scripts" / "images_report.py")
    assert spec and spec.loader
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    report.main(["images_report", str(RESULTS)])
