"""The one training loop (models/training) on both models with tiny random LMs: same loop and log,
resume == uninterrupted, presets under explicit flags, devices and precision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from training_kit import die_before

from common.config import parse
from models import tiny
from models.cllm4rec import cli as cllm_cli
from models.tcf import cli as tcf_cli
from models.training import devices
from models.training.distributed import Placement
from models.training.loop import Loop
from models.training.state import join_optimizer, split_optimizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine")
    return {"lm": tiny.write_causal_lm(root / "lm"), "enc": tiny.write_encoder(root / "enc", layers=2),
            "ml_small": tiny.write_ml100k(root / "ml_small", users=12, items=20, per_user=7),
            "ml": tiny.write_ml100k(root / "ml")}


def config(kind: str, assets: dict[str, Path], out: Path, *flags: str) -> Any:
    if kind == "cllm4rec":
        return parse(cllm_cli.TrainCli, [*tiny.cllm4rec_argv(assets["lm"], assets["ml_small"], out), *flags],
                     presets=cllm_cli.SCHEDULES)
    return parse(tcf_cli.TrainCli, [*tiny.tcf_argv(assets["enc"], assets["ml"], out), *flags],
                 presets=tcf_cli.SCHEDULES)


def cli_of(kind: str) -> Any:
    return cllm_cli if kind == "cllm4rec" else tcf_cli


# Both models: a cosine schedule with warm-up (the scheduler state must survive), and TCF's dropout
# (the torch generator must survive); CLLM4Rec also crosses its pretrain -> rec stage boundary.
FLAGS = {"cllm4rec": ("--train.warmup-steps", "2", "--train.epochs", "3", "--train.max-grad-norm", "1.0"),
         "tcf": ("--train.lr-schedule", "cosine", "--train.warmup-steps", "2", "--train.epochs", "3")}


def _run(kind: str, assets: dict[str, Path], out: Path, stop_before: tuple[str, int] | None = None) -> None:
    """Trains; with `stop_before` = (stage, epoch) the run dies as that epoch starts (after the previous
    epoch's state was saved), the way a killed job would."""
    cfg = config(kind, assets, out, *FLAGS[kind])
    task = cli_of(kind).build_task(cfg)
    if stop_before is not None:
        die_before(task, stop_before)
        with pytest.raises(KeyboardInterrupt):
            cli_of(kind).run(task, cfg, cfg.train, out, {})
        return
    cli_of(kind).run(task, cfg, cfg.train, out, {})


@pytest.mark.parametrize("kind,stop", [("cllm4rec", ("rec", 0)), ("cllm4rec", ("rec", 2)), ("tcf", ("train", 1))])
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, assets, kind: str, stop: tuple[str, int]) -> None:
    _run(kind, assets, tmp_path / "whole")
    _run(kind, assets, tmp_path / "parts", stop_before=stop)
    _run(kind, assets, tmp_path / "parts")  # resumes from train/
    whole = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    parts = load_file(str(tmp_path / "parts" / "weights.safetensors"))
    assert whole.keys() == parts.keys()
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key
    logs = [json.loads((tmp_path / p / "train" / "log.json").read_text()) for p in ("whole", "parts")]
    strip = [[{k: v for k, v in e.items() if not k.endswith("seconds")} for e in log["epochs"]]
             for log in logs]
    assert strip[0] == strip[1] and logs[0]["best"] == logs[1]["best"]


def test_both_models_run_through_the_same_loop_and_log(tmp_path: Path, assets, monkeypatch) -> None:
    seen: list[str] = []
    real_fit = Loop.fit

    def fit(self: Loop) -> dict[str, Any]:
        seen.append(type(self.task).__name__)
        return real_fit(self)

    monkeypatch.setattr(Loop, "fit", fit)
    logs = [cli_of(k).train(config(k, assets, tmp_path / k, "--train.epochs", "1")) for k in ("cllm4rec", "tcf")]
    assert seen == ["CLLM4RecTask", "TCFTask"]
    assert {"epochs", "best", "stopped", "device", "precision", "train", "wall_s"} <= logs[0].keys() & logs[1].keys()
    for log in logs:
        last = log["epochs"][-1]
        assert {"stage", "epoch", "task", "loss", "seconds", "cpu_seconds", "lr", "valid"} <= last.keys()
        assert "score" in last["valid"] and last["cpu_seconds"] > 0
        assert log["best"]["valid"] == last["valid"] and log["device"] == "cpu" and log["precision"] == "fp32"


