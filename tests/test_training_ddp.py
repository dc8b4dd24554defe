"""Two-process DistributedDataParallel (gloo on CPU) through the one training loop, for both models:
both ranks end with identical trained tensors, and only rank 0 writes the checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from common.config import parse
from models import tiny
from models.training.distributed import backend_for, init_distributed

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, kind: str, argv: list[str], root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if kind == "cllm4rec":
        from models.cllm4rec import cli
    else:
        from models.tcf import cli  # type: ignore[no-redef]
    config = parse(cli.TrainCli, argv, presets=cli.SCHEDULES)
    task = cli.build_task(config)
    init = {k: v.clone() for k, v in task.trained_state().items()}
    log = cli.run(task, config, config.train, config.out, {})
    state = task.trained_state()
    moved = sum(float((state[k] - init[k]).abs().sum()) for k in state)
    save_file({**state, "moved": torch.tensor([moved]), "world": torch.tensor([log["world_size"]])},
              str(Path(root) / f"rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def _assets(kind: str, tmp: Path) -> list[str]:
    if kind == "cllm4rec":
        lm, ml = tiny.write_causal_lm(tmp / "lm"), tiny.write_ml100k(tmp / "ml", users=12, items=20, per_user=7)
        return [*tiny.cllm4rec_argv(lm, ml, tmp / "ckpt"), "--train.batch-size", "2", "--recipe.rec-collab-weight",
                "0.5", "--recipe.stage-a-plan", "content,collab"]
    enc, ml = tiny.write_encoder(tmp / "enc", layers=2), tiny.write_ml100k(tmp / "ml")
    return [*tiny.tcf_argv(enc, ml, tmp / "ckpt"), "--train.batch-size", "4", "--lm.unfreeze-top", "1"]


@pytest.mark.parametrize("kind", ["cllm4rec", "tcf"])
def test_two_ranks_end_with_identical_parameters(tmp_path: Path, kind: str) -> None:
    argv = _assets(kind, tmp_path)
    mp.spawn(_worker, args=(2, _free_port(), kind, argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert float(r0["moved"]) > 0 and int(r0["world"]) == 2
    for key in r0:
        if key != "moved":
            assert torch.equal(r0[key], r1[key]), key
    assert (tmp_path / "ckpt" / "config.json").is_file()


def test_torchrun_launches_the_train_command(tmp_path: Path) -> None:
    """The real entry point under torchrun (how users launch it), across two processes."""
    argv = _assets("tcf", tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "llmrec", "train", "tcf", *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "ckpt" / "train" / "log.json").read_text()
    assert '"world_size": 2' in log and '"device": "cpu"' in log


def test_backend_follows_the_device() -> None:
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 0)) == "nccl"
    assert init_distributed("cpu").world == 1  # no torchrun environment: one process, no process group


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible on this machine")
def test_single_process_on_cuda_uses_the_gpu(tmp_path: Path) -> None:
    from models.tcf import cli

    config = parse(cli.TrainCli, [*_assets("tcf", tmp_path), "--device", "cuda", "--precision", "auto"])
    log = cli.train(config)
    assert log["device"].startswith("cuda") and log["precision"] in ("bf16", "fp16")
