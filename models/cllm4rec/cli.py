"""`llmrec train cllm4rec` and `llmrec eval cllm4rec`.

Schedules (a preset only changes the defaults the flags start from, so every flag given wins;
`custom` uses the dataclass defaults and the flags alone):
- `default`: the variant best on validation among those that train in about an hour on 2 CPU cores
  (benchmarks/results/quality_cllm4rec_ml100k.md): the rec head (stage B, as `rec-only`) on the first 8
  of the LM's blocks with LoRA r16 adapters on q and v, the user vector the mean hidden state over the
  prompt instead of the last token's (`--model.pooling mean`), an output row per item
  (`--model.no-tie-items`), learning rate 5e-3 on a cosine over 30 epochs, no early stop (the best
  epoch on validation is kept); about 40 minutes on one core of an AMX CPU (bf16). Not the paper's
  setting: `full` is.
- `rec-only`: stage B only - the rec head, plus the collaborative-LM loss on the same prompt (one
  forward pass trains both) - 12 epochs at most, histories of 128 items, on the whole frozen LM
  (about an hour with `--threads 2`).
- `short`: the README demo (one capped content epoch, one capped rec epoch, histories of 32
  items: a few minutes).
- `full`: the paper's two-stage method (1 content warm-up epoch, 2 collaborative/content rounds,
  then up to 20 rec epochs with mutual regularization) on the whole frozen LM: the paper-faithful run.

Every schedule but `default` keeps the paper's frozen, full-depth LM unless `--lm.*` says otherwise
(LoRA, unfrozen top blocks, fewer blocks: see docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from common import logs
from common.assets import work_dir
from common.config import parse, to_dict
from models.cllm4rec import backbone as bb
from models.cllm4rec import report
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template
from models.cllm4rec.tokens import IdTokenizer
from models.cllm4rec.train import CLLM4RecTask, RecipeConfig, at_scale, with_content_table
from models.data.config import DataConfig
from models.data.loaders import load_data
from models.data.splits import Split, make_split
from models.reports import dataset_title, explicit_command, invoking_command, report_file_name, write_report
from models.training import checkpoint as ckpt
from models.training.capacity import CapacityConfig
from models.training.config import DeviceConfig, RunConfig, TrainConfig
from models.training.devices import resolve_device
from models.training.loop import run

log = logs.get("cllm4rec.train")

PROTOCOL = "random_80_10_10"
DEFAULT_CHECKPOINT = work_dir() / "checkpoints" / "cllm4rec-ml100k"
SCHEDULES: dict[str, dict[str, Any]] = {
    "default": {
        "recipe": {"content_warmup_epochs": 0, "pretrain_rounds": 0, "rec_collab_weight": 1.0, "valid_users": 200},
        "model": {"max_history": 128, "pooling": "mean", "tie_items": False},
        "lm": {"depth": 8, "lora_rank": 16},
        "train": {"epochs": 30, "patience": 30, "batch_size": 20, "lr": 5e-3, "lm_lr": 2e-4},
    },
    "rec-only": {
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
    schedule: Literal["default", "rec-only", "short", "full", "custom"] = "default"  # preset of the defaults below
    data: DataConfig = field(default_factory=DataConfig)
    backbone: bb.BackboneConfig = field(default_factory=bb.BackboneConfig)
    lm: CapacityConfig = field(default_factory=CapacityConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvalCli(DeviceConfig):
    # checkpoint folders written by `llmrec train cllm4rec`, on one split: --checkpoint A --checkpoint B
    # (none given: the default training folder)
    checkpoint: Annotated[list[Path], tyro.conf.UseAppendAction] = field(default_factory=list)
    # display name per checkpoint; checkpoints sharing a name are seeds of one variant
    label: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    reference: str = "ease"  # the row every other row is compared with, per user (paired differences)
    batch_size: int = 32  # prompts per forward pass
    baselines: bool = True  # most-popular / BPR / ALS / EASE on the same split, tuned on its valid part
    serving_cost: bool = True  # time each checkpoint's exported user encoder (ONNX Runtime, batch 1)
    serving_length: int = 128  # prompt tokens of that timing
    report_name: str = "quality_cllm4rec_{data}"  # <results-dir>/<name>.json/.md; {data}: the data set's name
    results_dir: Path | None = None  # None: ./llmrec-results (the shipped MovieLens results: benchmarks/results)
    note: str = ""  # free text for the report (e.g. how the training runs ended)
    # a report's JSON: rerun its cheapest row with >= 2 seeds from its recorded command (into
    # work/verify/cllm4rec) and check its test Recall@20 is within --verify-sds seed SDs of the row's mean
    verify: Path | None = None
    verify_sds: float = 2.0


def _warn_long_histories(split: Split, window: int) -> None:
    """A prompt holds a user's most recent `window` items in training, validation, eval and serving alike;
    older ones are never read. Said once, with how many users it concerns, rather than left to surprise."""
    longer = split.longer_than(window)
    if longer:
        log.warning(
            "histories longer than the prompt window: every prompt (training, validation, eval, serving) holds "
            "the most recent items only (raise --model.max-history to read more, at a longer prompt's cost)",
            **longer)


def build_task(cli: TrainCli) -> CLLM4RecTask:
    """Data, split, backbone (with its capacity levers) and model, wired into the engine's task."""
    torch.set_num_threads(cli.threads)
    torch.manual_seed(cli.train.seed)
    data = load_data(cli.data)
    split = make_split(data, PROTOCOL, cli.data.split_seed)
    _warn_long_histories(split, cli.model.max_history)
    id_rows = data.num_items + (data.num_users if cli.model.user_tokens else 0)
    recipe, switched = at_scale(cli.recipe, id_rows, data.num_items)
    if switched:
        log.info("step-cost levers on for this size (--recipe.sparse-ids-from-rows / --recipe.sampled-items-from "
                 "0 keep the dense tables and the full softmax)", id_rows=id_rows, items=data.num_items, **switched)
        cli = replace(cli, recipe=recipe)  # recorded as it trains, in the config and the command
    backbone, hf_tok = bb.load_backbone(cli.backbone, cli.lm)
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items, cli.model.user_tokens)
    model = CLLM4Rec(with_content_table(cli.model, cli.recipe), backbone, tok.vocab)
    if cli.recipe.item_init == "title":
        done = model.init_items_from_text([tok.words(" " + t) if t else [] for t in data.item_title])
        log.info("item rows initialised from titles", items=done, of=data.num_items)
    extra = {
        "recipe": to_dict(cli.recipe),
        "schedule": cli.schedule,
        "data": to_dict(cli.data),
        "split": ckpt.split_record(split),  # with its sha256, checked whenever eval rebuilds it
        "command": invoking_command(),
        # every field as an explicit flag: reruns what trained, whatever the presets say later
        "command_explicit": explicit_command("llmrec train cllm4rec", cli),
    }
    return CLLM4RecTask(model, tok, Template.build(tok), data, split, cli.recipe, cli.train,
                        bb.reference(cli.backbone), cli.lm, extra)


