"""Two-process DistributedDataParallel (gloo on CPU) through the one training loop, for both models:
both ranks end with identical trained tensors, and only rank 0 writes the checkpoint. CLLM4Rec also with
its scale levers: sparse ID gradients (kept out of DDP, averaged by the loop), sampled item negatives, no
user tokens; and on a tiny task, two ranks' sparse and dense updates equal one process's on the
concatenated batches."""

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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from common.config import parse
from models import tiny
from models.training.config import TrainConfig
from models.training.distributed import Placement, backend_for, init_distributed
from models.training.loop import Loop, Stage

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the CLLM4Rec scale levers (models/cllm4rec/train.py): flags added to the tiny run
LEVERS = {
    "cllm4rec": [],
    # ID tables with sparse gradients (user rows included), a sampled softmax over each rank's candidates
    "cllm4rec-sparse": ["--recipe.sparse-ids", "--recipe.item-negatives", "5"],
    # no user rows, and untied item output rows: a third sparse table, read at the candidates only
    "cllm4rec-no-user": ["--recipe.sparse-ids", "--recipe.item-negatives", "5", "--model.no-user-tokens",
                         "--model.no-tie-items"],
}


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))


def _worker(rank: int, world: int, port: int, kind: str, argv: list[str], root: str) -> None:
    _env(rank, world, port)
    if kind.startswith("cllm4rec"):
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
    if kind.startswith("cllm4rec"):
        lm, ml = tiny.write_causal_lm(tmp / "lm"), tiny.write_ml100k(tmp / "ml", users=12, items=20, per_user=7)
        return [*tiny.cllm4rec_argv(lm, ml, tmp / "ckpt"), "--train.batch-size", "2", "--recipe.rec-collab-weight",
                "0.5", "--recipe.stage-a-plan", "content,collab", "--train.max-grad-norm", "1.0", *LEVERS[kind]]
    enc, ml = tiny.write_encoder(tmp / "enc", layers=2), tiny.write_ml100k(tmp / "ml")
    return [*tiny.tcf_argv(enc, ml, tmp / "ckpt"), "--train.batch-size", "4", "--lm.unfreeze-top", "1"]


@pytest.mark.parametrize("kind", [*LEVERS, "tcf"])
def test_two_ranks_end_with_identical_parameters(tmp_path: Path, kind: str) -> None:
    argv = _assets(kind, tmp_path)
    mp.spawn(_worker, args=(2, _free_port(), kind, argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert float(r0["moved"]) > 0 and int(r0["world"]) == 2
    for key in r0:
        if key != "moved":
            assert torch.equal(r0[key], r1[key]), key
    assert (tmp_path / "ckpt" / "config.json").is_file()


class Tables(nn.Module):
    """Two ID tables read with sparse gradients and a dense head; its forward is the loss (what DDP wraps).
    Only the examples that use `b` read its rows (a row read with a zero gradient would still move)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Parameter(torch.randn(30, 4)), nn.Parameter(torch.randn(30, 4))
        self.head = nn.Linear(4, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        h = F.embedding(batch["ids"], self.a, sparse=True)
        use = batch["use_b"].nonzero().squeeze(1)
        if len(use):
            h = h.index_add(0, use, F.embedding(batch["other"][use], self.b, sparse=True))
        return (self.head(h).squeeze(1) - batch["y"]).pow(2).mean()


class TablesTask:
    """The smallest Task with sparse and dense gradients. Table `b` is read only by batches 1 and 3, so on
    some steps one rank has no gradient for it, and on one step no rank has."""

    BATCH, BATCHES = 4, 6

    def __init__(self, concat: bool, out: Path) -> None:
        self.module = Tables()
        self.concat, self.out = concat, out

    def stages(self) -> list[Stage]:
        return [Stage("s", 2, validate=False, scheduled=False)]

    def param_groups(self, stage: Stage) -> list[dict]:
        m = self.module
        return [{"name": "ids", "params": [m.a, m.b], "lr": 0.05, "weight_decay": 0.01},
                {"name": "head", "params": list(m.head.parameters()), "lr": 0.05, "weight_decay": 0.0}]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.module.b, self.module.a]  # any order: the loop takes the module's

    def prepare(self) -> None:
        pass

    def epoch_batches(self, stage: Stage, epoch: int, rng: object) -> list:
        g = torch.Generator().manual_seed(epoch)
        batches = [{"ids": torch.randint(0, 30, (self.BATCH,), generator=g),
                    "other": torch.randint(0, 30, (self.BATCH,), generator=g),
                    "use_b": torch.full((self.BATCH,), k in (1, 3)), "y": torch.randn(self.BATCH, generator=g)}
                   for k in range(self.BATCHES)]
        if self.concat:  # one process: batches 2k and 2k+1 (ranks 0 and 1's k-th step) as one
            batches = [{key: torch.cat([x[key], y[key]]) for key in x} for x, y in zip(batches[::2], batches[1::2], strict=True)]
        return [lambda b=b: b for b in batches]

    def loss(self, net: nn.Module, batch: dict) -> torch.Tensor:
        return net(batch)

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_trained_state(self, tensors: dict) -> None:
        self.module.load_state_dict(tensors)

    def save_checkpoint(self, out: Path, log: dict) -> None:
        (out / "config.json").write_text("{}")


def _tables_run(task: TablesTask, place: Placement) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(lr_schedule="constant", max_grad_norm=5.0, resume=False, progress=False)
    start = {k: v.clone() for k, v in task.trained_state().items()}
    Loop(task, cfg, task.out, place, None).fit()
    end = task.trained_state()
    assert all(not torch.equal(end[k], start[k]) for k in end)
    return end


def _first_step_grads(task: TablesTask, place: Placement) -> dict[str, torch.Tensor]:
    """The tables' gradients of the first step (Adam hides a wrong scale of them; they must be the mean)."""
    batch = task.epoch_batches(Stage("s", 1), 0, None)[place.rank]()
    task.module(batch).backward()
    place.mean_sparse_grads([task.module.a, task.module.b])
    assert task.module.a.grad.is_sparse and task.module.b.grad.is_sparse
    return {f"grad.{k}": getattr(task.module, k).grad.to_dense() for k in ("a", "b")}


def _tables_worker(rank: int, world: int, port: int, root: str) -> None:
    _env(rank, world, port)
    place = init_distributed("cpu")
    grads = _first_step_grads(TablesTask(concat=False, out=Path(root)), place)
    task = TablesTask(concat=False, out=Path(root) / f"out{rank}")
    task.out.mkdir()
    save_file(_tables_run(task, place) | grads, str(Path(root) / f"tables{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def test_sparse_gradients_under_ddp_equal_one_process_on_the_concatenated_batches(tmp_path: Path) -> None:
    mp.spawn(_tables_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_file(str(tmp_path / "tables0.safetensors")), load_file(str(tmp_path / "tables1.safetensors"))
    (tmp_path / "single").mkdir()
    single = _first_step_grads(TablesTask(concat=True, out=tmp_path), Placement())
    single |= _tables_run(TablesTask(concat=True, out=tmp_path / "single"), Placement())
    for key in single:
        assert torch.equal(r0[key], r1[key]), key
        torch.testing.assert_close(r0[key], single[key], rtol=1e-5, atol=1e-6)


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
