"""The LM capacity levers (models/training/capacity.py) on tiny random LMs: LoRA, unfrozen top
blocks and depth, through training, checkpoints and the merged export path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.config import parse
from models import tiny
from models.cllm4rec import cli
from models.cllm4rec.backbone import BackboneConfig, load_backbone
from models.cllm4rec.bundle import FoldedUserEncoder, GraphSpace, user_rows
from models.cllm4rec.checkpoint import load_checkpoint
from models.cllm4rec.model import CLLM4Rec
from models.cllm4rec.prompts import collate
from models.tcf import cli as tcf_cli
from models.training.capacity import CapacityConfig, blocks, merged_copy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("capacity")
    return {"lm": tiny.write_causal_lm(root / "lm", layers=3), "root": root,
            "ml": tiny.write_ml100k(root / "ml", users=12, items=20, per_user=7)}


def train(assets: dict[str, Path], name: str, *levers: str) -> Path:
    out = assets["root"] / name
    argv = [*tiny.cllm4rec_argv(assets["lm"], assets["ml"], out), "--train.lm-lr", "1e-2", *levers]
    cli.train(parse(cli.TrainCli, argv, presets=cli.SCHEDULES))
    return out


def prompts(model: CLLM4Rec) -> dict[str, torch.Tensor]:
    v = model.vocab
    rows = [[v.user(u), 5, 6, *(v.item(j) for j in range(u, u + 3 + u % 4)), 7, v.user(u), 8] for u in range(5)]
    return collate(rows, 0)


def test_lora_changes_the_output_and_merges_to_the_same_vectors(assets) -> None:
    out = train(assets, "lora", "--lm.lora-rank", "4", "--lm.lora-alpha", "8")
    loaded = load_checkpoint(out)
    model = loaded.model
    b = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert b and all(p.abs().sum() > 0 for p in b)  # the adapters trained (they start at zero)
    batch = prompts(model)
    frozen_lm, _ = load_backbone(BackboneConfig(path=assets["lm"]))
    frozen = CLLM4Rec(model.cfg, frozen_lm, model.vocab)
    frozen.load_trained_state({k: v for k, v in model.trained_state().items() if not k.startswith("backbone.")})
    with torch.no_grad():
        adapted, plain = model.user_vectors(**batch), frozen.user_vectors(**batch)
        assert (adapted - plain).abs().max() > 1e-3  # LoRA changes the output
        space = GraphSpace(model.vocab, user_rows(model))  # the prompts as the exported graph reads them
        merged = FoldedUserEncoder(model)(*space.convert(batch["input_ids"], batch["attention_mask"]))
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
    plain_lm = merged_copy(model.backbone)
    assert not any("lora" in n for n, _ in plain_lm.named_parameters())
    assert any("lora" in n for n, _ in model.backbone.named_parameters())  # the original keeps its adapters


def test_checkpoint_stores_only_what_trained(assets) -> None:
    lora = load_file(str(train(assets, "lora_top", "--lm.lora-rank", "2", "--lm.lora-layers", "0",
                                "--lm.unfreeze-top", "1") / "weights.safetensors"))
    lm_keys = [k for k in lora if k.startswith("backbone.")]
    adapters = {k for k in lm_keys if "lora_" in k}
    assert adapters and all(k.startswith("backbone.model.layers.0.") for k in adapters)  # --lm.lora-layers 0
    full = set(lm_keys) - adapters
    assert full and all(k.startswith("backbone.model.layers.2.") for k in full)  # the top block of 3, nothing else
    frozen = load_file(str(train(assets, "frozen") / "weights.safetensors"))
    assert not any(k.startswith("backbone.") for k in frozen)  # the paper's setting: ID tables and heads only


def test_unfrozen_top_block_trains_and_the_rest_stays_bit_identical(assets) -> None:
    model = load_checkpoint(train(assets, "top", "--lm.unfreeze-top", "1")).model
    original, _ = load_backbone(BackboneConfig(path=assets["lm"]))
    before, after = original.state_dict(), model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.2.") for k in changed)


def test_depth_k_runs_exactly_k_blocks(assets) -> None:
    lm, _ = load_backbone(BackboneConfig(path=assets["lm"]), CapacityConfig(depth=2))
    assert len(blocks(lm)) == 2 and lm.config.num_hidden_layers == 2
    calls: list[int] = []
    full, _ = load_backbone(BackboneConfig(path=assets["lm"]))
    for i, block in enumerate(blocks(full)):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    for i, block in enumerate(blocks(lm)):
        block.register_forward_hook(lambda *_, i=i: calls.append(10 + i))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        hidden = full(input_ids=ids, output_hidden_states=True).hidden_states
        cut = lm.base_model(input_ids=ids).last_hidden_state
    assert calls == [0, 1, 2, 10, 11]
    torch.testing.assert_close(cut, full.base_model.norm(hidden[2]), atol=1e-6, rtol=0)  # block 2's output, normed
    model = load_checkpoint(train(assets, "depth", "--lm.depth", "1")).model
    assert len(blocks(model.backbone)) == 1
    with pytest.raises(ValueError, match=r"depth must be in 1\.\.3"):
        load_backbone(BackboneConfig(path=assets["lm"]), CapacityConfig(depth=4))


def test_tcf_refuses_lora_clearly(tmp_path: Path) -> None:
    cfg = parse(tcf_cli.TrainCli, ["--lm.lora-rank", "4", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"LoRA .* is for CLLM4Rec's backbone"):
        tcf_cli.build_task(cfg)
