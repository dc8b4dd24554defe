"""`llmrec train cllm4rec` and `llmrec eval cllm4rec`.

Schedules (a preset only changes the defaults the flags start from, so every flag given wins;
`custom` uses the dataclass defaults and the flags alone):
- `default`: the quality run that fits 2 CPU cores (about an hour with `--threads 2`): stage B
  only - the rec head, plus the collaborative-LM loss on the same prompt (one forward pass trains
  both) - 12 epochs at most with a cosine learning rate, early stopping on validation, histories
  of 128 items, item rows starting from their titles.
- `short`: the README demo (one capped content epoch, one capped rec epoch, histories of 32
  items: a few minutes).
- `full`: the paper's two-stage method (1 content warm-up epoch, 2 collaborative/content rounds,
  then up to 20 rec epochs with mutual regularization): hours on CPU, meant for a GPU.

Every schedule keeps the paper's frozen, full-depth LM unless `--lm.*` says otherwise (LoRA,
unfrozen top blocks, fewer blocks: see docs/training.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llmrec import logs
from llmrec.assets import work_dir
from llmrec.config import parse, to_dict
from llmrec.errors import reading_checkpoint
from models.cllm4rec import backbone as bb
from models.cllm4rec.checkpoint import load_checkpoint
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.cllm4rec.tokens import IdTokenizer
from models.cllm4rec.train import SELECTION_METRICS, CLLM4RecTask, RecipeConfig
from models.data.config import DataConfig
from models.data.loaders import load_data
from models.data.splits import make_split
from models.metrics import PROTOCOL_METRICS, evaluate
from models.reports import dataset_title, invoking_command, markdown_table, report_file_name, write_report
from models.training.capacity import CapacityConfig
from models.training.config import DeviceConfig, RunConfig, TrainConfig
from models.training.devices import resolve_device
from models.training.loop import run
from models.training.state import read_log

PROTOCOL = "random_80_10_10"
DEFAULT_CHECKPOINT = work_dir() / "checkpoints" / "cllm4rec-ml100k"
SCHEDULES: dict[str, dict[str, Any]] = {
    "default": {
        "recipe": {"content_warmup_epochs": 0, "pretrain_rounds": 0, "rec_collab_weight": 1.0, "valid_users": 200},
        "model": {"max_history": 128},
        "train": {"epochs": 12, "patience": 3, "batch_size": 20},
    },
    "short": {
        "recipe": {"content_warmup_epochs": 1, "pretrain_rounds": 0, "valid_users": 200},
        "model": {"max_history": 32},
        "train": {"epochs": 1, "max_steps_per_epoch": 12},
    },
    "full": {
        "recipe": {"content_warmup_epochs": 1, "pretrain_rounds": 2},
        "model": {"max_history": 128},
        "train": {"epochs": 20, "patience": 3},
    },
    "custom": {},
}


@dataclass
class TrainCli(RunConfig):
    out: Path = DEFAULT_CHECKPOINT  # checkpoint folder (resumed from when it holds train/state.safetensors)
    schedule: Literal["default", "short", "full", "custom"] = "default"  # preset of the defaults below
    data: DataConfig = field(default_factory=DataConfig)
    backbone: bb.BackboneConfig = field(default_factory=bb.BackboneConfig)
    lm: CapacityConfig = field(default_factory=CapacityConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvalCli(DeviceConfig):
    checkpoint: Path = DEFAULT_CHECKPOINT  # checkpoint folder written by `llmrec train cllm4rec`
    backbone_path: Path | None = None  # if the backbone moved (its weights hash must still match)
    batch_size: int = 32  # prompts per forward pass
    baselines: bool = True  # put most-popular / ALS / BPR / EASE on the same split beside it
    tune_baselines: bool = True  # tune the baselines on the validation part first
    report_name: str = "quality_cllm4rec_{data}"  # <results-dir>/<name>.json/.md; {data}: the data set's name
    results_dir: Path | None = None  # None: ./llmrec-results (the shipped MovieLens results: benchmarks/results)
    note: str = ""  # free text for the report (e.g. how the training run ended)


def build_task(cli: TrainCli) -> CLLM4RecTask:
    """Data, split, backbone (with its capacity levers) and model, wired into the engine's task."""
    log = logs.get("cllm4rec.train")
    torch.set_num_threads(cli.threads)
    torch.manual_seed(cli.train.seed)
    data = load_data(cli.data)
    split = make_split(data, PROTOCOL, cli.data.split_seed)
    backbone, hf_tok = bb.load_backbone(cli.backbone, cli.lm)
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items)
    model = CLLM4Rec(cli.model, backbone, tok.vocab)
    if cli.recipe.item_init == "title":
        done = model.init_items_from_text([tok.words(" " + t) if t else [] for t in data.item_title])
        log.info("item rows initialised from titles", items=done, of=data.num_items)
    extra = {
        "recipe": to_dict(cli.recipe),
        "schedule": cli.schedule,
        "data": to_dict(cli.data),
        "split": {"protocol": PROTOCOL, "seed": cli.data.split_seed, **split.counts()},
        "command": invoking_command(),
    }
    return CLLM4RecTask(model, tok, Template.build(tok), data, split, cli.recipe, cli.train,
                        bb.reference(cli.backbone), cli.lm, extra)


