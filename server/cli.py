"""`llmrec serve --repository REPO ...`: blocks until SIGTERM/SIGINT, then drains and exits 0.

Shutdown is bounded: in-flight requests get `grace_seconds`, and if anything still holds the
process a few seconds after that (an encoder stuck in native code), it exits anyway: an
orchestrator's SIGKILL must never be what ends it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from common import logs
from server import config


def _hard_exit_after(seconds: float) -> None:
    def bail() -> None:
        logs.get("server.cli").error("shutdown did not finish in time: exiting now", after_seconds=seconds)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, bail)
    timer.daemon = True
    timer.start()


def main(argv: list[str]) -> int:
    try:
        cfg = config.load(argv)
    except ValueError as exc:
        print(f"llmrec serve: error: {exc}", file=sys.stderr)
        return 2
    if not Path(cfg.repository).is_dir():
        print(f"llmrec serve: error: the model repository {cfg.repository} is not a folder; export a model into "
              "it first (llmrec export --repository ...) or pass --repository", file=sys.stderr)
        return 2
    logs.setup(json_lines=cfg.log_json or None)
    sys.setswitchinterval(cfg.pools.gil_switch_ms / 1000.0)  # process-wide, hence here and not in the server object
    from server.app import RecommenderServer  # after logging is configured

    try:
        srv = RecommenderServer(cfg).start()
    except OSError as exc:
        print(f"llmrec serve: error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logs.get("server.cli").info("signal received: draining", signal=signal.Signals(signum).name,
                                    grace_seconds=cfg.network.grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"serving {cfg.repository} on port {srv.port} (metrics on {srv.metrics_port})", flush=True)
    stop.wait()
    _hard_exit_after(cfg.network.grace_seconds + 5.0)
    srv.stop()
    return 0
