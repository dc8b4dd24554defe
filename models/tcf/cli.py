"""`llmrec train tcf` and `llmrec eval tcf`.

Schedules (a preset only changes the defaults the flags start from, so every flag given wins):
- `default`: the variant best on validation among those with a text tower
  (benchmarks/results/quality_tcf_ml100k.md): hybrid item tower (MiniLM text + ID, the ID part dropped
  for 70% of the items at each step, LayerNorm before the MLP), SASRec over the last 50 items, dropout 0.2, each user's whole history, in-batch softmax
  with logQ correction, at most 200 epochs with patience 30 (15 stopped two of three seeds on a plateau
  early, at epochs 32 and 45, and 30 raised the mean valid HR@10 over three seeds from 0.2485 to 0.2616,
  benchmarks/results/quality_tcf_ml100k_seeds.md): 6-15 minutes on one core.
- `short`: the README demo and the paper's preparation (each user's last S + 3 interactions, S = 20),
  at most 30 epochs, patience 5.
- `full`: the paper's preparation trained to convergence (at most 200 epochs, patience 10).

The LM of the
text tower stays frozen unless `--lm.unfreeze-top N` trains its top N blocks; `--lm.depth K` takes
the item features from block K of the LM instead of its last (see docs/training.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from common import assets, logs
from common.config import parse, to_dict
from common.errors import ConfigError
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.loaders import load_data
from models.data.splits import Split
from models.reports import dataset_title, explicit_command, invoking_command, report_file_name, write_report
from models.tcf import report
from models.tcf import text_encoder as te
from models.tcf.holdout import held_out_items, held_seen, hold_out
from models.tcf.model import ModelConfig, build_model, uses_text
from models.tcf.preinfer import preinfer
from models.tcf.train import RecipeConfig, TCFTask, prepared_split
from models.training.capacity import CapacityConfig
from models.training.config import DeviceConfig, RunConfig, TrainConfig
from models.training.devices import resolve_device
from models.training.loop import run, show_progress

log = logs.get(__name__)
SCHEDULES: dict[str, dict[str, Any]] = {
    "default": {"model": {"item_tower": "hybrid", "id_dropout": 0.7, "mlp_input_norm": True, "max_seq_len": 50,
                          "dropout": 0.2},
                "recipe": {"keep_last": 0, "loss": "ibce"}, "train": {"epochs": 200, "patience": 30}},
    "short": {"train": {"epochs": 30, "patience": 5}},
    "full": {"train": {"epochs": 200, "patience": 10}},
}


def _train_defaults() -> TrainConfig:
    """TCF's own starting point: AdamW with weight decay, a constant rate, clipped gradients."""
    return TrainConfig(epochs=30, patience=5, batch_size=64, weight_decay=0.1, lm_lr=5e-5, lm_weight_decay=0.01,
                       lr_schedule="constant", max_grad_norm=5.0)


