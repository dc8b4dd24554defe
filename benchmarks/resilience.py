"""The serving core under the abuse a production server meets, on real exported models (issue 11's
targets): a storm of expired deadlines, one slow model flooded beside a cheap one, memory across
version swaps and large upserts, and item changes shared by two replicas and surviving kill -9; and
(issue 30) large RecommendBatch calls plus admin upserts on a slow disk beside cheap requests.

Every phase runs real `llmrec serve` processes on loopback against a scratch copy of the repository
(hard links: versions are read-only), with clients in this process or in child processes so the
measuring client is not starved by the flooding ones. Figures are measured in one run; the targets
are ratios or counts, not absolute times, since the machine is shared.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client import RecommenderClient
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from repository import files as F
from repository.arrays import read_json_list, write_json
from repository.files import MANIFEST
from repository.manifest import read_manifest
from repository.reader import read_known_users
from repository.versions import list_versions
from server.spawn import spawn_server, stop_server

TOKEN = "bench-admin"


@dataclass
class ResilienceConfig:
    repository: Path = Path("work/demo/model-repository")
    slow_model: str = "ml100k-cllm4rec"  # the LM history path
    cheap_model: str = "ml100k-tcf"  # known users; also the text model for upserts
    work: Path = Path("work/bench-resilience")  # scratch repository (hard links), removed first
    storm_requests: int = 10_000
    storm_clients: int = 8
    storm_deadline_ms: tuple[float, float] = (1.0, 50.0)
    flood_clients: int = 32
    flood_processes: int = 4
    cheap_deadline_ms: float = 50.0
    cheap_requests: int = 500
    swaps: int = 20
    upsert_batch: int = 1000
    single_upserts: int = 100
    journal_poll_seconds: float = 1.0
    # one engine, so that 20 swaps measure memory and robustness rather than the engine choice at each load
    engine: str = "onnxruntime-cpu"
    server_args: list[str] = field(default_factory=list)
    phases: tuple[str, ...] = ("storm", "flood", "memory", "replicas", "big_batch")
    # big batch + admin storm: cheap known-user requests of slow_model (its stored user vectors) while
    # batch_clients send RecommendBatch calls of batch_requests x batch_excluded real item ids to cheap_model
    # (~2.4 MB each, the case) and admin_clients send UpsertItems whose journal fsync takes
    # slow_fsync_seconds (an NFS-like disk)
    batch_clients: int = 8
    batch_requests: int = 256
    batch_excluded: int = 2000
    admin_clients: int = 6
    slow_fsync_seconds: float = 2.0
    batch_probe_deadline_ms: float = 5000.0  # long: the p99 is measured, not cut off by the deadline
    batch_warmup_seconds: float = 3.0
    # the big-batch phase runs twice in one bench, the server as configured and with these flags added (the
    # way it served before batches stepped aside for single requests), so the two are compared in one run;
    # empty: once, no baseline
    batch_baseline_args: list[str] = field(default_factory=lambda: ["--batch-yield-ms=0"])
    # write a synthetic ML-100K-sized repository (1682 items, 943 users, dim 64; the tests' ONNX writer) instead
    # of reading `repository`: for the big-batch phase on a machine without `make demo`
    synthetic: bool = False


# ---- process facts ----
def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    return _status(pid, "VmRSS") / 1024.0


def threads(pid: int) -> int:
    return _status(pid, "Threads")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---- scratch repository ----
def _link_version(src: Path, dst_model: Path, version: int) -> None:
    """A new version folder sharing the files of `src` (hard links), with its own manifest."""
    dst = dst_model / str(version)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != MANIFEST:
            os.link(f, dst / f.name)
    manifest = read_manifest(src)
    manifest.version = version
    write_json(dst / MANIFEST, manifest.to_dict())


def _scratch(cfg: ResilienceConfig) -> Path:
    repo = cfg.work / "repository"
    if cfg.work.exists():
        shutil.rmtree(cfg.work)
    for model in (cfg.slow_model, cfg.cheap_model):
        versions = list_versions(cfg.repository / model)
        if not versions:
            raise FileNotFoundError(f"no version of {model} under {cfg.repository}: run `make demo` first")
        _link_version(cfg.repository / model / str(versions[-1]), repo / model, 1)
    return repo


def _requests(version_dir: Path, n: int = 200, length: int = 20) -> tuple[list[str], list[list[str]]]:
    users, indptr, indices = read_known_users(version_dir)
    items = read_json_list(version_dir / F.ITEM_IDS)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(users), size=min(n, len(users)), replace=False)
    return ([users[u] for u in rows],
            [[items[r] for r in indices[indptr[u]:indptr[u + 1]][-length:]] for u in rows])


def _serve(repo: Path, cfg: ResilienceConfig, *extra: str) -> tuple[Any, str]:
    args = ["--metrics-port", "-1", "--poll-seconds", "0", "--journal-poll-seconds", str(cfg.journal_poll_seconds),
            "--engine", cfg.engine, *cfg.server_args, *extra]
    return spawn_server(repo, args, env={"RECSYS_ADMIN_TOKEN": TOKEN})


def _timed(fn: Callable[[], Any]) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        fn()
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    return code, (time.perf_counter() - t0) * 1000.0


def _cheap_probe(target: str, cfg: ResilienceConfig, users: list[str], model: str | None = None,
                 deadline_ms: float | None = None) -> dict[str, Any]:
    codes: dict[str, int] = {}
    lat: list[float] = []
    model = model or cfg.cheap_model
    timeout = (deadline_ms or cfg.cheap_deadline_ms) / 1000.0
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for i in range(cfg.cheap_requests):
            req = pb.RecommendRequest(model=model, user_id=users[i % len(users)], top_k=20)
            code, ms = _timed(lambda req=req: stub.Recommend(req, timeout=timeout))
            codes[code] = codes.get(code, 0) + 1
            if code == "OK":
                lat.append(ms)
    return {"requests": cfg.cheap_requests, "codes": codes, "success": codes.get("OK", 0) / cfg.cheap_requests,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


# ---- phase 1: deadline storm ----
def _storm(target: str, pid: int, cfg: ResilienceConfig, histories: list[list[str]]) -> dict[str, Any]:
    before = threads(pid)
    codes: dict[str, int] = {}
    lock = threading.Lock()
    per_client = cfg.storm_requests // cfg.storm_clients
    lo, hi = cfg.storm_deadline_ms

    def client(j: int) -> None:
        rng = random.Random(j)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for i in range(per_client):
                req = pb.RecommendRequest(model=cfg.slow_model, history=histories[(j + i) % len(histories)], top_k=20)
                code, _ = _timed(lambda req=req: stub.Recommend(req, timeout=rng.uniform(lo, hi) / 1000.0))
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(j,)) for j in range(cfg.storm_clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    time.sleep(1.0)  # let the server finish what it still holds
    with RecommenderClient(target, timeout=60) as c:
        after_ok = all(c.recommend(cfg.slow_model, history=h, top_k=20).items for h in histories[:5])
        health = c.health(cfg.slow_model)
    after = threads(pid)
    return {"requests": per_client * cfg.storm_clients, "clients": cfg.storm_clients, "deadline_ms": [lo, hi],
            "seconds": seconds, "codes": codes, "served_normally_after": after_ok, "health_after": health,
            "server_threads_before": before, "server_threads_after": after, "stuck_threads": max(0, after - before)}


# ---- phase 2: one slow model flooded beside a cheap one ----
def _flood_worker(target: str, model: str, histories: list[list[str]], clients: int, stop: Any,
                  counts: Any) -> None:
    def one(j: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            i = 0
            while not stop.is_set():
                req = pb.RecommendRequest(model=model, history=histories[(j + i) % len(histories)], top_k=20)
                code, _ = _timed(lambda req=req: stub.Recommend(req, timeout=30))
                with counts.get_lock():
                    counts[0 if code == "OK" else 1] += 1
                i += 1

    ts = [threading.Thread(target=one, args=(j,)) for j in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _flood(target: str, cfg: ResilienceConfig, users: list[str], histories: list[list[str]]) -> dict[str, Any]:
    idle = _cheap_probe(target, cfg, users)
    ctx = mp.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("l", 2)
    per = cfg.flood_clients // cfg.flood_processes
    procs = [ctx.Process(target=_flood_worker, args=(target, cfg.slow_model, histories, per, stop, counts))
             for _ in range(cfg.flood_processes)]
    for p in procs:
        p.start()
    time.sleep(5.0)  # the flood reaches its steady state (queue full of LM requests)
    loaded = _cheap_probe(target, cfg, users)
    stop.set()
    for p in procs:
        p.join(120)
    return {"flood_clients": per * cfg.flood_processes, "flood_ok": counts[0], "flood_failed": counts[1],
            "cheap_idle": idle, "cheap_under_flood": loaded,
            "p99_ratio": loaded["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else float("nan")}


# ---- phase 3: memory across swaps and large upserts ----
def _memory(repo: Path, cfg: ResilienceConfig, users: list[str], histories: list[list[str]]) -> dict[str, Any]:
    proc, target = _serve(repo, cfg)
    try:
        with RecommenderClient(target, admin_token=TOKEN, timeout=300) as c:
            def exercise() -> None:
                for h, u in zip(histories[:3], users[:3], strict=True):
                    c.recommend(cfg.slow_model, history=h, top_k=20)
                    c.recommend(cfg.cheap_model, history=h, top_k=20)
                    c.recommend(cfg.cheap_model, user_id=u, top_k=20)

            exercise()
            first = rss_mb(proc.pid)
            timeline = []
            for i in range(cfg.swaps):
                model = (cfg.cheap_model, cfg.slow_model)[i % 2]
                versions = list_versions(repo / model)
                _link_version(repo / model / str(versions[-1]), repo / model, versions[-1] + 1)
                t0 = time.perf_counter()
                loaded = list(c.reload().loaded)
                exercise()
                timeline.append({"swap": i + 1, "model": model, "loaded": loaded,
                                 "seconds": time.perf_counter() - t0, "rss_mb": rss_mb(proc.pid)})
            time.sleep(2.0)  # the server trims freed memory ~1 s after a swap
            after = rss_mb(proc.pid)
            texts = [f"Benchmark movie number {i} (2031), genres: Drama|Comedy" for i in range(cfg.upsert_batch)]
            before_upsert = rss_mb(proc.pid)
            t0 = time.perf_counter()
            c.upsert_items(cfg.cheap_model, [(f"bench-{i}", t, "") for i, t in enumerate(texts)])
            upsert_seconds = time.perf_counter() - t0
            after_upsert = rss_mb(proc.pid)
    finally:
        stop_server(proc)
    return {"swaps": cfg.swaps, "rss_first_load_mb": first, "rss_after_swaps_mb": after,
            "rss_ratio": after / first, "timeline": timeline,
            "upsert": {"items": cfg.upsert_batch, "seconds": upsert_seconds, "rss_before_mb": before_upsert,
                       "rss_after_mb": after_upsert, "rss_growth_mb": after_upsert - before_upsert}}


# ---- phase 4: two replicas, kill -9 ----
def _replicas(repo: Path, cfg: ResilienceConfig) -> dict[str, Any]:
    a, target_a = _serve(repo, cfg)
    b, target_b = _serve(repo, cfg)
    out: dict[str, Any] = {"journal_poll_seconds": cfg.journal_poll_seconds}
    try:
        with RecommenderClient(target_a, admin_token=TOKEN) as ca, RecommenderClient(target_b, admin_token=TOKEN) as cb:
            upsert_ms, seen_s = [], []
            for i in range(cfg.single_upserts):
                item = f"replica-{i}"
                t0 = time.perf_counter()
                ca.upsert_items(cfg.cheap_model, [(item, f"A brand new film {i} (2032), genres: Thriller", "")])
                acked = time.perf_counter()
                upsert_ms.append((acked - t0) * 1000.0)
                if i % 10 == 0:  # how long until the other replica serves it
                    while not _knows(cb, cfg.cheap_model, item):
                        time.sleep(0.01)
                        if time.perf_counter() - acked > 30:
                            break
                    seen_s.append(time.perf_counter() - acked)
            d0 = time.perf_counter()
            cb.delete_items(cfg.cheap_model, ["replica-0"])
            while _deleted(ca, cfg.cheap_model) < 1 and time.perf_counter() - d0 < 30:
                time.sleep(0.01)
            out.update(upsert_p50_ms=_pct(upsert_ms, 50), upsert_p99_ms=_pct(upsert_ms, 99),
                       replica_sees_upsert_s={"max": max(seen_s), "median": _pct(seen_s, 50), "n": len(seen_s)},
                       replica_sees_delete_s=time.perf_counter() - d0)
            ack = ca.upsert_items(cfg.cheap_model, [("after-kill", "A film acknowledged right before a crash", "")])
        os.kill(a.pid, signal.SIGKILL)
        a.wait(30)
        a, target_a = _serve(repo, cfg)
        with RecommenderClient(target_a) as ca:
            out["kill9"] = {"acknowledged_seq": ack.journal_seq, "served_after_restart": _knows(ca, cfg.cheap_model,
                                                                                              "after-kill")}
    finally:
        for p in (a, b):
            if p.poll() is None:
                stop_server(p)
    return out


def _deleted(c: RecommenderClient, model: str) -> int:
    return next(m.versions[0].deleted_items for m in c.list_models().models if m.name == model)


def _knows(c: RecommenderClient, model: str, item: str) -> bool:
    try:
        return bool(c.recommend(model, history=[item], top_k=1, timeout=5).items)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise


# ---- phase 5: big batches + an admin storm on a slow disk ----
_SLOW_DISK = """import os, time

