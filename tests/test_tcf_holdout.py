"""Cold-start protocol: held-out items never reach training, are scored as new items, and get their own
report columns; the hybrid tower trains end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_kit import train_held_out_towers

from common.config import parse
from models.data.splits import Split
from models.tcf import cli
from models.tcf.checkpoint import load_checkpoint
from models.tcf.data import sasrec_batch
from models.tcf.holdout import cold_targets, held_out_items, hold_out
from models.tcf.train import make_scorer
from models.tiny import tcf_argv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def assets(tcf_assets: tuple[Path, Path]) -> tuple[Path, Path]:
    return tcf_assets


def _split() -> Split:
    arr = lambda *x: np.array(x, dtype=np.int64)  # noqa: E731
    return Split("leave_one_out", 0, 10, [arr(0, 1, 2, 3), arr(4, 5, 1), arr(6, 7)], [arr(8), arr(2), arr(1)],
                 [arr(9), arr(6), arr(3)], 0)


def test_hold_out_removes_items_from_train_and_valid_but_keeps_test_targets() -> None:
    split = _split()
    held = held_out_items(split, 0.3, seed=4)
    assert len(held) == 3 and np.array_equal(held, np.sort(held)) and set(held) <= set(range(10))
    assert np.array_equal(held, held_out_items(split, 0.3, seed=4))  # seeded
    cut = hold_out(split, np.array([1, 6, 8]))
    assert [t.tolist() for t in cut.train] == [[0, 2, 3], [4, 5], [7]]
    assert [v.tolist() for v in cut.valid] == [[], [2], []]  # a held-out valid target leaves its user without one
    assert [t.tolist() for t in cut.test] == [[9], [6], [3]]
    assert cut.eval_users("valid").tolist() == [1]
    assert cold_targets(cut, np.array([1, 6, 8])).tolist() == [False, True, False]
    assert hold_out(split, np.zeros(0, dtype=np.int64)) is split
    with pytest.raises(ValueError, match="share"):
        held_out_items(split, 1.0, 0)


def test_full_softmax_candidates_leave_out_held_items() -> None:
    train = [np.array([0, 1, 2, 4], dtype=np.int64), np.array([2, 4, 5], dtype=np.int64)]
    candidates = np.array([0, 1, 2, 4, 5], dtype=np.int64)  # item 3 held out
    b = sasrec_batch(np.array([[0, 4], [1, 3]]), train, 4, np.zeros(6, dtype=np.float32), True, candidates)
    assert b.cand_idx.tolist() == candidates.tolist() and len(b.log_q) == len(candidates)
    targets = candidates[b.target.numpy()]
    assert targets.tolist() == [1, 2, 4, 4, 5]  # each query's positive, found among the candidates
    full = sasrec_batch(np.array([[0, 4], [1, 3]]), train, 4, np.zeros(6, dtype=np.float32), True)
    assert full.cand_idx.tolist() == list(range(6)) and full.target.tolist() == [1, 2, 4, 4, 5]


@pytest.mark.parametrize(("tower", "precision"), [("hybrid", "fp32"), ("hybrid", "bf16"), ("id", "fp32"),
                                                  ("text", "fp32")])
def test_holdout_training_and_new_item_scoring(tmp_path: Path, assets, tower: str, precision: str) -> None:
    cfg = parse(cli.TrainCli, [*tcf_argv(*assets, tmp_path / "ck"), "--model.item-tower", tower, "--train.epochs",
                               "2", "--recipe.holdout-items", "0.2", "--recipe.holdout-seed", "3",
                               "--recipe.loss", "softmax", "--precision", precision], presets=cli.SCHEDULES)
    cli.train(cfg)
    ck = load_checkpoint(cfg.out)
    held = np.asarray(ck.config["holdout"]["items"])
    assert len(held) > 0 and ck.config["holdout"]["share"] == 0.2
    assert not np.isin(np.concatenate(ck.split.train + ck.split.valid), held).any()
    assert cold_targets(ck.split, held).any()  # some users' test item is a held-out one
    users = ck.split.eval_users("test")[:4]
    hist = [ck.split.seen("test")[u] for u in users]
    scores = make_scorer(ck.model, held)(users, hist)
    warm = make_scorer(ck.model)(users, hist)
    known = np.setdiff1d(np.arange(ck.split.num_items), held)
    assert np.allclose(scores[:, known], warm[:, known], atol=1e-5)  # known items score as before
    if tower == "id":
        assert np.isneginf(scores[:, held]).all()  # an ID tower cannot score an item it never saw
    elif tower == "text":
        assert np.allclose(scores, warm, atol=1e-5)
    else:  # hybrid: a new item is its text part alone, as UpsertItems serves it
        with torch.no_grad():
            text_only = ck.model.item_tower.text(torch.as_tensor(held))
        vecs = ck.model.all_item_vectors()
        vecs[torch.as_tensor(held)] = text_only
        user = ck.model.user_vectors(users, hist, vecs)
        assert np.allclose(scores[:, held], (user @ text_only.T).numpy(), atol=1e-5)
        assert not np.allclose(scores[:, held], warm[:, held], atol=1e-5)


def test_report_has_new_and_known_item_columns(tmp_path: Path, assets) -> None:
    outs = train_held_out_towers(assets, tmp_path, ("hybrid", "id"), 0.2)
    assert cli.eval_main([*outs, "--reference", "ID-SASREC", "--report", "cold", "--results-dir",
                          str(tmp_path / "r"), "--no-serving-cost"]) == 0
    payload = json.loads((tmp_path / "r" / "cold.json").read_text())
    (section,) = payload["sections"]
    assert section["new_users"] > 0 and section["new_users"] + section["known_users"] == \
        section["split_counts"]["evaluated_users_test"]
    by = {v["label"]: v for v in section["variants"]}
    assert by["ID-SASREC"]["test"]["hr@10|new"] == 0.0  # cannot rank an item it has no vector for
    assert by["most_popular"]["test"]["hr@10|new"] == 0.0  # no training interactions: ranked last
    assert "hr@10|new" in by["hybrid text(enc, N=0)-SASREC"]["vs_reference"]
    md = (tmp_path / "r" / "cold.md").read_text()
    assert "cold start:" in md and "HR@10, new items" in md


def test_coldstart_bench_from_a_holdout_checkpoint(tmp_path: Path, assets) -> None:
    """Exported without its held-out items, which come back by UpsertItems: gRPC ranks them exactly as
    the server's code does in process, and close to the PyTorch cold-start figure."""
    from benchmarks.coldstart import ColdStartConfig, from_checkpoint
    from models.tcf.bundle import load_bundle

    cfg = parse(cli.TrainCli, [*tcf_argv(*assets, tmp_path / "ck"), "--model.item-tower", "hybrid",
                               "--train.epochs", "2", "--recipe.holdout-items", "0.25"], presets=cli.SCHEDULES)
    cli.train(cfg)
    ck = load_checkpoint(cfg.out)
    held = set(np.asarray(ck.config["holdout"]["items"]).tolist())
    bundle = load_bundle(cfg.out)
    assert len(bundle.item_ids) == len(ck.items) - len(held)
    assert not {ck.items.ids[r] for r in held} & set(bundle.item_ids)
    assert all(h.max(initial=-1) < len(bundle.item_ids) for h in bundle.user_histories)
    result = from_checkpoint(ColdStartConfig(cfg.out, work=tmp_path / "repo"))
    assert result["requests"] > 0 and result["new_items"] == len(held)
    assert result["identical_rankings"] and result["grpc_hr@10"] == result["offline_hr@10"]
    assert abs(result["pytorch_hr@10"] - result["offline_hr@10"]) <= 2 / result["requests"] + 1e-9
    assert result["upsert_ms"]["n"] == len(held)