@dataclass
class TrainCli(RunConfig):
    out: Path = field(default_factory=lambda: assets.work_dir() / "checkpoints" / "tcf")  # checkpoint folder
    schedule: Literal["default", "short", "full"] = "default"  # preset of the defaults below
    data: DataConfig = field(default_factory=lambda: DataConfig(min_user_interactions=5))  # as TCF's paper: min 5 per user
    model: ModelConfig = field(default_factory=ModelConfig)
    text: te.TextEncoderConfig = field(default_factory=te.TextEncoderConfig)
    lm: CapacityConfig = field(default_factory=CapacityConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    train: TrainConfig = field(default_factory=_train_defaults)


def _warn_long_histories(split: Split, window: int) -> None:
    """Training reads a long history whole (in windows), but scoring it (validation, eval, serving) reads
    only its last `window` items: said once, with how many users it concerns, rather than left to surprise."""
    longer = split.longer_than(window)
    if longer:
        log.warning("histories longer than the user tower's window: trained on whole, but scored (validation, eval, "
                    "serving) from their most recent items only (raise --model.max-seq-len to read more)", **longer)


def build_task(cli: TrainCli, data: InteractionData | None = None) -> TCFTask:
    """Data (prepared, split), pre-inferred item table and model, wired into the engine's task."""
    if cli.lm.lora_rank:
        raise ValueError("TCF's text tower trains its top blocks (--lm.unfreeze-top) on pre-inferred states; "
                         "LoRA (--lm.lora-rank) is for CLLM4Rec's backbone")
    torch.set_num_threads(cli.threads)
    torch.manual_seed(cli.train.seed)
    t0 = time.time()
    data = data if data is not None else load_data(cli.data)
    if uses_text(cli.model.item_tower) and data.items_without_text() == data.num_items:
        raise ConfigError(f"--model.item-tower {cli.model.item_tower} needs item text, but every item's text is its id: give an items "
                          "file (--data.items-path; see --help) or train the ID tower (--model.item-tower id)")
    prepared, split = prepared_split(data, cli.model.max_seq_len, cli.recipe.keep_last, cli.data.split_seed)
    _warn_long_histories(split, cli.model.max_seq_len)
    held = held_out_items(split, cli.recipe.holdout_items, cli.recipe.holdout_seed)
    watched = held_seen(split, held)
    split = hold_out(split, held)
    pre = lm = None
    if uses_text(cli.model.item_tower):
        folder = te.resolve_encoder_dir(cli.text.encoder)
        lm = te.load_lm(folder, cli.lm.depth) if cli.lm.unfreeze_top > 0 else None
        pre = preinfer(cli.text, cli.lm, data.item_text, batch_size=cli.recipe.preinfer_batch,
                       progress=show_progress(cli.train.progress), lm=lm)
    t_pre = time.time() - t0
    model = build_model(cli.model, cli.text, cli.lm.unfreeze_top, data.num_users, data.num_items, pre, lm)
    extra = {"schedule": cli.schedule, "data": to_dict(cli.data), "recipe": to_dict(cli.recipe),
             "prepared": prepared.summary(), "command": invoking_command(),
             # every field as an explicit flag: reruns what trained, whatever the presets say later
             "command_explicit": explicit_command("llmrec train tcf", cli), "preinfer_s": t_pre,
             "preinfer_cache_hit": None if pre is None else pre.from_cache,
             "holdout": {"share": cli.recipe.holdout_items, "seed": cli.recipe.holdout_seed, "items": held.tolist()}}
    return TCFTask(model, prepared, split, cli.text, cli.lm, cli.recipe, cli.train, extra, held, watched)


def train(cli: TrainCli, data: InteractionData | None = None) -> dict[str, Any]:
    """Trains (or resumes) one TCF model into `cli.out`; returns the training log."""
    task = build_task(cli, data)
    meta = {"model": "tcf", "schedule": cli.schedule, "lm": to_dict(cli.lm), "command": task.extra_config["command"],
            "preinfer_s": task.extra_config["preinfer_s"], "validation_users": task.extra_config["validation_users"],
            # a whole epoch's steps, for a run cut by --train.max-steps-per-epoch or a time budget to extrapolate from
            "steps_per_epoch": -(-task.units() // cli.train.batch_size)}
    return run(task, cli, cli.train, Path(cli.out), meta)


def train_main(argv: list[str]) -> int:
    logs.setup()
    cli = parse(TrainCli, argv, prog="llmrec train tcf", description=__doc__, presets=SCHEDULES)
    result = train(cli)
    print(json.dumps({k: result[k] for k in ("best", "stopped", "wall_s", "device", "precision")}, indent=2,
                     default=str))
    return 0


@dataclass
class EvalConfig(DeviceConfig):
    # one or more checkpoint folders: --checkpoint A --checkpoint B (one report section per split)
    checkpoint: Annotated[list[Path], tyro.conf.UseAppendAction] = field(default_factory=list)
    # display name per checkpoint; checkpoints sharing a name are seeds of one variant
    label: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    # label(s) of the row every other row of a section is compared with (paired, per user): in each
    # section the first of these present there; one per data preparation when their rows differ
    reference: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    rare_max: int = 20  # test items with at most this many training interactions form the "rare" column
    report: str = "quality_tcf_{data}"  # <results-dir>/<report>.json/.md, {data}: the data set's name; "" = print only
    baselines: bool = True  # most-popular, BPR, ALS, EASE on each section's split, tuned on its valid part
    serving_cost: bool = True  # time each checkpoint's exported user encoder (ONNX Runtime, batch 1)
    serving_length: int = 128  # history length of that timing (capped at the model's max_seq_len)
    results_dir: Path | None = None  # None: ./llmrec-results (the shipped MovieLens results: benchmarks/results)
    # a report's JSON: rerun its cheapest row with >= 2 seeds from its recorded command (into
    # work/verify/tcf) and check its test HR@10 is within --verify-sds seed SDs of the row's mean
    verify: Path | None = None
    verify_sds: float = 2.0


def verify_main(cfg: EvalConfig) -> int:
    """`--verify REPORT`: exit 0 when the rerun lands within the tolerance, 1 when it does not."""
    from models import verify

    def train_argv(argv: list[str]) -> Path:
        run_cfg = parse(TrainCli, argv, prog="llmrec train tcf", presets=SCHEDULES)
        train(run_cfg)
        return Path(run_cfg.out)

    def test_metric(folder: Path) -> float:
        c = report.checkpoint_run(folder, None, resolve_device(cfg.device), False, cfg.serving_length)
        return float(c.run.per_user["hr@10"].mean())

    assert cfg.verify is not None
    return verify.main(cfg.verify, "hr@10", assets.work_dir() / "verify" / "tcf", train_argv, test_metric,
                       cfg.verify_sds)


def eval_main(argv: list[str]) -> int:
    logs.setup()
    cfg = parse(EvalConfig, argv, prog="llmrec eval tcf", description="Evaluate TCF checkpoints (test split).")
    if cfg.verify is not None:
        return verify_main(cfg)
    if not cfg.checkpoint:
        raise ConfigError("give at least one --checkpoint DIR (a folder written by `llmrec train tcf`)")
    torch.set_num_threads(cfg.threads)
    payload, body = report.build(cfg.checkpoint, cfg.label, cfg.reference or ["ID-SASREC"], cfg.rare_max, cfg.baselines,
                                 resolve_device(cfg.device), cfg.serving_cost, cfg.serving_length)
    md = (f"# TCF on {dataset_title(payload['dataset'])}: variants and baselines (test part)\n\nEach section is one data preparation; "
          f"every row in it is trained and evaluated on exactly that split. The epoch (and the choice among "
          f"variants) is selected on validation HR@10; the test part is read once per final configuration. "
          f"Δ: mean over test users of (row - reference) with one standard error; rows with several seeds "
          f"show the mean over seeds (and their sd) and are compared through their per-user mean over seeds. "
          f"User encoder: median ms of the exported ONNX graph under ONNX Runtime, 1 thread, batch 1.\n\n"
          f"{body}\nReport command: `{invoking_command()}`\n")
    print(md)
    if cfg.report:
        path = write_report(report_file_name(cfg.report, payload["dataset"]), payload, md, cfg.results_dir)
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0
