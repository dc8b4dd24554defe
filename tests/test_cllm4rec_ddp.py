"""Two-process DistributedDataParallel run (gloo on CPU) on a tiny model: both ranks must end
with identical ID tables, and only rank 0 writes the checkpoint."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from models.cllm4rec.backbone import BackboneConfig, load_backbone, reference
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template
from models.cllm4rec.tiny import tiny_backbone, tiny_ml_folder
from models.cllm4rec.tokens import IdTokenizer
from models.cllm4rec.train import TrainConfig, Trainer
from models.data.loaders import load_ml100k
from models.data.splits import make_split
from models.distributed import init_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, lm: str, data_dir: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    info = init_distributed()
    data = load_ml100k(Path(data_dir))
    split = make_split(data, "random_80_10_10", 0)
    backbone, hf_tok = load_backbone(BackboneConfig(path=Path(lm)))
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items)
    torch.manual_seed(0)
    model = CLLM4Rec(ModelConfig(data.num_users, data.num_items, tok.vocab.vocab_size, 32), backbone)
    init = model.trained_state()
    cfg = TrainConfig(stage_a_plan="content,collab", finetune_epochs=1, batch_size=2, progress=False,
                      rec_collab_weight=0.5)
    extra = {"data": {"dataset": "ml-100k", "path": data_dir}, "split": {"protocol": "random_80_10_10", "seed": 0}}
    trainer = Trainer(model, tok, Template.build(tok), data, split, cfg, Path(root) / "ckpt",
                      reference(BackboneConfig(path=Path(lm))), extra, info)
    trainer.fit()
    state = model.trained_state()
    state["moved"] = (state["collab_embeddings"] - init["collab_embeddings"]).abs().sum().reshape(1)
    save_file(state, str(Path(root) / f"rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_end_with_identical_tables(tmp_path: Path) -> None:
    lm = tiny_backbone(tmp_path / "lm")
    data_dir = tiny_ml_folder(tmp_path / "ml")
    mp.spawn(_worker, args=(2, _free_port(), str(lm), str(data_dir), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert float(r0["moved"]) > 0
    for key in ("collab_embeddings", "content_embeddings", "log_scale"):
        assert torch.equal(r0[key], r1[key]), key
    assert (tmp_path / "ckpt" / "config.json").is_file()