_fsync = os.fsync
_delay = float(os.environ["LLMREC_BENCH_FSYNC_SECONDS"])


def _slow_fsync(fd):  # every fsync of this process (the item journal's) takes as long as on a slow NFS mount
    time.sleep(_delay)
    _fsync(fd)


os.fsync = _slow_fsync
"""


def _batch_worker(target: str, payload: bytes, stop: Any, counts: Any) -> None:
    """Sends one pre-serialised RecommendBatch again and again (the client's own encoding is not measured)."""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary("/recsys.v1.Recommender/RecommendBatch", request_serializer=None,
                                   response_deserializer=None)
        while not stop.is_set():
            try:
                call(payload, timeout=60)
                ok = True
            except grpc.RpcError:
                ok = False
            with counts.get_lock():
                counts[0 if ok else 1] += 1


def _admin_worker(target: str, model: str, j: int, stop: Any, counts: Any) -> None:
    with RecommenderClient(target, admin_token=TOKEN, timeout=120) as c:
        i = 0
        while not stop.is_set():
            try:
                c.upsert_items(model, [(f"storm-{j}-{i}", f"A film added during the storm {j} {i}", "")])
                ok = True
            except grpc.RpcError:
                ok = False
            with counts.get_lock():
                counts[0 if ok else 1] += 1
            i += 1


