"""The exporter on the real bundle loaders (models/cllm4rec/bundle.py, models/tcf/bundle.py), through
`llmrec export`, on tiny checkpoints trained here with each model's own train CLI and test assets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.cli import main as export_main
from models import tiny
from repository.versions import verify_version

torch.set_num_threads(1)


def export(ckpt: Path, repo: Path, name: str, *flags: str) -> dict:
    rc = export_main(["--checkpoint", str(ckpt), "--repository", str(repo), "--name", name, "--no-report", *flags])
    assert rc == 0
    return verify_version(repo / name / "1").to_dict()  # the manifest as written


@pytest.mark.parametrize("levers", [[], ["--lm.lora-rank", "2", "--lm.unfreeze-top", "1"], ["--lm.depth", "1"],
                                    ["--model.no-tie-items", "--model.pooling", "mean"]],
                         ids=["frozen", "lora+unfrozen", "depth", "untied+mean"])
def test_cllm4rec_checkpoint_exports(tmp_path, levers):
    from models.cllm4rec import cli

    lm, ml = tiny.write_causal_lm(tmp_path / "lm"), tiny.write_ml100k(tmp_path / "ml", users=12, items=20, per_user=7)
    ckpt = tmp_path / "ckpt"
    assert cli.train_main([*tiny.cllm4rec_argv(lm, ml, ckpt), "--train.epochs", "1", *levers]) == 0
    m = export(ckpt, tmp_path / "repo", "cllm", "--index.type", "hnsw")
    par = m["parity"]["user_encoder"]
    assert par["max_abs_err"] <= 1e-4 and par["topk_identical"] and par["cases"] >= 3
    assert m["capabilities"] == {"user_id": True, "history": True, "upsert_items": False}
    assert m["cllm4rec"]["padding_side"] == "right" and m["source"]["checkpoint_sha256"]
    assert 0.0 <= m["index"]["recall_vs_exact"]["recall"] <= 1.0


def _tcf(tmp_path: Path, tower: str) -> Path:
    from models.tcf import cli

    enc, ml = tiny.write_encoder(tmp_path / "enc"), tiny.write_ml100k(tmp_path / "ml")
    ckpt = tmp_path / f"ckpt-{tower}"
    assert cli.train_main([*tiny.tcf_argv(enc, ml, ckpt), "--model.user-tower", tower, "--train.epochs", "1"]) == 0
    return ckpt


def test_tcf_dssm_checkpoint_exports(tmp_path):
    m = export(_tcf(tmp_path, "dssm"), tmp_path / "repo", "dssm", "--index.type", "ivf")
    assert m["capabilities"] == {"user_id": True, "history": False, "upsert_items": True}
    assert m["parity"]["item_encoder"]["max_abs_err"] <= 1e-4 and "tokenizer.json" in m["files"]
    assert json.loads((tmp_path / "repo" / "dssm" / "1" / "item_ids.json").read_text())


def test_tcf_sasrec_checkpoint_exports(tmp_path):
    m = export(_tcf(tmp_path, "sasrec"), tmp_path / "repo", "sasrec")
    assert m["capabilities"]["history"] and m["parity"]["user_encoder"]["topk_identical"]
