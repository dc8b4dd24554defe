"""`llmrec bench train-memory` on a tiny random LM: its counts are the model's real shapes, dense gradients
and moments grow with the users, sparse gradients do not, row-wise Adagrad's state grows by one value per
row, and without user tokens nothing does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.train_memory import TrainMemoryConfig, count_at, markdown, measure_mode, run_train_memory
from models.cllm4rec.backbone import BackboneConfig
from models.tiny import write_causal_lm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> TrainMemoryConfig:
    root = tmp_path_factory.mktemp("train-memory")
    return TrainMemoryConfig(users=(1_000, 10_000), items=50, measured_users=60, measured_interactions=600,
                             negatives=8, batch_size=4, threads=1, depth=1,
                             backbone=BackboneConfig(path=write_causal_lm(root / "lm")), data_dir=root / "synthetic")


def test_counts_on_the_meta_device_equal_the_real_model(cfg: TrainMemoryConfig, tmp_path: Path) -> None:
    from benchmarks.cllm4rec_step_scale import StepScaleConfig, size_data

    data, split, _ = size_data(StepScaleConfig(seed=0, data_dir=cfg.data_dir),
                               f"{cfg.measured_users}x{cfg.items}x{cfg.measured_interactions}")
    m = measure_mode(cfg, "dense", data, split, tmp_path / "dense")
    model = m["case"].task.model
    counted = count_at(m, data.num_users, data.num_items)
    assert counted["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert m["tensors"]["collab_embeddings"]["grad"] == "dense" and m["activations_temporaries"] > 0


def test_what_grows_with_users_per_mode(cfg: TrainMemoryConfig) -> None:
    result = run_train_memory(cfg)
    rows = {(r["mode"], r["users"]): r for r in result["rows"]}
    grown = 9_000 * result["measured"][0]["hidden"] * 4  # bytes of 9,000 more rows of one fp32 table
    dense = rows["dense", 10_000], rows["dense", 1_000]
    # the collaborative table only: the default schedule has no content stage, so no content table either
    assert dense[0]["weights"] - dense[1]["weights"] == grown
    assert dense[0]["gradients"] - dense[1]["gradients"] == grown  # rec steps train the collaborative one
    assert dense[0]["optimizer_moments"] - dense[1]["optimizer_moments"] == 2 * grown
    sparse = rows["sparse+sampled", 10_000], rows["sparse+sampled", 1_000]
    assert sparse[0]["gradients"] == sparse[1]["gradients"] < dense[1]["gradients"]
    assert sparse[0]["optimizer_moments"] - sparse[1]["optimizer_moments"] == 2 * grown  # full-size moments
    adagrad = rows["sparse+sampled+adagrad", 10_000], rows["sparse+sampled+adagrad", 1_000]
    assert adagrad[0]["optimizer_moments"] - adagrad[1]["optimizer_moments"] == 9_000 * 4  # one fp32 value per row
    no_user = rows["sparse+sampled+no-user", 10_000], rows["sparse+sampled+no-user", 1_000]
    assert no_user[0]["total"] == no_user[1]["total"] and no_user[0]["id_rows"] == cfg.items + 1
    text = markdown(result)
    assert "| dense (default below the scale thresholds) | 10,000 |" in text and "Command:" in text
