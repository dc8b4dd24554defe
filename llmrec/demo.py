"""`llmrec demo`, the README's main job on the embedded default data and models:

MovieLens-100K -> baselines -> CLLM4Rec (SmolLM2-135M) and TCF (MiniLM item tower + SASRec), short
schedules -> export both into a model repository -> `llmrec serve` as a child process -> real
gRPC answers for a known user, a history, a new item added by text, and a bad request.

Checkpoints already trained by an earlier demo run are reused unless --retrain is given.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from common import logs
from common.assets import work_dir
from common.config import parse
from llmrec.cli import main as cli
from repository.manifest import read_manifest
from repository.versions import list_versions

CLLM_MODEL = "ml100k-cllm4rec"
TCF_MODEL = "ml100k-tcf"
STAR_WARS_FANS = ["50", "172", "181", "174", "173"]  # Star Wars, Empire, Jedi, Raiders, Princess Bride


@dataclass
class DemoConfig:
    work: Path = work_dir() / "demo"  # checkpoints, model repository and reports of the demo
    retrain: bool = False  # train again even when the demo's checkpoints exist
    fresh_repository: bool = True  # start from an empty model repository (versions restart at 1)
    # evaluate the baselines into <work>/results/ (never over the shipped benchmarks/results/: figures
    # differ between CPUs)
    baselines: bool = True
    threads: int = 2  # torch threads for training (2 on a quiet 2-core machine; 1 when it is shared)
    user: str = "196"  # the known user shown
    top_k: int = 10


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _run(argv: list[str]) -> None:
    print("$ llmrec " + " ".join(argv), flush=True)
    code = cli(argv)
    if code != 0:
        raise SystemExit(f"demo: `llmrec {' '.join(argv)}` failed with exit code {code}")


def _current_checkpoint(ckpt: Path) -> bool:
    """A complete checkpoint in the format this version reads (an older demo's is retrained)."""
    from models.training.checkpoint import FORMAT_VERSION

    cfg = ckpt / "config.json"
    return (ckpt / "weights.safetensors").is_file() and cfg.is_file() and \
        json.loads(cfg.read_text()).get("format_version") == FORMAT_VERSION


def _train(name: str, ckpt: Path, argv: list[str], retrain: bool) -> None:
    if _current_checkpoint(ckpt) and not retrain:
        print(f"reusing {ckpt} (pass --retrain to train again)")
        return
    if ckpt.exists():
        shutil.rmtree(ckpt)
    t0 = time.perf_counter()
    _run(argv)
    print(f"{name} trained in {time.perf_counter() - t0:.0f} s")


def _show(title: str, rec) -> None:
    print(f"\n{title}  -> answered by {rec.model} v{rec.version}")
    for rank, ((item, score), name) in enumerate(zip(rec.items, rec.titles, strict=True), start=1):
        print(f"  {rank:>2}. item {item:>5}  score {score:8.3f}  {name}")


def _top(rec, k: int):
    return replace(rec, items=rec.items[:k], titles=rec.titles[:k])


def _ask(target: str, token: str, cfg: DemoConfig) -> None:
    from client import RecommenderClient

    with RecommenderClient(target, admin_token=token) as client:
        for m in client.list_models().models:
            v = m.versions[0]
            print(f"model {m.name}: version {m.default_version}, {v.kind}/{v.user_tower}/{v.item_tower}, "
                  f"dim {v.dim}, {v.num_items} items, {v.num_users} users, index {v.index_type}")
        for model in (CLLM_MODEL, TCF_MODEL):
            _show(f"[{model}] known user {cfg.user}, seen items excluded",
                  client.recommend(model, user_id=cfg.user, top_k=cfg.top_k))
            _show(f"[{model}] anonymous history {STAR_WARS_FANS}",
                  client.recommend(model, history=STAR_WARS_FANS, top_k=cfg.top_k))
        new_item = ("new-1", "Star Wars: The Force Awakens (2015), genres: Action, Adventure, Sci-Fi",
                    "Star Wars: The Force Awakens")
        up = client.upsert_items(TCF_MODEL, [new_item])
        print(f"\nUpsertItems into {TCF_MODEL}: added {up.added}, catalogue now {up.num_items} items")
        after = client.recommend(TCF_MODEL, history=STAR_WARS_FANS, top_k=100)
        _show(f"[{TCF_MODEL}] same history, after adding a new item by its text", _top(after, cfg.top_k))
        ids = [item for item, _ in after.items]
        where = f"ranked #{ids.index(new_item[0]) + 1} of {up.num_items}" if new_item[0] in ids else \
            f"not in the top 100 of {up.num_items}"
        print(f"new item {new_item[0]} ({new_item[2]}), known to the model only by its text: {where}")
        try:
            client.upsert_items(CLLM_MODEL, [new_item])
        except grpc.RpcError as exc:
            print(f"\nUpsertItems into {CLLM_MODEL} -> {exc.code().name}: {exc.details()}")
        try:
            client.recommend(TCF_MODEL, user_id="no-such-user", top_k=cfg.top_k)
        except grpc.RpcError as exc:
            print(f"Recommend for an unknown user without history -> {exc.code().name}: {exc.details()}")
        try:
            client.recommend(TCF_MODEL, user_id=cfg.user, top_k=0)
        except grpc.RpcError as exc:
            print(f"Recommend with top_k=0 -> {exc.code().name}: {exc.details()}")


def main(argv: list[str]) -> int:
    cfg = parse(DemoConfig, argv, prog="llmrec demo", description=__doc__)
    logs.setup()
    t_start = time.perf_counter()
    ckpts = cfg.work / "checkpoints"
    repository = cfg.work / "model-repository"
    threads = str(cfg.threads)

    if cfg.baselines:
        _step("1/5 MovieLens-100K: splits and baselines (most-popular, BPR, ALS, EASE)")
        _run(["eval", "baselines", "--results-dir", str(cfg.work / "results")])

    _step("2/5 CLLM4Rec on SmolLM2-135M (short schedule)")
    cllm = ckpts / "cllm4rec"
    _train("CLLM4Rec", cllm, ["train", "cllm4rec", "--schedule", "short", "--out", str(cllm),
                              "--threads", threads], cfg.retrain)

    _step("3/5 TCF: MiniLM text item tower + SASRec user tower (short schedule)")
    tcf = ckpts / "tcf"
    _train("TCF", tcf, ["train", "tcf", "--schedule", "short", "--model.user-tower", "sasrec",
                        "--model.item-tower", "text", "--out", str(tcf), "--threads", threads], cfg.retrain)

    _step("4/5 Export both into a model repository (ONNX + FAISS, parity-checked)")
    if cfg.fresh_repository and repository.exists():
        shutil.rmtree(repository)
    for name, ckpt in ((CLLM_MODEL, cllm), (TCF_MODEL, tcf)):
        _run(["export", "--checkpoint", str(ckpt), "--repository", str(repository), "--name", name,
              "--no-report", "--threads", threads])
        version = repository / name / str(list_versions(repository / name)[-1])
        print(f"{name}: {version} parity {json.dumps(read_manifest(version).parity)[:300]}")

    _step("5/5 Serve over gRPC and ask")
    from server.spawn import spawn_server, stop_server

    token = secrets.token_hex(16)
    log_path = cfg.work / "server.log"
    proc, target = spawn_server(repository, ["--metrics-port", "0", "--poll-seconds", "0"], log_path=log_path,
                                env={"RECSYS_ADMIN_TOKEN": token})
    print(f"server {target} is SERVING (log: {log_path})")
    try:
        _ask(target, token, cfg)
    finally:
        code = stop_server(proc)
        print(f"\nserver stopped with SIGTERM, exit code {code}")
    print(f"demo done in {time.perf_counter() - t_start:.0f} s")
    return 0
