"""The server as a process: it never imports torch, and SIGTERM drains in-flight requests then exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

from polling import wait_for
from repo_fixtures import write_cllm4rec, write_tcf

from client import RecommenderClient
from server.spawn import free_port

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "HF_HUB_OFFLINE": "1"}


def test_server_never_imports_torch(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path)
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import server
        for m in pkgutil.iter_modules(server.__path__):
            importlib.import_module("server." + m.name)
        from server.app import RecommenderServer
        from client import RecommenderClient
        from server.config import ServeConfig
        srv = RecommenderServer(ServeConfig.flat(repository={str(tmp_path)!r}, host="127.0.0.1", port=0,
                                            metrics_port=-1, poll_seconds=0)).start()
        assert srv.wait_ready(60)
        c = RecommenderClient(f"127.0.0.1:{{srv.port}}", admin_token=None)
        assert c.recommend("tiny-cllm", history=["i1"], top_k=3).items
        assert c.recommend("tiny-tcf", user_id="u1", top_k=3).items
        srv.stop(0)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("FORBIDDEN", bad)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FORBIDDEN []" in out.stdout, out.stdout


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path)
    metrics_port = free_port()
    # A long batching wait keeps a history request in flight while SIGTERM arrives.
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmrec", "serve", "--repository", str(tmp_path), "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", str(metrics_port), "--poll-seconds", "0", "--max-wait-ms", "1500",
         "--max-batch-size", "64", "--grace-seconds", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert "on port" in line, line + proc.stderr.read()[-2000:]
        port = int(line.split("on port")[1].split()[0])
        client = RecommenderClient(f"127.0.0.1:{port}")
        end = time.monotonic() + 60
        while client.health("tiny-cllm") != "SERVING" and time.monotonic() < end:
            time.sleep(0.1)
        result: dict[str, object] = {}

        def call() -> None:
            try:
                result["rec"] = client.recommend("tiny-cllm", history=["i1", "i2"], top_k=3, timeout=20)
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        def received() -> bool:  # the request reached the server (it waits 1.5 s for batch company there)
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            return 'recsys_rpcs_received_total{method="Recommend"} 1.0' in text

        t = threading.Thread(target=call)
        started = time.monotonic()
        t.start()
        wait_for(received, "the request to reach the server")
        proc.send_signal(signal.SIGTERM)
        t.join(20)
        assert "error" not in result, result.get("error")
        assert len(result["rec"].items) == 3  # type: ignore[union-attr]
        assert time.monotonic() - started >= 1.4  # it really was in flight across the signal
        assert proc.wait(30) == 0
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
