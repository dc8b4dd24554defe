"""The server under load, per engine, against the plain PyTorch way of answering the same requests.

A real `llmrec serve` process is started on the model repository once per engine setting (`--engine`),
then, for each workload (known users by id; histories of real users), closed-loop clients at each
concurrency of the sweep send Recommend requests for a bounded time; optionally open-loop at fixed
rates (latency counted from each request's scheduled time, so a slow server cannot hide its queue).
A no-op RPC (grpc.health Check) on the same server is the transport floor. Latencies go into HDR
histograms (p50/p90/p99/p99.9). The baseline, in the same run, answers the same history requests the
way research code does: the checkpoint's torch encoder, scores against every item, topk, from the
same number of concurrent callers, no batching; its phases alternate with the server's (`paired`), so
the ratio compares the two paths under the same spells of a shared machine. A third side in those
phases runs the engine the server chose, loaded in the bench process with the server's threads and
instances, on the same requests without gRPC or batching: server / engine-alone says what the serving
path keeps of its engine's speed, and engine-alone / PyTorch what the engine itself gives on this
machine in this run. With --bench.models, several models of the repository (a distilled student and its
teacher) are compared on the same history requests instead, in alternating phases (benchmarks/grpc_models.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram

from common.errors import ConfigError
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from repository import files as F
from repository.arrays import read_json_list
from repository.kinds import KINDS
from repository.manifest import Manifest, read_manifest
from repository.reader import read_known_users
from repository.versions import list_versions
from server.spawn import spawn_server, stop_server

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class GrpcBenchConfig:
    repository: Path = Path("work/model-repository")
    model: str = ""  # model name in the repository
    checkpoint: Path | None = None  # when given, the PyTorch baseline runs in the same process
    engines: list[str] = field(default_factory=lambda: ["auto"])  # one server per `--engine` value
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    seconds: float = 5.0  # per (engine, workload, concurrency)
    max_requests: int = 5000  # per point: bounded in count and in time
    open_loop_rates: list[float] = field(default_factory=list)  # requests/s of history requests, per engine
    top_k: int = 20
    history_len: int = 20
    # Send only users with at least history_len items, each cut to exactly that many, so every request's
    # encoder input has one length (serving targets are stated at one L, e.g. about 128 tokens);
    # off: every sampled user's most recent history_len items, so lengths vary as in real traffic.
    fixed_history: bool = False
    # The server-vs-PyTorch comparison (needs --bench.checkpoint): at each of these concurrencies the history
    # workload alternates between the server and the in-process PyTorch baseline for `paired_rounds` rounds
    # of `paired_seconds` each, and each side's figures pool its rounds. A shared machine's speed drifts by
    # tens of percent within minutes; phases minutes apart would measure the drift as much as the paths.
    baseline_concurrency: list[int] = field(default_factory=lambda: [1, 8])
    paired_rounds: int = 3
    paired_seconds: float = 4.0
    # Also serve with --max-batch-size 1 and rerun the history workload at the highest concurrency, so the
    # gain of dynamic batching is measured in the same run.
    compare_unbatched: bool = True
    # When the server runs several encoder instances (--encoder-instances, auto-sized from the cores), also
    # serve its chosen engine with one instance and alternate the two on the history workload at the highest
    # baseline concurrency, so what the instances add under load is measured in the same run.
    compare_one_instance: bool = True
    # Where the PyTorch baseline runs (auto | cpu | cuda | cuda:N, as the trainers' --device): auto = the
    # first GPU when torch sees one (a GPU server is compared with PyTorch on the same GPU, not with the
    # CPU), else the CPU with one thread per request.
    torch_device: str = "auto"
    server_args: list[str] = field(default_factory=list)  # extra `llmrec serve` flags
    # A source tree of this project at another commit (`git worktree add /tmp/ref <commit>`): its server runs
    # beside this one, pinned to the same engine, and every workload alternates between the two at 1 client and
    # the highest baseline concurrency, so a change that should not move the serving figures is checked in
    # one run on the same machine state.
    reference_code: Path | None = None
    # Several models of one repository in one run, instead of --bench.model (benchmarks/grpc_models.py): one
    # server per engine serves them all; at each history length the models' history workloads and the
    # PyTorch eager run of --bench.checkpoint (the baseline model's checkpoint) alternate at each
    # --bench.baseline-concurrency, on the same requests, and a sweep over --bench.concurrency follows.
    models: list[str] = field(default_factory=list)
    baseline_model: str = ""  # with --bench.models: the one the others are divided by (default: the last named)
    # with --bench.models: each workload sends histories of exactly this many items (users with fewer are left out)
    history_lengths: list[int] = field(default_factory=lambda: [20, 60, 120])
    # with --bench.models, issue 28's serving targets, shown met / not met beside what the paired phases measured:
    # each other model's QPS over the baseline model's server at N clients (N:ratio) ...
    target_qps_ratio: list[str] = field(default_factory=lambda: ["1:20", "8:10"])
    # ... and its p99 at N clients (N:ms)
    target_p99_ms: list[str] = field(default_factory=lambda: ["1:3"])


def _load_requests(version_dir: Path, n: int, history_len: int, seed: int = 0, fixed: bool = False
                   ) -> tuple[list[str], list[list[str]]]:
    user_ids, indptr, indices = read_known_users(version_dir)
    item_ids = read_json_list(version_dir / F.ITEM_IDS)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.diff(indptr) >= history_len) if fixed else np.arange(len(user_ids))
    if not len(pool):
        raise ConfigError(f"--bench.fixed-history: no user of {version_dir} has {history_len} items in its "
                          f"history (the longest has {int(np.diff(indptr).max())}); lower --bench.history-len")
    users = rng.choice(pool, size=min(n, len(pool)), replace=False)
    histories = [[item_ids[r] for r in indices[indptr[u]:indptr[u + 1]][-history_len:]] for u in users]
    return [user_ids[u] for u in users], histories


class Recorder:
    """Latencies (microseconds) in an HDR histogram, errors by status code; thread-safe."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(1, 600_000_000, 3)
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()

    def ok(self, seconds: float) -> None:
        with self._lock:
            self.hist.record_value(max(1, int(seconds * 1e6)))

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def summary(self, elapsed: float, **extra: Any) -> dict[str, Any]:
        n = self.hist.get_total_count()
        out = {"requests": n, "errors": dict(self.errors), "qps": n / elapsed if elapsed else 0.0, **extra}
        for p in PERCENTILES:
            out[f"p{p:g}_ms"] = self.hist.get_value_at_percentile(p) / 1000.0 if n else float("nan")
        return out


