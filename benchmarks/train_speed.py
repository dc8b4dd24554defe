"""`llmrec bench train-speed`: seconds per training epoch of each model through the training engine,
fp32 vs bf16 autocast, and CLLM4Rec's backbone at full depth vs fewer blocks, measured in one run.

CLLM4Rec epochs take tens of minutes on one CPU thread, so each variant runs the first `steps`
batches of a real epoch (the same batches for every variant: same seed, same examples) and the
per-step time is extrapolated to the epoch's step count; the report labels those rows as
extrapolated. TCF epochs are short and are timed whole. Validation is excluded (it is a scoring
pass, separate from training speed); a one-user validation runs only because the loop needs one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.assets import work_dir
from common.config import parse
from common.cpu import BF16_FLAGS, cpu_flags
from models.cllm4rec import cli as cllm_cli
from models.cllm4rec.backbone import BackboneConfig
from models.data.config import DataConfig
from models.tcf import cli as tcf_cli
from models.tcf.text_encoder import TextEncoderConfig
from models.training.capacity import CapacityConfig, blocks
from models.training.config import Precision
from models.training.devices import cpu_model

REPORTED_FLAGS = ("avx2", "avx512f", *sorted(BF16_FLAGS), "amx_tile", "amx_int8")


@dataclass
class TrainSpeedConfig:
    steps: int = 6  # CLLM4Rec: batches timed per variant (the epoch's first ones), extrapolated to the epoch
    depths: tuple[int, ...] = (0, 16, 12, 8)  # CLLM4Rec backbone blocks kept; 0 = all (SmolLM2: 30)
    precisions: tuple[Precision, ...] = ("fp32", "bf16")  # autocast settings compared
    tcf_unfreeze_top: tuple[int, ...] = (0, 1)  # TCF variants: frozen LM, and its top N blocks trained
    threads: int = 1  # torch threads (1: the figure per core, least disturbed by other work on the machine)
    data: DataConfig = field(default_factory=DataConfig)  # both models' data (default: MovieLens-100K)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # CLLM4Rec's LM (default: SmolLM2-135M)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # TCF's item LM (default: MiniLM)
    work: Path = field(default_factory=lambda: work_dir() / "bench-train-speed")  # scratch checkpoints


def _cllm4rec_row(cfg: TrainSpeedConfig, depth: int, precision: Precision) -> dict[str, Any]:
    base = parse(cllm_cli.TrainCli, ["--schedule", "rec-only"], presets=cllm_cli.SCHEDULES)
    run = dataclasses.replace(
        base, out=cfg.work / f"cllm4rec-d{depth}-{precision}", threads=cfg.threads, device="cpu",
        precision=precision, data=cfg.data, backbone=cfg.backbone, lm=CapacityConfig(depth=depth),
        recipe=dataclasses.replace(base.recipe, valid_users=1),
        train=dataclasses.replace(base.train, epochs=1, max_steps_per_epoch=cfg.steps, resume=False, progress=False))
    task = cllm_cli.build_task(run)
    examples = sum(1 for t in task.split.train if len(t))
    log = cllm_cli.run(task, run, run.train, run.out, {})
    seconds = log["epochs"][0]["seconds"]
    steps_per_epoch = math.ceil(examples / run.train.batch_size)
    measured = min(cfg.steps, steps_per_epoch)
    name = cfg.backbone.path.name if cfg.backbone.path else "SmolLM2-135M"
    return {"model": "cllm4rec", "variant": f"{name}, {len(blocks(task.model.backbone))} blocks",
            "blocks": len(blocks(task.model.backbone)), "precision": log["precision"],
            "batch_size": run.train.batch_size, "max_history": run.model.max_history,
            "steps_measured": measured, "seconds_measured": seconds, "seconds_per_step": seconds / measured,
            "steps_per_epoch": steps_per_epoch, "seconds_per_epoch": seconds / measured * steps_per_epoch,
            "extrapolated": measured < steps_per_epoch}


def _tcf_row(cfg: TrainSpeedConfig, unfreeze_top: int, precision: Precision) -> dict[str, Any]:
    base = parse(tcf_cli.TrainCli, ["--schedule", "short"], presets=tcf_cli.SCHEDULES)
    data = dataclasses.replace(cfg.data, min_user_interactions=max(cfg.data.min_user_interactions, 5))
    run = dataclasses.replace(
        base, out=cfg.work / f"tcf-n{unfreeze_top}-{precision}", threads=cfg.threads, device="cpu",
        precision=precision, data=data, text=cfg.text, lm=CapacityConfig(unfreeze_top=unfreeze_top),
        train=dataclasses.replace(base.train, epochs=1, resume=False, progress=False))
    t0 = time.perf_counter()
    task = tcf_cli.build_task(run)
    setup = time.perf_counter() - t0
    log = tcf_cli.run(task, run, run.train, run.out, {})
    seconds = log["epochs"][0]["seconds"]
    steps = len(task.epoch_batches(task.stages()[0], 0, np.random.default_rng(0)))
    lm = f"top {unfreeze_top} blocks trained" if unfreeze_top else "frozen"
    return {"model": "tcf", "variant": f"{Path(cfg.text.encoder).name} item tower ({lm}) + SASRec", "blocks": None, "precision": log["precision"], "batch_size": run.train.batch_size,
            "max_history": run.model.max_seq_len, "steps_measured": steps, "seconds_measured": seconds,
            "seconds_per_step": seconds / steps, "steps_per_epoch": steps, "seconds_per_epoch": seconds,
            "extrapolated": False, "setup_s": setup}  # load + pre-inference (a cache load after the first run)


def run_train_speed(cfg: TrainSpeedConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    rows = [_tcf_row(cfg, n, p) for n in cfg.tcf_unfreeze_top for p in cfg.precisions]
    rows += [_cllm4rec_row(cfg, d, p) for d in cfg.depths for p in cfg.precisions]
    flags = cpu_flags()
    return {"config": dataclasses.asdict(cfg), "rows": rows, "total_s": time.perf_counter() - t0,
            "cpu": {"model": cpu_model(), "flags": {f: f in flags for f in REPORTED_FLAGS}},
            "torch": torch.__version__, "threads": cfg.threads}


def markdown(result: dict[str, Any]) -> str:
    from models.reports import markdown_table

    fp32 = {(r["model"], r["variant"]): r["seconds_per_epoch"] for r in result["rows"] if r["precision"] == "fp32"}
    rows = [[r["model"], r["variant"], r["precision"], r["steps_measured"], r["seconds_per_step"],
             r["steps_per_epoch"], r["seconds_per_epoch"], "extrapolated" if r["extrapolated"] else "measured",
             fp32.get((r["model"], r["variant"]), float("nan")) / r["seconds_per_epoch"]] for r in result["rows"]]
    cpu = result["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    return (
        f"CPU: {cpu['model']} ({flags}); torch {result['torch']}, {result['threads']} thread(s); one run, "
        f"{result['total_s']:.0f} s in all. Training steps only (validation excluded). CLLM4Rec: the default "
        f"schedule's rec epoch (batch 20, histories of 128 items); its epoch times are extrapolated from the "
        f"first steps of the epoch, the same batches for every variant. TCF: whole epochs.\n\n"
        + markdown_table(["model", "variant", "precision", "steps timed", "s / step", "steps / epoch", "s / epoch",
                          "epoch time", "speed-up vs fp32"], rows, digits=3)
    )
