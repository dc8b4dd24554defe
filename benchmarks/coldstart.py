"""New items served live: a version exported without some items gets them through UpsertItems by their
text alone, then next-item requests whose target is one of them are replayed over gRPC. The hit rate
over gRPC must equal the offline figure for the same version exactly: offline runs the server's own
code in process (same engine, same index, the same one-item-per-call encoding), so the two can only
differ if the serving path (journal, catalogue, search) loses or changes something.

Also measures each upsert's latency (text -> searchable: encode + fsynced journal append + apply).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client import RecommenderClient
from repository.files import JOURNAL
from repository.journal import JournalRecord, effective
from repository.versions import list_versions
from server.spawn import spawn_server, stop_server

TOKEN = "coldstart-bench"


@dataclass(frozen=True)
class ColdRequest:
    history: tuple[str, ...]  # item ids, oldest first (the user's known past)
    target: str  # the next item: one of the new items


def offline_hits(version: Path, new_items: Sequence[tuple[str, str, str]], requests: Sequence[ColdRequest],
                 k: int, engine: str = "onnxruntime-cpu") -> list[bool]:
    """Top-k hits of each request, computed by the server's own code in this process."""
    from repository.reader import load_files
    from server.config import ServeConfig
    from server.model_version import ModelVersion

    mv = ModelVersion.load(version.parent.name, load_files(version), ServeConfig.flat(repository=version.parent.parent,
                                                                            engine=engine))
    try:
        for seq, (item_id, text, title) in enumerate(new_items, start=1):  # one per call, as the replay does
            mv.apply_journal(list(effective([JournalRecord(seq, "upsert", item_id, text, title)]).values()), seq)
        cat = mv.catalogue
        hits = []
        for r in requests:
            rows = [cat.row(i) for i in r.history]
            vec = mv.history_encoder.run([mv.history_payload(None, rows, cat)])[0]
            top = cat.search(vec, k, set(rows))
            hits.append(r.target in {cat.item_id(row) for row, _ in top})
        return hits
    finally:
        mv.retire()


def served_hits(repository: Path, model: str, new_items: Sequence[tuple[str, str, str]],
                requests: Sequence[ColdRequest], k: int, engine: str = "onnxruntime-cpu",
                ) -> tuple[list[bool], list[float]]:
    """The same over gRPC against a fresh server on a copy of the repository; also upsert latencies (ms)."""
    scratch = repository.parent / f"{repository.name}-coldstart"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(repository / model, scratch / model, ignore=shutil.ignore_patterns(JOURNAL))
    proc, target = spawn_server(scratch, ["--metrics-port", "-1", "--poll-seconds", "0", "--engine", engine],
                                env={"RECSYS_ADMIN_TOKEN": TOKEN})
    try:
        with RecommenderClient(target, admin_token=TOKEN, timeout=60) as c:
            latencies = []
            for item in new_items:
                t0 = time.perf_counter()
                c.upsert_items(model, [item])
                latencies.append((time.perf_counter() - t0) * 1000.0)
            hits = [r.target in {i for i, _ in c.recommend(model, history=list(r.history), top_k=k).items}
                    for r in requests]
    finally:
        stop_server(proc)
        shutil.rmtree(scratch, ignore_errors=True)
    return hits, latencies