def closed_loop(call: Callable[[int], Any], concurrency: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """`concurrency` callers, each sending its next request when the previous one is answered."""
    rec = Recorder()
    return rec.summary(_drive(call, concurrency, seconds, max_requests, rec), concurrency=concurrency)


def paired(calls: dict[str, Callable[[int], Any]], concurrency: int, rounds: int, seconds: float
           ) -> dict[str, dict[str, Any]]:
    """Closed-loop phases of each call in turn, `rounds` times; each call's latencies and QPS pool its own
    phases, so slow and fast spells of a shared machine fall on every side alike."""
    recs = {name: Recorder() for name in calls}
    elapsed = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            elapsed[name] += _drive(call, concurrency, seconds, 1_000_000, recs[name])
    return {name: recs[name].summary(elapsed[name], concurrency=concurrency, rounds=rounds) for name in calls}


def _drive(call: Callable[[int], Any], concurrency: int, seconds: float, max_requests: int, rec: Recorder) -> float:
    """Runs the callers into `rec`; returns the seconds they took."""
    counter = iter(range(max_requests))
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                call(i)
                rec.ok(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                rec.error(exc.code().name)

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t_start


def open_loop(future: Callable[[int], Any], rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent at a fixed rate whatever the answers; latency from each request's scheduled time."""
    rec = Recorder()
    pending: list[Any] = []
    t_start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        scheduled = t_start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        f = future(i)

        def done(f: Any, scheduled: float = scheduled) -> None:
            exc = f.exception()
            if exc is None:
                rec.ok(time.perf_counter() - scheduled)
            else:
                rec.error(exc.code().name)

        f.add_done_callback(done)
        pending.append(f)
    for f in pending:
        with contextlib.suppress(grpc.RpcError):
            f.result()
    time.sleep(0.05)  # the last callbacks
    return rec.summary(time.perf_counter() - t_start, rate=rate, offered=n)


def _server_adapter(version_dir: Path, manifest: Manifest) -> tuple[Any, dict[str, int]]:
    """The server's request adapter for this version and its item id -> row map."""
    from server.adapters import adapter_for

    adapter = adapter_for(manifest.kind, manifest.user_tower)(version_dir, manifest)
    return adapter, {x: i for i, x in enumerate(read_json_list(version_dir / F.ITEM_IDS))}


def _feeds_builder(version_dir: Path, users: list[str], histories: list[list[str]], items: np.ndarray,
                   input_names: list[str]) -> Callable[[int], dict[str, np.ndarray]]:
    """Request i's encoder feeds, built by the server's own adapter, so every in-process baseline encodes
    exactly what the server does."""
    adapter, rows = _server_adapter(version_dir, read_manifest(version_dir))
    user_rows = {u: i for i, u in enumerate(read_known_users(version_dir)[0])}

    def feeds(i: int) -> dict[str, np.ndarray]:
        user, hist = users[i % len(users)], histories[i % len(histories)]
        payload = adapter.payload(user_rows.get(user), [rows[x] for x in hist], lambda r: items[np.asarray(r)])
        return adapter.feeds([payload], input_names)

    return feeds


def torch_label(result: dict) -> str:
    """The baseline's name in reports: the device only where it is not the CPU."""
    device = result.get("pytorch_device", "cpu")
    return "PyTorch eager fp32" + ("" if device == "cpu" else f" on {device}")


def _torch_answer(checkpoint: Path | Any, version_dir: Path, users: list[str], histories: list[list[str]], k: int,
                  device: str = "cpu") -> Callable[[int], None] | None:
    """Research-code serving: the torch encoder per request, scores against every item, topk, no batching.
    Prompts / sequences are built by the server's own adapter, so both sides encode the same input; on a
    GPU the inputs go up and the ids come back per request, as the server's do. None for a model without
    a history encoder (DSSM). `checkpoint` may be a bundle already loaded, for several request sets."""
    import torch

    from models.bundle import load_bundle

    bundle = load_bundle(checkpoint, known_users=False) if isinstance(checkpoint, (str, Path)) else checkpoint
    enc = bundle.encoders.get("user_encoder")
    if enc is None:
        return None
    torch.set_num_threads(1)
    items = np.ascontiguousarray(bundle.item_vectors, dtype=np.float32)
    items_t = torch.from_numpy(items).to(device)
    module = enc.module.to(device).eval()
    feeds_of = _feeds_builder(version_dir, users, histories, items, enc.input_names)

    def answer(i: int) -> None:
        feeds = feeds_of(i)
        with torch.inference_mode():
            v = module(*(torch.from_numpy(feeds[n]).to(device) for n in enc.input_names))
            torch.topk(v @ items_t.T, k)[1].cpu()

    answer(0)  # warm-up
    return answer


def _engine_answer(version_dir: Path, engine: str, users: list[str], histories: list[list[str]], k: int,
                   server_args: list[str], instances: int) -> Callable[[int], np.ndarray] | None:
    """The server's chosen engine ("name:precision") in this process, as the server loads it (its
    --ort-threads, and the encoder instances it reports in ListModels), answering like the PyTorch
    baseline: encode one request, score every item, top-k. Returns the top-k rows (for tests). None when
    the engine is not one this process can load (or the model has no history encoder)."""
    from server import config
    from server.engines import ENGINES

    name, _, precision = engine.partition(":")
    graph = version_dir / F.USER_ENCODER
    if name not in ENGINES or not graph.exists():
        return None
    serve = config.load(["--repository", str(version_dir.parent.parent), *server_args])
    enc = ENGINES[name].load(graph, precision, serve.encoders.ort_threads, instances=max(1, instances))
    items = np.ascontiguousarray(np.load(version_dir / F.ITEM_VECTORS), dtype=np.float32)
    feeds_of = _feeds_builder(version_dir, users, histories, items, enc.input_names)
    kk = min(k, len(items))

    def answer(i: int) -> np.ndarray:
        scores = enc.run(feeds_of(i))[0] @ items.T
        top = np.argpartition(-scores, kk - 1)[:kk]
        return top[np.argsort(-scores[top], kind="stable")]

    answer(0)  # warm-up
    return answer


def _sweep(target: str, cfg: GrpcBenchConfig, workloads: dict[str, Callable[[int], pb.RecommendRequest]],
           torch_answer: Callable[[int], None] | None, engine_answer: Callable[[int], Any] | None = None
           ) -> dict[str, Any]:
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.RecommenderStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    out: dict[str, Any] = {}
    calls: dict[str, Callable[[int], None]] = {
        name: (lambda i, make=make: stub.Recommend(make(i), timeout=60)) for name, make in workloads.items()}
    calls["noop"] = lambda i: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
    for name, call in calls.items():
        out[name] = [closed_loop(call, c, cfg.seconds, cfg.max_requests) for c in cfg.concurrency]
    if "history" in workloads and cfg.open_loop_rates:
        out["history_open_loop"] = [
            open_loop(lambda i: stub.Recommend.future(workloads["history"](i), timeout=60), r, cfg.seconds)
            for r in cfg.open_loop_rates]
    if torch_answer is not None and "history" in workloads:
        sides: dict[str, Callable[[int], Any]] = {"server": calls["history"], "pytorch": torch_answer}
        if engine_answer is not None:
            sides["engine_alone"] = engine_answer
        out["paired"] = [paired(sides, c, cfg.paired_rounds, cfg.paired_seconds) for c in cfg.baseline_concurrency]
    channel.close()
    return out


def _request_lengths(version_dir: Path, manifest: Manifest, histories: list[list[str]]) -> dict[str, Any]:
    """Percentiles of the history lengths sent and, where the model's adapter measures it, of the encoder
    input length they make (prompt tokens for CLLM4Rec): a figure at "L about 128" needs to say its L."""
    from server.adapters import adapter_for

    def pct(xs: list[int]) -> dict[str, float]:
        return {f"p{q}": float(np.percentile(xs, q)) for q in (10, 50, 90)}

    out: dict[str, Any] = {"history_items": pct([len(h) for h in histories])}
    cls = adapter_for(manifest.kind, manifest.user_tower)
    if KINDS[(manifest.kind, manifest.user_tower)].history and hasattr(cls, "length"):
        adapter, rows = _server_adapter(version_dir, manifest)
        out["encoder_input_length"] = pct([adapter.length(adapter.payload(None, [rows[x] for x in h], lambda r: None))
                                           for h in histories])
    return out


def _latest_version(repository: Path, model: str) -> int:
    """The newest version of `model`; a missing repository or model says what there is to choose from."""
    if not repository.is_dir():
        raise ConfigError(f"model repository {repository} does not exist; pass --bench.repository "
                          "(a folder written by `llmrec export`)")
    models = sorted(p.name for p in repository.iterdir() if p.is_dir() and list_versions(p))
    accepted = f"models in {repository}: {', '.join(models) or '(none: run `llmrec export` first)'}"
    if not model:
        raise ConfigError(f"--bench.model is required; {accepted}")
    if model not in models:
        raise ConfigError(f"no model {model!r} with a version in the repository; {accepted}")
    return list_versions(repository / model)[-1]


def run_grpc(cfg: GrpcBenchConfig) -> dict:
    if cfg.models:
        from benchmarks.grpc_models import run_models

        return run_models(cfg)
    if cfg.reference_code is not None and not (Path(cfg.reference_code) / "server").is_dir():
        raise ConfigError(f"--bench.reference-code {cfg.reference_code}: not a source tree of this project "
                          "(no server/ folder); make one with `git worktree add DIR COMMIT`")
    model_dir = cfg.repository / cfg.model
    versions = [_latest_version(cfg.repository, cfg.model)]
    version_dir = model_dir / str(versions[-1])
    manifest = read_manifest(version_dir)
    users, histories = _load_requests(version_dir, 500, cfg.history_len, fixed=cfg.fixed_history)
    workloads: dict[str, Callable[[int], pb.RecommendRequest]] = {
        "user_id": lambda i: pb.RecommendRequest(model=cfg.model, user_id=users[i % len(users)], top_k=cfg.top_k)}
    if manifest.capabilities.history:
        workloads["history"] = lambda i: pb.RecommendRequest(model=cfg.model, history=histories[i % len(histories)],
                                                             top_k=cfg.top_k)
    result: dict = {"model": cfg.model, "version": versions[-1], "kind": manifest.kind,
                    "user_tower": manifest.user_tower, "servers": {},
                    "requests": _request_lengths(version_dir, manifest, histories),
                    "config": {"seconds": cfg.seconds, "top_k": cfg.top_k, "history_len": cfg.history_len,
                               "fixed_history": cfg.fixed_history,
                               "concurrency": cfg.concurrency, "server_args": cfg.server_args,
                               "paired_rounds": cfg.paired_rounds, "paired_seconds": cfg.paired_seconds,
                               "cpu_count": os.cpu_count()}}
    torch_answer = None
    if cfg.checkpoint is not None and "history" in workloads:
        from models.training.devices import resolve_device  # torch: only where the baseline runs

        result["pytorch_device"] = str(resolve_device(cfg.torch_device, local_rank=0))
        torch_answer = _torch_answer(cfg.checkpoint, version_dir, users, histories, cfg.top_k,
                                     result["pytorch_device"])
        if torch_answer is None:
            result["pytorch_eager"] = {"skipped": "model has no history encoder (DSSM)"}
    for engine in cfg.engines:
        proc, target = spawn_server(cfg.repository, ["--metrics-port", "-1", "--engine", engine, *cfg.server_args])
        try:
            from client import RecommenderClient

            with RecommenderClient(target) as c:
                info = next(m for m in c.list_models().models if m.name == cfg.model).versions[-1]
            engine_answer = None
            if torch_answer is not None and info.engine:
                engine_answer = _engine_answer(version_dir, info.engine, users, histories, cfg.top_k,
                                               cfg.server_args, info.encoder_instances)
            result["servers"][engine] = {"engine_chosen": info.engine, "index_backend": info.index_backend,
                                         "encoder_instances": info.encoder_instances,
                                         **_sweep(target, cfg, workloads, torch_answer, engine_answer)}
            del engine_answer  # its compiled model: one per server, not all of them at once
            if (engine == cfg.engines[0] and cfg.compare_one_instance and "history" in workloads
                    and info.encoder_instances > 1):
                result["instances_compare"] = _against_one_instance(cfg, target, info.engine,
                                                                    info.encoder_instances, workloads["history"])
        finally:
            stop_server(proc)
    if cfg.reference_code is not None:
        result["reference_code"] = _against_reference_code(cfg, workloads, next(
            (s["engine_chosen"] for s in result["servers"].values() if s["engine_chosen"]), cfg.engines[0]))
    if cfg.compare_unbatched and "history" in workloads:
        proc, target = spawn_server(cfg.repository, ["--metrics-port", "-1", "--engine", cfg.engines[0],
                                                     *cfg.server_args, "--max-batch-size", "1"])
        try:
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.RecommenderStub(channel)
                c = max(cfg.concurrency)
                result["server_unbatched"] = {"engine": cfg.engines[0], "history": closed_loop(
                    lambda i: stub.Recommend(workloads["history"](i), timeout=60), c, cfg.seconds, cfg.max_requests)}
        finally:
            stop_server(proc)
    return result


def _against_one_instance(cfg: GrpcBenchConfig, target: str, engine: str, instances: int,
                          history: Callable[[int], pb.RecommendRequest]) -> dict[str, Any]:
    """The running server (several encoder instances) against a second one serving the same engine with
    one, in alternating phases: one history workload, both servers loaded at once."""
    proc, single = spawn_server(cfg.repository, ["--metrics-port", "-1", *cfg.server_args, "--engine", engine,
                                                 "--encoder-instances", "1"])
    try:
        with grpc.insecure_channel(target) as a, grpc.insecure_channel(single) as b:
            many, one = pb_grpc.RecommenderStub(a), pb_grpc.RecommenderStub(b)
            sides = {"instances": lambda i: many.Recommend(history(i), timeout=60),
                     "one_instance": lambda i: one.Recommend(history(i), timeout=60)}
            pair = paired(sides, max(cfg.baseline_concurrency), cfg.paired_rounds, cfg.paired_seconds)
    finally:
        stop_server(proc)
    return {"engine": engine, "count": instances, **pair}


def _against_reference_code(cfg: GrpcBenchConfig, workloads: dict[str, Callable[[int], pb.RecommendRequest]],
                            engine: str) -> dict[str, Any]:
    """This code's server and the reference tree's server (same repository, same engine), both loaded at
    once, in alternating phases on every workload plus the no-op."""
    ref = Path(cfg.reference_code).resolve()
    args = ["--metrics-port", "-1", *cfg.server_args, "--engine", engine]
    commit = subprocess.run(["git", "-C", str(ref), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    proc, target = spawn_server(cfg.repository, args)
    try:  # the reference tree's packages (and its generated stubs) come first on the path
        ref_proc, ref_target = spawn_server(cfg.repository, args,
                                            env={"PYTHONPATH": os.pathsep.join([str(ref), str(ref / "proto")])})
    except BaseException:
        stop_server(proc)
        raise
    out: dict[str, Any] = {"code": str(ref), "commit": commit or None, "engine": engine, "workloads": {}}
    try:
        with grpc.insecure_channel(target) as a, grpc.insecure_channel(ref_target) as b:
            cur, old = pb_grpc.RecommenderStub(a), pb_grpc.RecommenderStub(b)
            cur_h, old_h = health_pb2_grpc.HealthStub(a), health_pb2_grpc.HealthStub(b)
            noop = health_pb2.HealthCheckRequest(service="")
            sides = {name: {"current": lambda i, m=make: cur.Recommend(m(i), timeout=60),
                            "reference": lambda i, m=make: old.Recommend(m(i), timeout=60)}
                     for name, make in workloads.items()}
            sides["noop"] = {"current": lambda i: cur_h.Check(noop, timeout=60),
                             "reference": lambda i: old_h.Check(noop, timeout=60)}
            for name, calls in sides.items():
                out["workloads"][name] = [paired(calls, c, cfg.paired_rounds, cfg.paired_seconds)
                                          for c in sorted({1, max(cfg.baseline_concurrency)})]
    finally:
        stop_server(ref_proc)
        stop_server(proc)
    return out


def _at(rows: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("concurrency") == concurrency), None)


def comparisons(result: dict, server: dict) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(clients, server figures, PyTorch figures) on the history workload: the alternating phases where the
    run has them; in result files written before those, the sweep's point against the baseline run after it."""
    if "paired" in server:
        return [(p["server"]["concurrency"], p["server"], p["pytorch"]) for p in server["paired"]]
    base = result.get("pytorch_eager", {}).get("history", [])
    return [(b["concurrency"], srv, b) for b in base if (srv := _at(server.get("history", []), b["concurrency"]))]


def engine_alone(server: dict) -> list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(clients, server, engine alone, PyTorch) where the paired phases had the engine-alone side."""
    return [(p["server"]["concurrency"], p["server"], p["engine_alone"], p["pytorch"])
            for p in server.get("paired", []) if "engine_alone" in p]


def instances_label(server: dict) -> str:
    """", N encoder instances" for a server that reported its count (files before the count: "")."""
    n = server.get("encoder_instances")
    return f", {n} encoder instance{'s' if n != 1 else ''}" if n else ""


def _torch_rows(result: dict) -> list[dict[str, Any]]:
    first = next(iter(result["servers"].values()), {})
    if "paired" in first:
        return [p["pytorch"] for p in first["paired"]]
    return result.get("pytorch_eager", {}).get("history", [])


def _requests_line(result: dict) -> str:
    req, cfg = result["requests"], result["config"]

    def span(p: dict[str, float]) -> str:
        return f"{p['p50']:g}" if p["p10"] == p["p90"] else f"median {p['p50']:g} (p10 {p['p10']:g}, p90 {p['p90']:g})"
    text = ("History requests: exactly " if cfg.get("fixed_history") else "History requests: up to ") + \
        f"{cfg['history_len']} items each ({span(req['history_items'])} items"
    if "encoder_input_length" in req:
        text += f", {span(req['encoder_input_length'])} encoder input tokens"
    return text + ")."


def markdown(result: dict) -> str:
    if "models" in result:  # a --bench.models run
        from benchmarks.grpc_models import markdown as models_markdown

        return models_markdown(result)
    lines = [f"Model {result['model']} v{result['version']} ({result['kind']}/{result['user_tower']}); "
             f"{result['config']['seconds']:.0f} s per point, top-{result['config']['top_k']}, closed-loop clients "
             "on loopback; latencies from HDR histograms."
             + (f" Server flags: `{' '.join(result['config']['server_args'])}`." if result["config"].get("server_args")
                else ""), ""]
    if "requests" in result:
        lines += [_requests_line(result), ""]
    for engine, server in result["servers"].items():
        lines += [f"### server --engine {engine} (chose {server['engine_chosen'] or 'none'}, "
                  f"index {server['index_backend']}{instances_label(server)})", "",
                  "| workload | clients | QPS | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |",
                  "|---|---|---|---|---|---|---|---|"]
        for workload in ("noop", "user_id", "history"):
            for r in server.get(workload, []):
                lines.append(f"| {workload} | {r['concurrency']} | {r['qps']:.1f} | {r['p50_ms']:.2f} | "
                             f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99.9_ms']:.2f} | "
                             f"{sum(r['errors'].values())} |")
        for r in server.get("history_open_loop", []):
            lines.append(f"| history, open loop {r['rate']:g}/s | - | {r['qps']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99.9_ms']:.2f} | {sum(r['errors'].values())} |")
        lines.append("")
        noop1, user1 = _at(server.get("noop", []), 1), _at(server.get("user_id", []), 1)
        if noop1 and user1:
            lines.append(f"user_id p99 / no-op RPC p99 at 1 client: {user1['p99_ms'] / noop1['p99_ms']:.2f}x.")
        pairs = comparisons(result, server)
        if pairs and "paired" in server:
            cfg = result["config"]
            lines += ["", f"History workload, server vs {torch_label(result)} in process (encode + score all items + "
                      f"topk, no batching), alternating {cfg['paired_seconds']:g} s phases, {cfg['paired_rounds']} "
                      "rounds each side:", "",
                      "| clients | server QPS | PyTorch QPS | QPS ratio | server p50 ms | PyTorch p50 ms | p50 ratio | "
                      "server p99 ms | PyTorch p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {c} | {srv['qps']:.2f} | {t['qps']:.2f} | {srv['qps'] / t['qps']:.2f}x | {srv['p50_ms']:.1f} | "
                      f"{t['p50_ms']:.1f} | {t['p50_ms'] / srv['p50_ms']:.2f}x | {srv['p99_ms']:.1f} | "
                      f"{t['p99_ms']:.1f} |" for c, srv, t in pairs]
            alone = engine_alone(server)
            if alone:
                lines += ["", f"The same phases, third side: the engine the server chose ({server['engine_chosen']}) "
                          "in the bench process with the server's threads and instances, same requests, no gRPC, "
                          "no batching (encode + score all items + topk):", "",
                          "| clients | engine alone QPS | engine alone p50 ms | engine alone / PyTorch QPS | "
                          "server / engine alone QPS | server / engine alone p50 speed |", "|---|---|---|---|---|---|"]
                lines += [f"| {c} | {e['qps']:.2f} | {e['p50_ms']:.1f} | {e['qps'] / t['qps']:.2f}x | "
                          f"{srv['qps'] / e['qps']:.2f} | {e['p50_ms'] / srv['p50_ms']:.2f} |" for c, srv, e, t in alone]
        else:
            for c, srv, t in pairs:
                lines.append(f"history at {c} client(s): server {srv['qps']:.2f} QPS vs {torch_label(result)} "
                             f"{t['qps']:.2f} QPS: {srv['qps'] / t['qps']:.2f}x; p50 {srv['p50_ms']:.1f} vs "
                             f"{t['p50_ms']:.1f} ms: {t['p50_ms'] / srv['p50_ms']:.2f}x.")
        lines.append("")
    base = result.get("pytorch_eager", {}).get("history", [])
    if base:  # result files from before the alternating phases
        lines += ["### PyTorch eager fp32, in process (encode + score all items + topk, no batching)", "",
                  "| clients | QPS | p50 ms | p99 ms |", "|---|---|---|---|"]
        lines += [f"| {r['concurrency']} | {r['qps']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in base]
        lines.append("")
    unb = result.get("server_unbatched")
    if unb:
        batched = _at(result["servers"][unb["engine"]].get("history", []), unb["history"]["concurrency"])
        if batched:
            lines.append(f"Dynamic batching on the history workload at {batched['concurrency']} clients "
                         f"(--engine {unb['engine']}): {batched['qps'] / unb['history']['qps']:.2f}x the QPS of "
                         "--max-batch-size 1.")
    inst = result.get("instances_compare")
    if inst:
        many, one = inst["instances"], inst["one_instance"]
        lines += ["", f"Encoder instances on the history workload at {one['concurrency']} clients (--engine "
                     f"{inst['engine']}, alternating {result['config']['paired_seconds']:g} s phases, "
                     f"{one['rounds']} rounds each): {inst['count']} instances {many['qps']:.2f} QPS, p99 "
                     f"{many['p99_ms']:.1f} ms vs one instance {one['qps']:.2f} QPS, p99 {one['p99_ms']:.1f} ms: "
                     f"{many['qps'] / one['qps']:.2f}x."]
    ref = result.get("reference_code")
    if ref:
        lines += ["", f"### This code vs the reference code ({ref['commit'] or ref['code']})", "",
                  f"Two servers on the same repository (--engine {ref['engine']}), both loaded, in alternating "
                  f"{result['config']['paired_seconds']:g} s phases:", "",
                  "| workload | clients | current QPS | reference QPS | current / reference QPS | current p50 ms | "
                  "reference p50 ms | current p99 ms | reference p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
        for name, rows in ref["workloads"].items():
            for p in rows:
                c, r = p["current"], p["reference"]
                lines.append(f"| {name} | {c['concurrency']} | {c['qps']:.1f} | {r['qps']:.1f} | "
                             f"{c['qps'] / r['qps']:.2f}x | {c['p50_ms']:.2f} | {r['p50_ms']:.2f} | "
                             f"{c['p99_ms']:.2f} | {r['p99_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, prefix: Path) -> list[Path]:
    """latency vs concurrency and QPS vs concurrency, per workload and engine; PNG files."""
    if "models" in result:  # a --bench.models run: one line per model
        from benchmarks.grpc_models import plot as models_plot

        return models_plot(result, prefix)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric, ylabel, name in (("p99_ms", "p99 latency (ms, log)", "latency"), ("qps", "requests/s (log)", "qps")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for engine, server in result["servers"].items():
            for workload in ("noop", "user_id", "history"):
                rows = server.get(workload, [])
                if rows:
                    ax.plot([r["concurrency"] for r in rows], [r[metric] for r in rows], marker="o",
                            label=f"{workload} ({server['engine_chosen'] or engine})")
        base = _torch_rows(result)
        if base:
            ax.plot([r["concurrency"] for r in base], [r[metric] for r in base], marker="s", linestyle="--",
                    label=f"history ({torch_label(result)})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{result['model']}: {ylabel.split(' (')[0]} vs concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        path = prefix.with_name(f"{prefix.name}_{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