def test_explicit_flag_equal_to_the_default_beats_the_preset(tmp_path: Path) -> None:
    plain = parse(cllm_cli.TrainCli, ["--schedule", "rec-only"], presets=cllm_cli.SCHEDULES)
    assert plain.train.batch_size == 20  # the rec-only schedule's preset
    flagged = parse(cllm_cli.TrainCli, ["--schedule", "rec-only", "--train.batch-size", "16"],
                    presets=cllm_cli.SCHEDULES)
    assert flagged.train.batch_size == 16 == cllm_cli.TrainConfig().batch_size
    short = parse(cllm_cli.TrainCli, ["--schedule", "short", "--model.max-history", "128"], presets=cllm_cli.SCHEDULES)
    assert short.model.max_history == 128 and short.train.max_steps_per_epoch == 12
    # a config file is explicit too: over the preset, under the flags
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"schedule": "full", "train": {"epochs": 7, "patience": 9}}))
    from_file = parse(cllm_cli.TrainCli, ["--config", str(path), "--train.patience", "3"], presets=cllm_cli.SCHEDULES)
    assert (from_file.schedule, from_file.train.epochs, from_file.train.patience) == ("full", 7, 3)
    assert from_file.recipe.pretrain_rounds == 2
    tcf = parse(tcf_cli.TrainCli, ["--schedule", "full", "--train.epochs", "0"], presets=tcf_cli.SCHEDULES)
    assert tcf.train.epochs == 0 and tcf.train.patience == 10


def test_one_flag_shape_for_both_commands() -> None:
    for kind in ("cllm4rec", "tcf"):
        cfg = parse(cli_of(kind).TrainCli, ["--threads", "3", "--device", "cpu", "--precision", "bf16"],
                    presets=cli_of(kind).SCHEDULES)
        assert (cfg.threads, cfg.device, cfg.precision) == (3, "cpu", "bf16")
        assert cfg.data.min_user_interactions == (5 if kind == "tcf" else 0)