def train(cli: TrainCli) -> dict[str, Any]:
    """Trains (or resumes) one CLLM4Rec model into `cli.out`; returns the training log."""
    task = build_task(cli)
    log.info("training", schedule=cli.schedule, out=str(cli.out), **task.data.summary())
    meta = {"model": "cllm4rec", "schedule": cli.schedule, "lm": to_dict(cli.lm),
            "command": task.extra_config["command"]}
    return run(task, cli, cli.train, Path(cli.out), meta)


def train_main(argv: list[str]) -> int:
    logs.setup()
    cli = parse(TrainCli, argv, prog="llmrec train cllm4rec", description=__doc__, presets=SCHEDULES)
    result = train(cli)
    log.info("done", out=str(cli.out), wall_s=result["wall_s"], best=result["best"],
                                    stopped=result["stopped"])
    return 0


def verify_main(cli: EvalCli) -> int:
    """`--verify REPORT`: exit 0 when the rerun lands within the tolerance, 1 when it does not."""
    from models import verify

    def train_argv(argv: list[str]) -> Path:
        run_cli = parse(TrainCli, argv, prog="llmrec train cllm4rec", presets=SCHEDULES)
        train(run_cli)
        return Path(run_cli.out)

    def test_metric(folder: Path) -> float:
        run_, _, _ = report.checkpoint_run(folder, None, resolve_device(cli.device), cli.batch_size, False,
                                           cli.serving_length)
        return float(run_.per_user["recall@20"].mean())

    assert cli.verify is not None
    return verify.main(cli.verify, "recall@20", work_dir() / "verify" / "cllm4rec", train_argv, test_metric,
                       cli.verify_sds)


def eval_main(argv: list[str]) -> int:
    logs.setup()
    cli = parse(EvalCli, argv, prog="llmrec eval cllm4rec", description="test metrics of CLLM4Rec checkpoints")
    torch.set_num_threads(cli.threads)
    if cli.verify is not None:
        return verify_main(cli)
    payload, body = report.build(cli.checkpoint or [DEFAULT_CHECKPOINT], cli.label, cli.reference, cli.baselines, resolve_device(cli.device),
                                 cli.batch_size, cli.serving_cost, cli.serving_length)
    md = (f"# CLLM4Rec on {dataset_title(payload['dataset'])}: variants and baselines (test part)\n\nThe epoch of each run is selected on validation "
          f"(recall@20 + recall@40 + NDCG@100, on the schedule's validation users); the valid column is that "
          f"epoch's recall@20 on those users (the baselines': on all valid users, where they were tuned). The test "
          f"part is read once per final configuration. Δ: mean over test users of (row - reference) with one standard error. Train min: "
          f"every training stage, validation excluded. User encoder: median ms of the exported ONNX graph under ONNX "
          f"Runtime, 1 thread, batch 1.\n\n{body}\n" + (f"{cli.note}\n\n" if cli.note else "")
          + f"Report command: `{invoking_command()}`\n")
    path = write_report(report_file_name(cli.report_name, payload["dataset"]), payload | {"note": cli.note}, md, cli.results_dir)
    print(md)
    logs.get("cllm4rec.eval").info("report", path=str(path))
    return 0
