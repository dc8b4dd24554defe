"""`llmrec train cllm4rec` and `llmrec eval cllm4rec`.

Schedules (a preset only fills the TrainConfig fields left at their defaults, so explicit
`--train.*` flags always win; `custom` uses the flags alone):
- `default`: the quality run that fits 2 CPU cores (about an hour with `--backbone.threads 2`):
  stage B only - the rec head, plus the collaborative-LM loss on the same prompt (one forward pass
  trains both) - 12 epochs at most with a cosine learning rate, early stopping on validation,
  histories of 128 items, item rows starting from their titles.
- `short`: the README demo (one capped content epoch, one capped rec epoch, histories of 32
  items: a few minutes).
- `full`: the paper's two-stage method (1 content warm-up epoch, 2 collaborative/content rounds,
  then up to 20 rec epochs with mutual regularization): hours on CPU, meant for a GPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrec import logs
from llmrec.assets import work_dir
from llmrec.config import parse, to_dict
from models.cllm4rec import backbone as bb
from models.cllm4rec.checkpoint import load_checkpoint
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.cllm4rec.tokens import IdTokenizer
from models.cllm4rec.train import TrainConfig, Trainer
from models.data.config import DataConfig
from models.data.loaders import load_data
from models.data.splits import make_split
from models.distributed import init_distributed
from models.metrics import PROTOCOL_METRICS, evaluate
from models.reports import invoking_command, markdown_table, write_report

PROTOCOL = "random_80_10_10"
DEFAULT_CHECKPOINT = work_dir() / "checkpoints" / "cllm4rec-ml100k"
SCHEDULES: dict[str, dict[str, Any]] = {
    "default": {
        "content_warmup_epochs": 0,
        "pretrain_rounds": 0,
        "finetune_epochs": 12,
        "patience": 3,
        "max_history": 128,
        "batch_size": 20,
        "rec_collab_weight": 1.0,
        "valid_users": 200,
    },
    "short": {
        "content_warmup_epochs": 1,
        "pretrain_rounds": 0,
        "finetune_epochs": 1,
        "max_steps_per_epoch": 12,
        "max_history": 32,
        "valid_users": 200,
    },
    "full": {"content_warmup_epochs": 1, "pretrain_rounds": 2, "finetune_epochs": 20, "patience": 3, "max_history": 128},
    "custom": {},
}


@dataclass
class ModelOptions:
    init_std: float = 0.02
    mutual_reg: float = 1.0
    learn_scale: bool = True
    item_bias: bool = True  # a learned per-item bias on the rec head (served as one more vector dimension)


@dataclass
class TrainCli:
    out: Path = DEFAULT_CHECKPOINT  # checkpoint folder (resumed from when it holds train_state.pt)
    schedule: Literal["default", "short", "full", "custom"] = "default"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: bb.BackboneConfig = field(default_factory=bb.BackboneConfig)
    model: ModelOptions = field(default_factory=ModelOptions)
    # "title": item rows start at the mean vocabulary embedding of the item's title (items without
    # one stay random); "random": N(0, init_std^2) everywhere, as in the paper.
    item_init: Literal["title", "random"] = "title"
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvalCli:
    checkpoint: Path = DEFAULT_CHECKPOINT
    backbone_path: Path | None = None  # if the backbone moved (its weights hash must still match)
    threads: int = 1
    batch_size: int = 32
    baselines: bool = True  # put most-popular / ALS / BPR / EASE on the same split beside it
    tune_baselines: bool = True
    report_name: str = "quality_cllm4rec_ml100k"
    results_dir: Path | None = None  # None: benchmarks/results/
    note: str = ""  # free text for the report (e.g. how the training run ended)


def apply_schedule(cfg: TrainConfig, schedule: str) -> TrainConfig:
    defaults = TrainConfig()
    preset = SCHEDULES[schedule]
    changes = {k: v for k, v in preset.items() if getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **changes)


def train_main(argv: list[str]) -> int:
    logs.setup()
    log = logs.get("cllm4rec.train")
    cli = parse(TrainCli, argv, prog="llmrec train cllm4rec", description=__doc__)
    tcfg = apply_schedule(cli.train, cli.schedule)
    dinfo = init_distributed()
    data = load_data(cli.data)
    split = make_split(data, PROTOCOL, cli.data.split_seed)
    backbone, hf_tok = bb.load_backbone(cli.backbone)
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items)
    mcfg = ModelConfig(
        num_users=data.num_users, num_items=data.num_items, vocab_size=tok.vocab.vocab_size,
        hidden_size=backbone.get_input_embeddings().weight.shape[1], **dataclasses.asdict(cli.model),
    )
    import torch

    torch.manual_seed(tcfg.seed)
    model = CLLM4Rec(mcfg, backbone)
    if cli.item_init == "title":
        done = model.init_items_from_text([tok.words(" " + t) if t else [] for t in data.item_title])
        log.info("item rows initialised from titles", items=done, of=data.num_items)
    extra = {
        "train": to_dict(tcfg),
        "item_init": cli.item_init,
        "schedule": cli.schedule,
        "data": to_dict(cli.data),
        "split": {"protocol": PROTOCOL, "seed": cli.data.split_seed, **split.counts()},
        "command": invoking_command(),
    }
    log.info("training", schedule=cli.schedule, out=str(cli.out), rank=dinfo.rank, world=dinfo.world, **data.summary())
    trainer = Trainer(model, tok, Template.build(tok), data, split, tcfg, Path(cli.out), bb.reference(cli.backbone),
                      extra, dinfo)
    state = trainer.fit()
    log.info("done", out=str(cli.out), wall_s=state["wall_s"], best_valid_score=state["best_score"])
    return 0


def _baseline_rows(baselines: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> list[list[Any]]:
    return [[name, *(res[m] for m in metrics)] for name, res in baselines.items()]


def _epochs_md(entries: list[dict[str, Any]]) -> str:
    rows = [[e["stage"], e["epoch"], e.get("task", "rec"), e["loss"],
             *(e["valid"][m] for m in ("recall@20", "recall@40", "ndcg@100"))] if "valid" in e
            else [e["stage"], e["epoch"], e.get("task", ""), e["loss"], "", "", ""]
            for e in entries if "stage" in e]
    if not rows:
        return ""
    header = ["stage", "epoch", "task", "train loss", "valid recall@20", "valid recall@40", "valid ndcg@100"]
    return "\n## Training log (validation subset)\n\n" + markdown_table(header, rows)


def eval_main(argv: list[str]) -> int:
    logs.setup()
    log = logs.get("cllm4rec.eval")
    cli = parse(EvalCli, argv, prog="llmrec eval cllm4rec", description="test metrics of a CLLM4Rec checkpoint")
    loaded = load_checkpoint(cli.checkpoint, cli.backbone_path, cli.threads)
    cfg = loaded.config
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
        "wall_time_s": {**cfg.get("wall_time_s", {}), "test_eval": eval_s},
        "schedule": cfg.get("schedule"),
        "train_config": cfg.get("train"),
        "model_config": cfg["model"],
        "backbone": cfg["backbone"],
        "training_log": cfg.get("training_log", []),
        "train_command": cfg.get("command"),
        "checkpoint": str(cli.checkpoint),
        "note": cli.note,
    }
    rows = [["cllm4rec", *(test[m] for m in metrics)], *_baseline_rows(baselines, metrics)]
    walls = payload["wall_time_s"]
    md = (
        f"# CLLM4Rec on {data.name} ({split.protocol}, split seed {split.seed}, test part)\n\n"
        + markdown_table(["model", *metrics], rows)
        + f"\nSchedule `{cfg.get('schedule')}`; wall time (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        + f"\n\nTrain command: `{cfg.get('command')}`\n\nEval command: `{invoking_command()}`\n"
        + _epochs_md(cfg.get("training_log", []))
        + (f"\n{cli.note}\n" if cli.note else "")
    )
    path = write_report(cli.report_name, payload, md, cli.results_dir)
    print(md)
    log.info("report", path=str(path))
    return 0
