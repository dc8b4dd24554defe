"""Deadline storms against one in-process server, each followed by a fresh client's 5 requests (issue #30).

    .venv/bin/python scripts/storm_repro.py MAX_CONCURRENT_RPCS ROUNDS CALLS_PER_STORM
    CHILD_CLIENT=1: the fresh client runs in a process of its own; SETTLE=0: it starts as soon as the batcher
    and the read pool are idle (before the test also waited for the transport to settle).

Prints one line per storm (ok, or FAIL with the client's error and the Recommend codes since the storm ended)
and the count of failed storms: docs/serving.md's "After a deadline storm" figures come from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import grpc  # noqa: E402
from polling import eventually  # noqa: E402
from repo_fixtures import running_server, write_cllm4rec, write_tcf  # noqa: E402
from test_server_resilience import STORM, _batcher, _recommend_calls, _settled, _since  # noqa: E402

from client import RecommenderClient  # noqa: E402

FRESH = """
import sys, grpc
from client import RecommenderClient
with RecommenderClient(f"127.0.0.1:{sys.argv[1]}") as fresh:
    try:
        for j in range(5):
            fresh.recommend("tiny-cllm", history=[f"i{j}"], top_k=3, timeout=10)
        print("OK")
    except grpc.RpcError as exc:
        print("ERR", j, exc.code().name, exc.debug_error_string())
"""


def fresh_client(port: int) -> str:
    """'' when the 5 requests were served, else what failed."""
    if os.environ.get("CHILD_CLIENT") == "1":
        out = subprocess.run([sys.executable, "-c", FRESH, str(port)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        return "" if out.returncode == 0 and "OK" in out.stdout else (out.stdout + out.stderr).strip()[-500:]
    with RecommenderClient(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
        for j in range(5):
            try:
                fresh.recommend("tiny-cllm", history=[f"i{j}"], top_k=3, timeout=10)
            except grpc.RpcError as exc:
                return f"request {j}: {exc.code().name} {exc.debug_error_string()}"
    return ""


def main(limit: int, rounds: int, calls: int) -> int:
    tmp = Path(tempfile.mkdtemp())
    write_cllm4rec(tmp)
    write_tcf(tmp)
    fails = 0
    with running_server(tmp, watchdog_seconds=0.05, encoder_stall_seconds=0.5, max_wait_ms=0.0, queue_size=512,
                        encoder_instances=1, max_concurrent_rpcs=limit) as (srv, _):
        b = _batcher(srv)
        original = b._run

        def slow(payloads):
            time.sleep(0.005)
            return original(payloads)

        for r in range(rounds):
            b._run = slow
            out = subprocess.run([sys.executable, "-c", STORM, str(srv.port), str(calls), str(r)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            codes = json.loads(out.stdout.strip().splitlines()[-1])
            b._run = original
            if os.environ.get("SETTLE", "1") == "1":
                eventually(_settled(srv, b), 60, interval=0.1)
            else:
                eventually(lambda: not b._queue and not b.running and srv.reads.pending == 0, 20)
            before = _recommend_calls(srv)
            failed = fresh_client(srv.port)
            fails += bool(failed)
            print(r, f"FAIL {failed}; since the storm {_since(before, _recommend_calls(srv))}" if failed else "ok",
                  codes, flush=True)
    print(f"max_concurrent_rpcs {limit}: {fails} of {rounds} storms failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