def _big_batch(repo: Path, cfg: ResilienceConfig, probe_users: list[str], server_args: list[str]) -> dict[str, Any]:
    hook = cfg.work / "slow-disk"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SLOW_DISK)
    items = read_json_list(repo / cfg.cheap_model / "1" / F.ITEM_IDS)
    users = read_known_users(repo / cfg.cheap_model / "1")[0]
    rng = np.random.default_rng(0)
    batch = pb.RecommendBatchRequest(requests=[
        pb.RecommendRequest(model=cfg.cheap_model, user_id=users[j % len(users)], top_k=20,
                            exclude_item_ids=[items[r] for r in rng.choice(len(items), cfg.batch_excluded)])
        for j in range(cfg.batch_requests)])
    payload = batch.SerializeToString()
    ids = cfg.batch_requests * cfg.batch_excluded
    env = {"RECSYS_ADMIN_TOKEN": TOKEN, "LLMREC_BENCH_FSYNC_SECONDS": str(cfg.slow_fsync_seconds),
           "PYTHONPATH": os.pathsep.join(x for x in (str(hook), os.environ.get("PYTHONPATH", "")) if x)}
    # the batch holds more ids than the default --max-batch-ids, which would refuse it at once:
    # raised here, so that the batches are served in full and their cost is what is measured
    args = ["--metrics-port", "-1", "--poll-seconds", "0", "--journal-poll-seconds", "0", "--engine", cfg.engine,
            "--max-batch-ids", str(max(ids, 65536)), *server_args]
    proc, target = spawn_server(repo, args, env=env)
    out: dict[str, Any] = {"server_args": server_args, "batch_bytes": len(payload), "batch_requests": cfg.batch_requests,
                           "batch_excluded": cfg.batch_excluded, "batch_clients": cfg.batch_clients,
                           "admin_clients": cfg.admin_clients, "slow_fsync_seconds": cfg.slow_fsync_seconds,
                           "probe_model": cfg.slow_model, "batch_model": cfg.cheap_model,
                           "probe_deadline_ms": cfg.batch_probe_deadline_ms}
    try:
        out["cheap_idle"] = _cheap_probe(target, cfg, probe_users, cfg.slow_model, cfg.batch_probe_deadline_ms)
        ctx = mp.get_context("spawn")
        stop, batches, upserts = ctx.Event(), ctx.Array("l", 2), ctx.Array("l", 2)
        procs = [ctx.Process(target=_batch_worker, args=(target, payload, stop, batches))
                 for _ in range(cfg.batch_clients)]
        procs += [ctx.Process(target=_admin_worker, args=(target, cfg.cheap_model, j, stop, upserts))
                  for j in range(cfg.admin_clients)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        time.sleep(cfg.batch_warmup_seconds)  # the batches and the upserts reach their steady state
        out["cheap_under_load"] = _cheap_probe(target, cfg, probe_users, cfg.slow_model,
                                               cfg.batch_probe_deadline_ms)
        out["load_average_1min"] = os.getloadavg()[0]  # the machine's, bench clients and other jobs included
        out["cpus"] = os.cpu_count()
        stop.set()
        for p in procs:
            p.join(180)
        seconds = time.perf_counter() - t0
        out.update(seconds=seconds, batches_ok=batches[0], batches_failed=batches[1], upserts_ok=upserts[0],
                   upserts_failed=upserts[1])
    finally:
        stop_server(proc)
    idle, loaded = out["cheap_idle"]["p99_ms"], out["cheap_under_load"]["p99_ms"]
    out["p99_ratio"] = loaded / idle if idle else float("nan")
    return out


def _synthetic(cfg: ResilienceConfig) -> Path:
    """An ML-100K-sized repository from the tests' ONNX writer (tests/repo_fixtures.py): a TCF text model
    (upserts, known users) and a DSSM model (known users only)."""
    import sys

    tests = Path(__file__).resolve().parent.parent / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    from repo_fixtures import write_tcf

    repo = cfg.work / "repository"
    if cfg.work.exists():
        shutil.rmtree(cfg.work)
    write_tcf(repo, name=cfg.cheap_model, num_items=1682, num_users=943, dim=64, max_seq_len=20)
    write_tcf(repo, name=cfg.slow_model, num_items=1682, num_users=943, dim=64, user_tower="dssm", seed=2)
    return repo


PHASES = ("storm", "flood", "memory", "replicas", "big_batch")


def run_resilience(cfg: ResilienceConfig) -> dict[str, Any]:
    unknown = set(cfg.phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; accepted: {', '.join(PHASES)}")
    if cfg.synthetic and set(cfg.phases) != {"big_batch"}:
        raise ValueError("--bench.synthetic serves tiny stand-in encoders: only the big_batch phase measures "
                         "something real on it (--bench.phases big_batch)")
    if cfg.synthetic:
        cfg = replace(cfg, cheap_model="synthetic-tcf", slow_model="synthetic-dssm")
    repo = _synthetic(cfg) if cfg.synthetic else _scratch(cfg)
    users, _ = _requests(repo / cfg.cheap_model / "1")
    slow_users, histories = _requests(repo / cfg.slow_model / "1")
    result: dict[str, Any] = {"models": {"slow": cfg.slow_model, "cheap": cfg.cheap_model},
                              "repository": "synthetic" if cfg.synthetic else str(cfg.repository),
                              "config": asdict(cfg), "phases": list(cfg.phases)}
    if {"storm", "flood"} & set(cfg.phases):
        proc, target = _serve(repo, cfg)
        try:
            if "storm" in cfg.phases:
                result["storm"] = _storm(target, proc.pid, cfg, histories)
            if "flood" in cfg.phases:
                result["flood"] = _flood(target, cfg, users, histories)
        finally:
            stop_server(proc)
    if "memory" in cfg.phases:
        result["memory"] = _memory(repo, cfg, users, histories)
    if "replicas" in cfg.phases:
        result["replicas"] = _replicas(repo, cfg)
    if "big_batch" in cfg.phases:
        result["big_batch"] = _big_batch(repo, cfg, slow_users, cfg.server_args)
        if cfg.batch_baseline_args:
            result["big_batch_baseline"] = _big_batch(repo, cfg, slow_users,
                                                      [*cfg.server_args, *cfg.batch_baseline_args])
    shutil.rmtree(cfg.work, ignore_errors=True)
    targets: dict[str, bool] = {}
    if "storm" in result:
        s = result["storm"]
        targets["no dead batcher, no stuck thread after the storm"] = bool(
            s["served_normally_after"] and s["stuck_threads"] == 0 and s["health_after"] == "SERVING")
    if "flood" in result:
        f = result["flood"]
        targets["cheap requests >= 99% OK under the flood"] = f["cheap_under_flood"]["success"] >= 0.99
        targets["cheap p99 under the flood <= 5x idle p99"] = f["p99_ratio"] <= 5.0
    if "memory" in result:
        targets["RSS after swaps <= 1.2x first load"] = result["memory"]["rss_ratio"] <= 1.2
    if "replicas" in result:
        r = result["replicas"]
        targets["second replica serves an upsert within one journal poll + 1 s"] = (
            r["replica_sees_upsert_s"]["max"] <= cfg.journal_poll_seconds + 1.0)
        targets["acknowledged upsert survives kill -9"] = r["kill9"]["served_after_restart"]
    if "big_batch" in result:
        b = result["big_batch"]
        targets["cheap requests 100% OK under big batches + admin storm"] = b["cheap_under_load"]["success"] == 1.0
        targets["cheap p99 under big batches + admin storm <= 3x idle p99"] = b["p99_ratio"] <= 3.0
    result["targets"] = targets
    return result


def _cheap_table(idle: dict[str, Any], loaded: dict[str, Any], label: str) -> list[str]:
    """The cheap requests' success and latency idle and under load, as markdown table lines."""
    return ["| cheap requests | OK | p50 ms | p99 ms |", "|---|---|---|---|",
            *(f"| {name} | {r['success']:.1%} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
              for name, r in (("idle", idle), (label, loaded)))]


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    if result["repository"] == "synthetic":
        head = (f"Synthetic ML-100K-sized repository (1682 items, 943 users, dim 64; the tests' ONNX writer): "
                f"{result['models']['cheap']} (TCF text model: batches, upserts), {result['models']['slow']} "
                "(DSSM: cheap known-user probes)")
    else:
        head = (f"Models: slow = {result['models']['slow']} (LM history path), cheap = {result['models']['cheap']} "
                "(known users)")
    lines = [
        f"{head}. Real `llmrec serve --engine {cfg['engine']}` processes on loopback. "
        f"Phases: {', '.join(result['phases'])}.",
        "",
        "| target | met |", "|---|---|",
        *[f"| {k} | {'yes' if v else '**no**'} |" for k, v in result["targets"].items()],
    ]
    if "storm" in result:
        s = result["storm"]
        lines += [
            "",
            f"**Deadline storm**: {s['requests']} history requests from {s['clients']} clients, deadlines "
            f"{s['deadline_ms'][0]:.0f}-{s['deadline_ms'][1]:.0f} ms, in {s['seconds']:.1f} s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(s["codes"].items()))
            + f". Afterwards: normal requests served = {s['served_normally_after']}, health {s['health_after']}, "
            f"server threads {s['server_threads_before']} -> {s['server_threads_after']}."]
    if "flood" in result:
        f = result["flood"]
        idle, loaded = f["cheap_idle"], f["cheap_under_flood"]
        lines += [
            "",
            f"**Flood**: {f['flood_clients']} clients of {result['models']['slow']} history requests "
            f"({f['flood_ok']} OK, {f['flood_failed']} refused or failed while it ran). Cheap known-user requests "
            f"with a {cfg['cheap_deadline_ms']:.0f} ms deadline:",
            "",
            *_cheap_table(idle, loaded, "under the flood"),
            "",
            f"p99 under the flood / idle p99: {f['p99_ratio']:.2f}x."]
    if "memory" in result:
        m = result["memory"]
        lines += [
            "",
            f"**Memory**: RSS {m['rss_first_load_mb']:.0f} MB after the first load, {m['rss_after_swaps_mb']:.0f} MB "
            f"after {m['swaps']} swaps (alternating models): {m['rss_ratio']:.2f}x. One UpsertItems of "
            f"{m['upsert']['items']} items took {m['upsert']['seconds']:.1f} s and grew RSS by "
            f"{m['upsert']['rss_growth_mb']:.0f} MB."]
    if "replicas" in result:
        r = result["replicas"]
        lines += [
            "",
            f"**Replicas** (journal poll {r['journal_poll_seconds']:.1f} s): single-item UpsertItems p50 "
            f"{r['upsert_p50_ms']:.1f} ms, p99 {r['upsert_p99_ms']:.1f} ms (encode + fsynced journal append + "
            f"apply); the second replica served a new item after {r['replica_sees_upsert_s']['median']:.2f} s "
            f"median, {r['replica_sees_upsert_s']['max']:.2f} s max (n={r['replica_sees_upsert_s']['n']}); a delete "
            f"on the second replica reached the first after {r['replica_sees_delete_s']:.2f} s. kill -9 right after "
            f"an acknowledged upsert (journal seq {r['kill9']['acknowledged_seq']}): served after restart = "
            f"{r['kill9']['served_after_restart']}."]
    if "big_batch" in result:
        b = result["big_batch"]
        idle, loaded = b["cheap_idle"], b["cheap_under_load"]
        lines += [
            "",
            f"**Big batches + admin storm**: {b['batch_clients']} clients each sending RecommendBatch calls of "
            f"{b['batch_requests']} requests x {b['batch_excluded']} excluded ids ({b['batch_bytes'] / 1e6:.1f} MB) "
            f"to {b['batch_model']}, and {b['admin_clients']} clients sending UpsertItems to it while every fsync "
            f"takes {b['slow_fsync_seconds']:.1f} s; in {b['seconds']:.1f} s: {b['batches_ok']} batches OK, "
            f"{b['batches_failed']} refused or failed; {b['upserts_ok']} upserts OK, {b['upserts_failed']} refused "
            f"or failed. Cheap known-user requests of {b['probe_model']} ({b['probe_deadline_ms']:.0f} ms deadline), "
            "one at a time:",
            "",
            *_cheap_table(idle, loaded, "under big batches + admin storm"),
            "",
            f"p99 under load / idle p99: {b['p99_ratio']:.2f}x (both measured in this run, on this machine; 1-min "
            f"load average under load {b.get('load_average_1min', float('nan')):.1f} on {b.get('cpus')} CPUs)."]
    if "big_batch_baseline" in result:
        b, base = result["big_batch"], result["big_batch_baseline"]
        now, then = b["cheap_under_load"], base["cheap_under_load"]
        lines += [
            "",
            f"**Same phase, same run, server with `{' '.join(base['server_args'])}`** (the baseline): "
            f"{base['batches_ok']} batches OK, {base['upserts_ok']} upserts OK in {base['seconds']:.1f} s; "
            f"1-min load average {base['load_average_1min']:.1f} (as configured: {b['load_average_1min']:.1f}) "
            f"on {base['cpus']} CPUs.",
            "",
            *_cheap_table(base["cheap_idle"], then, "under big batches + admin storm"),
            "",
            f"Under load, as configured / baseline: p50 {now['p50_ms'] / then['p50_ms']:.2f}x, "
            f"p99 {now['p99_ms'] / then['p99_ms']:.2f}x; batches served "
            f"{b['batches_ok'] / b['seconds']:.2f}/s vs {base['batches_ok'] / base['seconds']:.2f}/s."]
    return "\n".join(lines) + "\n"
