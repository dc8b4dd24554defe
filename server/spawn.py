"""Start `llmrec serve` as a child process on loopback and wait until it reports SERVING.

Used by the demo and the load benchmark: both need a real server process, not an in-process one,
so that what they show or measure is what a client of the deployed server sees.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(repository: Path, extra_args: list[str] | tuple[str, ...] = (),
                 timeout_s: float = 600.0, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Returns the process and its target "127.0.0.1:PORT" once health says SERVING.

    `env` adds variables to the child's environment (e.g. RECSYS_ADMIN_TOKEN, kept out of `ps`).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "llmrec", "serve", "--repository", str(repository), "--host", "127.0.0.1",
           "--port", str(port), *extra_args]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                where = f"; see {log_path}" if log_path else ""
                raise RuntimeError(f"server exited with code {proc.returncode} before it was ready{where}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"server did not report SERVING within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM (the server drains in-flight requests), then SIGKILL if it does not exit in time."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