def test_help_texts_are_each_flags_own(capsys) -> None:
    with pytest.raises(SystemExit):
        parse(tcf_cli.TrainCli, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, words in {"--train.lm-weight-decay": "AdamW weight decay of those LM weights",
                        "--train.max-grad-norm": "clips the global gradient norm",
                        "--data.min-user-interactions": "users with fewer distinct items are dropped",
                        "--recipe.mlp-lr": "the text tower's MLP"}.items():
        assert flag in out
        after = out.split(flag, 1)[1][:400]
        assert words in after.split(" --", 1)[0], flag
    assert out.count("reached valid HR@10 0.075") == 1  # --recipe.mlp-lr's comment, on it alone


def test_bf16_autocast_trains_both_models_on_cpu(tmp_path: Path, assets, monkeypatch) -> None:
    seen: list[bool] = []  # autocast state inside each validation: off, as when `llmrec eval` scores the test part
    init = Loop.__init__

    def spy(self: Loop, task: Any, *args: Any, **kwargs: Any) -> None:
        validate = task.validate

        def checked(place: Any) -> dict[str, float]:
            seen.append(torch.is_autocast_enabled("cpu"))
            return validate(place)

        task.validate = checked
        init(self, task, *args, **kwargs)

    monkeypatch.setattr(Loop, "__init__", spy)
    for kind in ("cllm4rec", "tcf"):
        log = cli_of(kind).train(config(kind, assets, tmp_path / kind, "--train.epochs", "1", "--precision", "bf16"))
        assert log["precision"] == "bf16" and all(e["loss"] == e["loss"] for e in log["epochs"])  # no NaN
        weights = load_file(str(tmp_path / kind / "weights.safetensors"))
        assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    assert seen and not any(seen)


def test_progress_bars_stay_quiet_off_a_terminal(tmp_path: Path, assets, capfd) -> None:
    cli_of("tcf").train(config("tcf", assets, tmp_path / "ck", "--train.epochs", "1", "--train.progress"))
    err = capfd.readouterr().err
    assert "train:train 1/1" not in err and "pre-inference:" not in err  # the loop's and pre-inference's bars


def test_auto_precision_follows_the_cpu_flags(monkeypatch, tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert "amx_bf16" in devices.cpu_flags(info) and devices.cpu_model(info) == "Some CPU"
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert devices.autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert devices.autocast_dtype(cpu, "auto") is None
    assert devices.autocast_dtype(cpu, "bf16") is torch.bfloat16 and devices.autocast_dtype(cpu, "fp32") is None
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA only"):
        devices.autocast_dtype(cpu, "fp16")
    assert devices.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error seen on machines without a GPU")
def test_cuda_request_without_a_gpu_is_a_clear_error() -> None:
    assert devices.resolve_device("auto") == torch.device("cpu") and devices.resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        devices.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="accepted: auto, cpu, cuda, cuda:N"):
        devices.resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible on this machine")
def test_cuda_autocast_picks_bf16_or_fp16_with_a_scaler(tmp_path: Path, assets) -> None:
    device = devices.resolve_device("cuda")
    dtype = devices.autocast_dtype(device, "auto")
    assert dtype is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    log = cli_of("cllm4rec").train(config("cllm4rec", assets, tmp_path / "ck", "--device", "cuda", "--precision",
                                          "auto", "--train.epochs", "1"))
    assert log["device"].startswith("cuda")


def test_optimizer_state_round_trips_through_safetensors_and_json() -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW([{"params": params[:1], "lr": 0.1, "name": "a"}, {"params": params[1:], "lr": 0.01}])
    for _ in range(2):
        sum(p.sum() ** 2 for p in params).backward()
        opt.step()
    tensors, rest = split_optimizer(opt.state_dict())
    rest = json.loads(json.dumps(rest))
    again = torch.optim.AdamW([{"params": params[:1], "lr": 0.5, "name": "a"}, {"params": params[1:], "lr": 0.5}])
    again.load_state_dict(join_optimizer(tensors, rest))
    a, b = opt.state_dict(), again.state_dict()
    assert [g["lr"] for g in b["param_groups"]] == [0.1, 0.01]
    for idx in a["state"]:
        for key, value in a["state"][idx].items():
            assert torch.equal(value, b["state"][idx][key])


def test_shards_are_equal_per_rank() -> None:
    items = list(range(7))
    shards = [Placement(rank=r, world=3).shard(items) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2] and sorted(x for s in shards for x in s) == [0, 1, 2, 3, 4, 5]
    assert [Placement(rank=r, world=3).shard([9]) for r in range(3)] == [[9], [9], [9]]


def test_train_speed_bench_reports_both_models_without_touching_shipped_results(tmp_path: Path, assets) -> None:
    from llmrec.cli import main
    from models.reports import SHIPPED_RESULTS_DIR

    shipped = SHIPPED_RESULTS_DIR / "train_speed.json"
    before = shipped.stat().st_mtime_ns if shipped.is_file() else None
    argv = ["bench", "train-speed", "--results-dir", str(tmp_path), "--bench.steps", "2", "--bench.depths", "0", "1",
            "--bench.precisions", "fp32", "--bench.tcf-unfreeze-top", "0", "--bench.data.dataset", "atomic",
            "--bench.data.path", str(assets["ml"]), "--bench.backbone.path", str(assets["lm"]),
            "--bench.text.encoder", str(assets["enc"]), "--bench.work", str(tmp_path / "work")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "train_speed.json").read_text())
    rows = {(r["model"], r["blocks"]): r for r in report["rows"]}
    assert set(rows) == {("tcf", None), ("cllm4rec", 2), ("cllm4rec", 1)}
    assert all(r["seconds_per_epoch"] > 0 and r["precision"] == "fp32" for r in rows.values())
    assert rows[("cllm4rec", 2)]["steps_measured"] == 2 and "flags" in report["cpu"]
    assert "s / epoch" in (tmp_path / "train_speed.md").read_text()
    assert (shipped.stat().st_mtime_ns if shipped.is_file() else None) == before