def replay(repository: Path, model: str, new_items: Sequence[tuple[str, str, str]],
           requests: Sequence[ColdRequest], k: int = 10, engine: str = "onnxruntime-cpu") -> dict[str, Any]:
    versions = list_versions(repository / model)
    version = repository / model / str(versions[-1])
    offline = offline_hits(version, new_items, requests, k, engine)
    served, latencies = served_hits(repository, model, new_items, requests, k, engine)
    lat = np.asarray(latencies)
    return {"version": versions[-1], "k": k, "new_items": len(new_items), "requests": len(requests),
            f"offline_hr@{k}": float(np.mean(offline)) if offline else float("nan"),
            f"grpc_hr@{k}": float(np.mean(served)) if served else float("nan"),
            "identical_rankings": offline == served,
            "upsert_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                          "n": len(lat)} if len(lat) else {}}


@dataclass
class ColdStartConfig:
    checkpoint: Path  # a TCF checkpoint trained with --recipe.holdout-items (text or hybrid item tower)
    work: Path = Path("work/bench-coldstart")  # scratch model repository (rewritten)
    k: int = 10
    engine: str = "onnxruntime-cpu"  # the engine both the offline and the gRPC path run
    max_requests: int = 0  # 0: every test user whose last item is a held-out one


def from_checkpoint(cfg: ColdStartConfig) -> dict[str, Any]:
    """Exports the checkpoint without its held-out items, replays them (UpsertItems by text, then the
    test users whose next item is one of them) and sets the PyTorch cold-start figure of the same
    users beside the served one."""
    from export.cli import export_bundle
    from models.metrics import evaluate_per_user
    from models.tcf.bundle import load_bundle
    from models.tcf.checkpoint import load_checkpoint
    from models.tcf.holdout import cold_targets, held_out_of
    from models.tcf.model import uses_text
    from models.tcf.train import make_scorer

    ck = load_checkpoint(cfg.checkpoint)
    held = held_out_of(ck.config)
    if not len(held) or not uses_text(ck.model.cfg.item_tower):
        raise ValueError(f"{cfg.checkpoint}: needs a text or hybrid TCF checkpoint trained with "
                         "--recipe.holdout-items (an ID tower cannot add items by text)")
    split = ck.split
    users = split.eval_users("test")[cold_targets(split, held)]
    if cfg.max_requests:
        users = users[: cfg.max_requests]
    _, per_user = evaluate_per_user(make_scorer(ck.model, held), split, "test", (f"hr@{cfg.k}",), users=users)
    ids = ck.items.ids
    seen = split.seen("test")
    requests = [ColdRequest(tuple(ids[r] for r in seen[u]), ids[int(split.test[u][0])]) for u in users]
    new_items = [(ids[r], ck.item_texts[r], ck.item_titles[r]) for r in held]
    shutil.rmtree(cfg.work, ignore_errors=True)
    name = "coldstart"
    export_bundle(load_bundle(cfg.checkpoint), cfg.work, name)
    result = replay(cfg.work, name, new_items, requests, cfg.k, cfg.engine)
    return {**result, "checkpoint": str(cfg.checkpoint), "item_tower": ck.model.cfg.item_tower,
            "engine": cfg.engine, f"pytorch_hr@{cfg.k}": float(per_user[f"hr@{cfg.k}"].mean()),
            "held_out_items": len(held)}


def markdown(r: dict[str, Any]) -> str:
    k = r["k"]
    up = r["upsert_ms"]
    return (f"Checkpoint `{r['checkpoint']}` ({r['item_tower']} item tower), exported without its {r['held_out_items']} "
            f"held-out items; each added back by UpsertItems (one item per call, its text only), then "
            f"{r['requests']} test users whose next item is one of them asked over gRPC (history request, "
            f"top-{k}).\n\n"
            f"| path | HR@{k} on new items |\n|---|---|\n"
            f"| PyTorch eager, offline (llmrec eval tcf's cold-start figure) | {r[f'pytorch_hr@{k}']:.4f} |\n"
            f"| server code in process ({r['engine']}) | {r[f'offline_hr@{k}']:.4f} |\n"
            f"| over gRPC | {r[f'grpc_hr@{k}']:.4f} |\n\n"
            f"Rankings over gRPC identical to the in-process ones: {'yes' if r['identical_rankings'] else 'NO'}.\n"
            f"Upsert latency (text -> searchable, {up['n']} calls): p50 {up['p50']:.1f} ms, p99 {up['p99']:.1f} ms.\n")
