"""The server under concurrent load, against the plain PyTorch way of answering the same requests.

A server is started on the model repository (a subprocess on loopback), then C client threads
send Recommend requests for a bounded time: known users by id, and histories (each user's own
seen items, most recent last). The baseline, in the same run, answers the same requests the way
research code does: the checkpoint's torch encoder over the user's prompt/history, scores
against every item, topk - one request at a time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from llmrec.errors import ConfigError
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.spawn import spawn_server, stop_server


@dataclass
class GrpcBenchConfig:
    repository: Path = Path("work/model-repository")
    model: str = ""  # model name in the repository
    checkpoint: Path | None = None  # when given, the PyTorch baseline runs in the same process
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    seconds: float = 8.0  # per (workload, concurrency)
    max_requests: int = 5000  # per (workload, concurrency): the loop is bounded in count and in time
    top_k: int = 20
    history_len: int = 20
    baseline_requests: int = 40
    # Also serve with --max-batch-size 1 and rerun the history workload at the highest concurrency, so the
    # gain of dynamic batching is measured in the same run.
    compare_unbatched: bool = True
    server_args: list[str] = field(default_factory=list)  # extra `llmrec serve` flags


def _load_requests(
    version_dir: Path, n: int, history_len: int, seed: int = 0
) -> tuple[list[str], list[list[str]]]:
    user_ids = json.loads((version_dir / "user_ids.json").read_text())
    item_ids = json.loads((version_dir / "item_ids.json").read_text())
    hist = np.load(version_dir / "user_history.npz")
    rng = np.random.default_rng(seed)
    users = rng.choice(len(user_ids), size=min(n, len(user_ids)), replace=False)
    histories = []
    for u in users:
        rows = hist["indices"][hist["indptr"][u] : hist["indptr"][u + 1]][-history_len:]
        histories.append([item_ids[r] for r in rows])
    return [user_ids[u] for u in users], histories


def _drive(target: str, make_request, concurrency: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(max_requests))
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.RecommenderStub(channel)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            try:
                stub.Recommend(make_request(i), timeout=30)
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(dt)
            except grpc.RpcError as exc:
                with lock:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        channel.close()

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "qps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def _torch_baseline(
    checkpoint: Path, version_dir: Path, users: list[str], histories: list[list[str]], k: int
) -> dict:
    """Research-code serving: encode every request with the torch model, score all items, topk.

    Prompts/sequences are built by the server's own code (so both sides encode the same input);
    the encoder is the checkpoint's torch module, not the ONNX graph.
    """
    import torch

    from models.bundle import load_bundle
    from server.config import ServeConfig
    from server.models_runtime import ModelVersion
    from server.repository import load_files

    bundle = load_bundle(checkpoint, known_users=False)
    enc = bundle.encoders.get("user_encoder")
    if enc is None:
        return {"skipped": "model has no history encoder (DSSM)"}
    torch.set_num_threads(1)
    mv = ModelVersion(version_dir.parent.name, load_files(version_dir, 1, ("CPUExecutionProvider",)),
                      ServeConfig(repository=version_dir.parent.parent))
    cat = mv.catalogue
    items_t = torch.from_numpy(np.ascontiguousarray(bundle.item_vectors))
    lat = []
    t_start = time.perf_counter()
    for user, hist in zip(users, histories, strict=True):
        t0 = time.perf_counter()
        payload = mv.history_payload(mv.user_rows.get(user), [cat.row(i) for i in hist], cat)
        feeds = mv.user_encoder.feeds([payload])
        with torch.inference_mode():
            v = enc.module(*(torch.from_numpy(feeds[n]) for n in enc.input_names))
            torch.topk(v @ items_t.T, k)
        lat.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - t_start
    mv.retire()
    a = np.asarray(lat)
    return {
        "concurrency": 1,
        "requests": len(lat),
        "qps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _latest_version(repository: Path, model: str) -> int:
    """The newest version of `model`; a missing repository or model says what there is to choose from."""
    if not repository.is_dir():
        raise ConfigError(f"model repository {repository} does not exist; pass --bench.repository "
                          "(a folder written by `llmrec export`)")
    models = sorted(p.name for p in repository.iterdir() if p.is_dir() and _versions(p))
    accepted = f"models in {repository}: {', '.join(models) or '(none: run `llmrec export` first)'}"
    if not model:
        raise ConfigError(f"--bench.model is required; {accepted}")
    if model not in models:
        raise ConfigError(f"no model {model!r} with a version in the repository; {accepted}")
    return _versions(repository / model)[-1]


def run_grpc(cfg: GrpcBenchConfig) -> dict:
    model_dir = cfg.repository / cfg.model
    versions = [_latest_version(cfg.repository, cfg.model)]
    version_dir = model_dir / str(versions[-1])
    manifest = json.loads((version_dir / "manifest.json").read_text())
    users, histories = _load_requests(version_dir, 500, cfg.history_len)
    workloads = {
        "user_id": lambda i: pb.RecommendRequest(
            model=cfg.model, user_id=users[i % len(users)], top_k=cfg.top_k
        )
    }
    if manifest["capabilities"].get("history"):
        workloads["history"] = lambda i: pb.RecommendRequest(
            model=cfg.model, history=histories[i % len(histories)], top_k=cfg.top_k
        )
    result: dict = {
        "model": cfg.model,
        "version": versions[-1],
        "kind": manifest["kind"],
        "user_tower": manifest["user_tower"],
        "server": {},
        "config": {
            "seconds": cfg.seconds,
            "top_k": cfg.top_k,
            "history_len": cfg.history_len,
            "server_args": cfg.server_args,
            "cpu_count": os.cpu_count(),
        },
    }
    proc, target = spawn_server(cfg.repository, ["--metrics-port", "-1", *cfg.server_args])
    try:
        for name, make in workloads.items():
            result["server"][name] = [
                _drive(target, make, c, cfg.seconds, cfg.max_requests) for c in cfg.concurrency
            ]
    finally:
        stop_server(proc)
    if cfg.compare_unbatched and "history" in workloads:
        proc, target = spawn_server(cfg.repository, ["--metrics-port", "-1", *cfg.server_args, "--max-batch-size", "1"])
        try:
            c = max(cfg.concurrency)
            result["server_unbatched"] = {"history": [_drive(target, workloads["history"], c, cfg.seconds,
                                                             cfg.max_requests)]}
        finally:
            stop_server(proc)
    if cfg.checkpoint is not None:
        n = min(cfg.baseline_requests, len(users))
        result["pytorch_eager"] = _torch_baseline(
            cfg.checkpoint, version_dir, users[:n], histories[:n], cfg.top_k
        )
    return result


def markdown(result: dict) -> str:
    lines = [
        f"Model {result['model']} v{result['version']} ({result['kind']}/{result['user_tower']}).",
        "",
        "| path | workload | concurrency | QPS | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["server"].items():
        for r in rows:
            lines.append(
                f"| gRPC server | {name} | {r['concurrency']} | {r['qps']:.1f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {sum(r['errors'].values())} |"
            )
    for r in result.get("server_unbatched", {}).get("history", []):
        lines.append(f"| gRPC server, --max-batch-size 1 | history | {r['concurrency']} | {r['qps']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {sum(r['errors'].values())} |")
    base = result.get("pytorch_eager")
    if base and "qps" in base:
        lines.append(
            f"| PyTorch eager, in process (encode + score all + topk) | history and user_id | 1 | "
            f"{base['qps']:.1f} | {base['p50_ms']:.2f} | {base['p99_ms']:.2f} | 0 |"
        )
        lines.append("")
        for workload, rows in result["server"].items():
            best = max(r["qps"] for r in rows)
            lines.append(f"Best server QPS on the {workload} workload / PyTorch eager QPS: {best / base['qps']:.2f}x.")
    unbatched = result.get("server_unbatched", {}).get("history")
    if unbatched:
        batched = next(r for r in result["server"]["history"] if r["concurrency"] == unbatched[0]["concurrency"])
        lines += ["", f"Dynamic batching gain on the history workload at concurrency {batched['concurrency']}: "
                      f"{batched['qps'] / unbatched[0]['qps']:.2f}x QPS."]
    return "\n".join(lines) + "\n"
