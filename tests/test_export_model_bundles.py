"""The exporter on the real bundle loaders (models/cllm4rec/bundle.py, models/tcf/bundle.py), through
`llmrec export`, on tiny checkpoints trained here with each model's own train CLI and test assets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.cli import main as export_main
from export.repository import verify_version

torch.set_num_threads(1)


def export(ckpt: Path, repo: Path, name: str, *flags: str) -> dict:
    rc = export_main(["--checkpoint", str(ckpt), "--repository", str(repo), "--name", name, "--no-report", *flags])
    assert rc == 0
    return verify_version(repo / name / "1")


def test_cllm4rec_checkpoint_exports(tmp_path):
    tiny = pytest.importorskip("models.cllm4rec.tiny")
    cli = pytest.importorskip("models.cllm4rec.cli")
    lm, ml = tiny.tiny_backbone(tmp_path / "lm"), tiny.tiny_ml_folder(tmp_path / "ml")
    ckpt = tmp_path / "ckpt"
    assert cli.train_main(["--out", str(ckpt), "--schedule", "custom", "--data.dataset", "atomic",
                           "--data.path", str(ml), "--backbone.path", str(lm), "--train.content-warmup-epochs", "1",
                           "--train.pretrain-rounds", "0", "--train.finetune-epochs", "1", "--train.batch-size", "4",
                           "--train.no-progress"]) == 0
    m = export(ckpt, tmp_path / "repo", "cllm", "--index", "hnsw")
    par = m["parity"]["user_encoder"]
    assert par["max_abs_err"] <= 1e-4 and par["topk_identical"] and par["cases"] >= 3
    assert m["capabilities"] == {"user_id": True, "history": True, "upsert_items": False}
    assert m["cllm4rec"]["padding_side"] == "right" and m["source"]["checkpoint_sha256"]
    assert 0.0 <= m["index"]["recall_vs_exact"]["recall"] <= 1.0


def _tcf(tmp_path: Path, tower: str) -> Path:
    testing = pytest.importorskip("models.tcf.testing")
    cli = pytest.importorskip("models.tcf.cli")
    enc, ml = testing.write_tiny_encoder(tmp_path / "enc"), testing.write_tiny_ml100k(tmp_path / "ml")
    ckpt = tmp_path / f"ckpt-{tower}"
    assert cli.train_main(["--out", str(ckpt), "--encoder", str(enc), "--data.dataset", "atomic", "--data.path",
                           str(ml), "--user-tower", tower, "--dim", "16", "--epochs", "1", "--no-progress"]) == 0
    return ckpt


def test_tcf_dssm_checkpoint_exports(tmp_path):
    m = export(_tcf(tmp_path, "dssm"), tmp_path / "repo", "dssm", "--index", "ivf")
    assert m["capabilities"] == {"user_id": True, "history": False, "upsert_items": True}
    assert m["parity"]["item_encoder"]["max_abs_err"] <= 1e-4 and "tokenizer.json" in m["files"]
    assert json.loads((tmp_path / "repo" / "dssm" / "1" / "item_ids.json").read_text())


def test_tcf_sasrec_checkpoint_exports(tmp_path):
    m = export(_tcf(tmp_path, "sasrec"), tmp_path / "repo", "sasrec")
    assert m["capabilities"]["history"] and m["parity"]["user_encoder"]["topk_identical"]
