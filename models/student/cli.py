"""`llmrec train student` and `llmrec eval student`: a SASRec-sized user encoder distilled from a trained
CLLM4Rec checkpoint, serving history requests at a small fraction of the LM's cost (issue 28).

Training reads the teacher's own data and split (train part to train on, validation to pick the epoch),
asks the teacher once for its answers on every training prefix (cached under --cache-dir, see
models.student.teacher) and trains with three weighted losses: ranking distillation on the teacher's
top-K (importance-weighted as DLLM2Rec), embedding distillation on the teacher's user vector and the
ground-truth multinomial over the user's later items. `--no-teacher` sets both teacher weights to 0: the
same architecture and initialisation trained alone, the row a distillation gain is measured against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from common import logs
from common.assets import work_dir
from common.config import parse, to_dict
from common.errors import reading_checkpoint
from models.cllm4rec.checkpoint import load_checkpoint as load_teacher
from models.cllm4rec.cli import DEFAULT_CHECKPOINT as DEFAULT_TEACHER
from models.cllm4rec.scoring import History
from models.reports import dataset_title, explicit_command, invoking_command, report_file_name, write_report
from models.student import report
from models.student import teacher as teacher_io
from models.student.config import DistillConfig, PrefixConfig, StudentConfig
from models.student.model import Student
from models.student.train import StudentTask
from models.training import checkpoint as ckpt
from models.training.config import DeviceConfig, Precision, RunConfig, TrainConfig
from models.training.devices import resolve_device
from models.training.loop import run

DEFAULT_CHECKPOINT = work_dir() / "checkpoints" / "student-ml100k"


def _train_defaults() -> TrainConfig:
    return TrainConfig(epochs=40, patience=5, batch_size=64, lr=1e-3)


@dataclass
class TrainCli(RunConfig):
    # fp32 by default: a model this small runs slower, not faster, under CPU bf16 autocast (its casts cost more
    # than its matmuls save); --precision auto picks bf16 where the hardware has it, as the other trainers do
    precision: Precision = "fp32"
    teacher: Path = DEFAULT_TEACHER  # a CLLM4Rec checkpoint folder (`llmrec train cllm4rec`)
    out: Path = DEFAULT_CHECKPOINT  # checkpoint folder (resumed from when it holds train/state.safetensors)
    no_teacher: bool = False  # rank and embed weights 0: the same student trained on the ground truth alone
    cache_dir: Path = work_dir() / "cache" / "student"  # the teacher's answers per prefix (computed once)
    model: StudentConfig = field(default_factory=StudentConfig)
    prefixes: PrefixConfig = field(default_factory=PrefixConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=_train_defaults)


@dataclass
class EvalCli(DeviceConfig):
    # student checkpoints on one teacher's split: --checkpoint A --checkpoint B (seeds share a --label)
    checkpoint: Annotated[list[Path], tyro.conf.UseAppendAction] = field(default_factory=list)
    # display name per checkpoint (the report's row); checkpoints sharing a name are seeds of one variant
    label: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    teacher: Path | None = None  # None: the teacher the first checkpoint was distilled from
    teacher_label: str = "teacher (CLLM4Rec)"  # the teacher's row in the report
    reference: str = ""  # the row every other row is compared with, per user ("": the teacher's row)
    second_reference: str = "ease"  # a second paired-Δ column (empty: none)
    overlap_k: int = 20  # teacher/student top-K overlap per test user
    batch_size: int = 32  # teacher prompts per forward pass
    baselines: bool = True  # most-popular / BPR / ALS / EASE on the same split, tuned on its valid part
    serving_cost: bool = True  # time each exported user encoder (ONNX Runtime, batch 1)
    serving_length: int = 128  # history items (student) / prompt tokens (teacher) of that timing
    report_name: str = "quality_student_{data}"  # <results-dir>/<name>.json/.md, {data}: the data set's name
    results_dir: Path | None = None  # None: ./llmrec-results
    note: str = ""  # a paragraph added to the report, after its tables
    # a report's JSON: rerun its cheapest row with >= 2 seeds from its recorded command (into
    # work/verify/student) and check its test Recall@20 is within --verify-sds seed SDs of the row's mean
    verify: Path | None = None
    verify_sds: float = 2.0


def train(cli: TrainCli) -> dict[str, Any]:
    """Distils one student from `cli.teacher` into `cli.out`; returns the training log."""
    log = logs.get("student.train")
    torch.set_num_threads(cli.threads)
    distill = dataclasses.replace(cli.distill, rank_weight=0.0, embed_weight=0.0) if cli.no_teacher else cli.distill
    with reading_checkpoint(cli.teacher, "llmrec train cllm4rec"):
        teacher = load_teacher(cli.teacher)
    data, split = teacher.training_data()
    hist = History.build(data)
    ordered = [hist.ordered(u, split.train[u]) for u in range(data.num_users)]
    prefixes = teacher_io.make_prefixes(ordered, cli.prefixes)
    split_sha = split.fingerprint()
    outputs, info = None, None
    if distill.uses_teacher():
        outputs, info = teacher_io.load_or_compute(teacher, prefixes, cli.prefixes, split_sha, cli.cache_dir,
                                                   resolve_device(cli.device), cli.threads, cli.train.progress)
    with torch.no_grad():
        items = teacher.model.item_matrix().detach().float().cpu()
    teacher_cfg = teacher.config
    del teacher  # the LM is not needed past this point
    torch.manual_seed(cli.train.seed)
    model = Student(cli.model, items, bias_column=bool(teacher_cfg["model"].get("item_bias", True)))
    extra = {
        "prefixes": to_dict(cli.prefixes), "distill": to_dict(distill), "no_teacher": cli.no_teacher,
        "teacher": {"kind": "cllm4rec", "checkpoint": str(cli.teacher),
                    "config_sha256": ckpt.file_sha256(Path(cli.teacher) / ckpt.CONFIG),
                    "weights_sha256": teacher_cfg.get("weights_sha256"),
                    "item_bias": bool(teacher_cfg["model"].get("item_bias", True)),
                    "max_history": teacher_cfg["model"].get("max_history")},
        "teacher_outputs": info,
        "data": teacher_cfg["data"],
        "split": ckpt.split_record(split),
        "command": invoking_command(),
        "command_explicit": explicit_command("llmrec train student", cli, None),
    }
    task = StudentTask(model, data, split, hist, prefixes, outputs, distill, cli.train, extra)
    log.info("training", out=str(cli.out), prefixes=len(prefixes), teacher=str(cli.teacher),
             teacher_outputs="none" if info is None else ("computed" if info["computed"] else "reused"))
    meta = {"model": "student", "command": extra["command"], "teacher_outputs": info}
    return run(task, cli, cli.train, Path(cli.out), meta)


def train_main(argv: list[str]) -> int:
    logs.setup()
    cli = parse(TrainCli, argv, prog="llmrec train student", description=__doc__)
    result = train(cli)
    logs.get("student.train").info("done", out=str(cli.out), wall_s=result["wall_s"], best=result["best"],
                                   stopped=result["stopped"])
    return 0


def verify_main(cli: EvalCli) -> int:
    """`--verify REPORT`: exit 0 when the rerun lands within the tolerance, 1 when it does not."""
    from models import verify

    def train_argv(argv: list[str]) -> Path:
        run_cli = parse(TrainCli, argv, prog="llmrec train student")
        train(run_cli)
        return Path(run_cli.out)

    def test_metric(folder: Path) -> float:
        run_, _, _, _ = report.student_run(folder, None, cli.overlap_k, False, cli.serving_length)
        return float(run_.per_user["recall@20"].mean())

    assert cli.verify is not None
    return verify.main(cli.verify, "recall@20", work_dir() / "verify" / "student", train_argv, test_metric,
                       cli.verify_sds)


def eval_main(argv: list[str]) -> int:
    logs.setup()
    cli = parse(EvalCli, argv, prog="llmrec eval student", description="test metrics of distilled students")
    torch.set_num_threads(cli.threads)
    if cli.verify is not None:
        return verify_main(cli)
    payload, body = report.build(cli.checkpoint or [DEFAULT_CHECKPOINT], cli.label, cli.teacher, cli, resolve_device(cli.device))
    md = (f"# A distilled student of CLLM4Rec on {dataset_title(payload['dataset'])} (test part)\n\n"
          f"Each student is selected on validation (recall@20 + recall@40 + NDCG@100, all valid users); the test part "
          f"is read once per final configuration. Δ: mean over test users of (row - reference) with one standard "
          f"error. Students read each user's train + valid items (time order, the most recent max_seq_len) and "
          f"score the teacher's exported item vectors; the teacher reads its rec prompt with the user's token. "
          f"Overlap: per test user, |teacher top-{cli.overlap_k} ∩ student top-{cli.overlap_k}| / {cli.overlap_k} "
          f"(seen items masked), mean ± SE over users. User encoder: median ms of the exported ONNX graph under "
          f"ONNX Runtime, 1 thread, batch 1 ({cli.serving_length} history items for a student, "
          f"{cli.serving_length} prompt tokens for the teacher).\n\n{body}\n" + (f"{cli.note}\n\n" if cli.note else "")
          + f"Report command: `{invoking_command()}`\n")
    path = write_report(report_file_name(cli.report_name, payload["dataset"]), payload | {"note": cli.note}, md,
                        cli.results_dir)
    print(md)
    logs.get("student.eval").info("report", path=str(path))
    return 0