def train(cli: TrainCli) -> dict[str, Any]:
    """Trains (or resumes) one CLLM4Rec model into `cli.out`; returns the training log."""
    task = build_task(cli)
    logs.get("cllm4rec.train").info("training", schedule=cli.schedule, out=str(cli.out), **task.data.summary())
    meta = {"model": "cllm4rec", "schedule": cli.schedule, "lm": to_dict(cli.lm),
            "command": task.extra_config["command"]}
    return run(task, cli, cli.train, Path(cli.out), meta)


def train_main(argv: list[str]) -> int:
    logs.setup()
    cli = parse(TrainCli, argv, prog="llmrec train cllm4rec", description=__doc__, presets=SCHEDULES)
    result = train(cli)
    logs.get("cllm4rec.train").info("done", out=str(cli.out), wall_s=result["wall_s"], best=result["best"],
                                    stopped=result["stopped"])
    return 0


def _baseline_rows(baselines: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> list[list[Any]]:
    return [[name, *(res[m] for m in metrics)] for name, res in baselines.items()]


def _epochs_md(entries: list[dict[str, Any]]) -> str:
    rows = [[e["stage"], e["epoch"], e["task"], e["loss"], *(e["valid"][m] for m in SELECTION_METRICS)] if "valid" in e
            else [e["stage"], e["epoch"], e["task"], e["loss"], "", "", ""] for e in entries]
    if not rows:
        return ""
    header = ["stage", "epoch", "task", "train loss", *(f"valid {m}" for m in SELECTION_METRICS)]
    return "\n## Training log (validation subset)\n\n" + markdown_table(header, rows)


def eval_main(argv: list[str]) -> int:
    logs.setup()
    log = logs.get("cllm4rec.eval")
    cli = parse(EvalCli, argv, prog="llmrec eval cllm4rec", description="test metrics of a CLLM4Rec checkpoint")
    torch.set_num_threads(cli.threads)
    with reading_checkpoint(cli.checkpoint, "llmrec train cllm4rec"):
        loaded = load_checkpoint(cli.checkpoint, cli.backbone_path)
    loaded.model.to(resolve_device(cli.device))
    cfg = loaded.config
    train_log = read_log(cli.checkpoint)
    data, split = loaded.training_data()
    metrics = PROTOCOL_METRICS[split.protocol]
    prompts = PromptBuilder(loaded.template, loaded.tokenizer.vocab, loaded.max_history, loaded.tokenizer.pad_token_id)
    scorer = RecScorer(loaded.model, prompts, History.build(data), cli.batch_size)
    t0 = time.time()
    users = split.eval_users("test")
    seen = split.seen("test")
    users = users[np.argsort([len(seen[u]) for u in users], kind="stable")]
    test = evaluate(scorer, split, "test", metrics, batch_size=64, users=users, progress=True)
    eval_s = time.time() - t0
    log.info("test", **{k: round(v, 4) for k, v in test.items()})
    baselines: dict[str, dict[str, float]] = {}
    if cli.baselines:
        from models.baselines import run_baselines

        baselines = run_baselines(data, split, tune=cli.tune_baselines)
    payload = {
        "model": "cllm4rec",
        "dataset": data.name,
        "protocol": split.protocol,
        "split_seed": split.seed,
        "split": split.counts(),
        "test": test,
        "baselines_test": baselines,
        "wall_time_s": {**train_log.get("wall_s", {}), "test_eval": eval_s},
        "schedule": cfg.get("schedule"),
        "train_config": train_log.get("train"),
        "recipe": cfg.get("recipe"),
        "model_config": cfg["model"],
        "backbone": cfg["backbone"],
        "lm": cfg["lm"],
        "trained_on": {k: train_log.get(k) for k in ("device", "precision", "world_size", "stopped")},
        "training_log": train_log.get("epochs", []),
        "train_command": cfg.get("command"),
        "checkpoint": str(cli.checkpoint),
        "note": cli.note,
    }
    rows = [["cllm4rec", *(test[m] for m in metrics)], *_baseline_rows(baselines, metrics)]
    walls = payload["wall_time_s"]
    md = (
        f"# CLLM4Rec on {dataset_title(data.name)} ({split.protocol}, split seed {split.seed}, test part)\n\n"
        + markdown_table(["model", *metrics], rows)
        + f"\nSchedule `{cfg.get('schedule')}`; wall time (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        + f"\n\nTrain command: `{cfg.get('command')}`\n\nEval command: `{invoking_command()}`\n"
        + _epochs_md(payload["training_log"])
        + (f"\n{cli.note}\n" if cli.note else "")
    )
    path = write_report(report_file_name(cli.report_name, data.name), payload, md, cli.results_dir)
    print(md)
    log.info("report", path=str(path))
    return 0
