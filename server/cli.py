"""`llmrec serve --repository REPO ...`: blocks until SIGTERM/SIGINT, then drains and exits 0."""

from __future__ import annotations

import signal
import threading

from llmrec import logs
from server import config


def main(argv: list[str]) -> int:
    cfg = config.load(argv)
    logs.setup(json_lines=cfg.log_json or None)
    from server.app import RecommenderServer  # after logging is configured

    srv = RecommenderServer(cfg).start()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logs.get("server.cli").info("signal received: draining", signal=signal.Signals(signum).name,
                                    grace_seconds=cfg.grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"serving {cfg.repository} on port {srv.port} (metrics on {srv.metrics_port})", flush=True)
    stop.wait()
    srv.stop()
    return 0
