"""Training end to end on tiny data: checkpoint round trip, strict loading, resume, 2-process DDP, eval report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.data.config import DataConfig
from models.metrics import evaluate
from models.tcf.checkpoint import _sha256, load_checkpoint
from models.tcf.cli import eval_main
from models.tcf.testing import write_tiny_encoder, write_tiny_ml100k
from models.tcf.train import TrainConfig, make_scorer, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tcf")
    return write_tiny_encoder(base / "enc", "bert", layers=2), write_tiny_ml100k(base / "data")


def _cfg(assets: tuple[Path, Path], out: Path, **kw) -> TrainConfig:
    enc, data = assets
    base = dict(encoder=str(enc), data=DataConfig(path=data), out=out, dim=16, max_seq_len=8, batch_size=8,
                epochs=3, progress=False, text_max_length=12)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("towers", [("sasrec", "text", 1), ("dssm", "text", 0), ("sasrec", "id", 0)])
def test_checkpoint_round_trip(tmp_path: Path, assets, towers, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_UNUSED", "1")
    user, item, n = towers
    cfg = _cfg(assets, tmp_path / "ck", user_tower=user, item_tower=item, unfreeze_last=n)
    result = train(cfg)
    assert result["epochs"] == 3
    saved = json.loads((cfg.out / "config.json").read_text())
    assert saved["final"]["epochs_run"] == 3 and saved["final"]["train_s"] > 0
    assert saved["kind"] == "tcf" and saved["user_tower"] == user and saved["item_tower"] == item
    ck = load_checkpoint(cfg.out, preinfer_cache=None)
    valid = evaluate(make_scorer(ck.model), ck.split, "valid", ("hr@10", "ndcg@10"))
    # the loaded model reproduces the metric the trainer measured on its in-memory model at that epoch
    assert valid["ndcg@10"] == pytest.approx(saved["valid"]["ndcg@10"], abs=1e-9)
    again = load_checkpoint(cfg.out)
    s1 = make_scorer(ck.model)(ck.split.eval_users("test")[:5], [ck.split.train[u] for u in range(5)])
    s2 = make_scorer(again.model)(ck.split.eval_users("test")[:5], [ck.split.train[u] for u in range(5)])
    assert (s1 == s2).all()
    if n:
        assert any(k.startswith("item_tower.top.") for k in load_file(str(cfg.out / "weights.safetensors")))


def test_strict_load_rejects_tampering(tmp_path: Path, assets) -> None:
    cfg = _cfg(assets, tmp_path / "ck", epochs=1)
    train(cfg)
    weights, conf = cfg.out / "weights.safetensors", cfg.out / "config.json"
    original = weights.read_bytes()
    state = load_file(str(weights))

    def rewrite(new_state: dict) -> None:
        save_file(new_state, str(weights))
        c = json.loads(conf.read_text())
        c["weights_sha256"] = _sha256(weights)
        conf.write_text(json.dumps(c))

    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_checkpoint(cfg.out)
    rewrite({**state, "extra.weight": torch.zeros(2)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_checkpoint(cfg.out)
    rewrite({k: v for k, v in state.items() if not k.startswith("user_tower.pos")})
    with pytest.raises(RuntimeError, match="Missing key"):
        load_checkpoint(cfg.out)


def test_resume_continues(tmp_path: Path, assets) -> None:
    out = tmp_path / "ck"
    first = train(_cfg(assets, out, epochs=2))
    assert first["epochs"] == 2
    before = torch.load(out / "resume" / "state.pt", weights_only=True)["state"]["history"]
    second = train(_cfg(assets, out, epochs=3))
    assert second["epochs"] == 3  # one more epoch, not three
    after = torch.load(out / "resume" / "state.pt", weights_only=True)["state"]["history"]
    assert len(after) == 3 and after[:2] == before
    with pytest.raises(ValueError, match="different model setup"):
        train(_cfg(assets, out, epochs=4, dim=8))
    fresh = train(_cfg(assets, tmp_path / "fresh", epochs=3))
    assert fresh["epochs"] == 3


def test_ddp_two_processes(tmp_path: Path, assets) -> None:
    enc, data = assets
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "llmrec", "train", "tcf", "--encoder", str(enc), "--data.path", str(data), "--out", str(out),
           "--dim", "16", "--max-seq-len", "8", "--batch-size", "4", "--epochs", "2", "--no-progress",
           "--text-max-length", "12"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["world_size"] == 2 and len(saved["history"]) >= 1
    load_checkpoint(out)  # rank 0 wrote a complete, loadable checkpoint


def test_eval_report(tmp_path: Path, assets) -> None:
    cfg = _cfg(assets, tmp_path / "ck", epochs=1)
    train(cfg)
    id_cfg = _cfg(assets, tmp_path / "ck_id", epochs=1, item_tower="id")
    train(id_cfg)
    rc = eval_main(["--checkpoint", str(cfg.out), "--checkpoint", str(id_cfg.out), "--report", "tcf_test",
                    "--results-dir", str(tmp_path / "results"), "--no-baselines"])
    assert rc == 0
    payload = json.loads((tmp_path / "results" / "tcf_test.json").read_text())
    assert [r["model"] for r in payload["rows"]][1] == "ID-SASREC"
    assert 0.0 <= payload["rows"][0]["hr@10"] <= 1.0
    assert (tmp_path / "results" / "tcf_test.md").read_text().startswith("# TCF")
