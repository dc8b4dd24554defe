"""TCF training end to end on tiny data: checkpoint round trip, strict loading, resume, eval report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.config import parse
from models.metrics import evaluate
from models.tcf import cli
from models.tcf.checkpoint import load_checkpoint
from models.tcf.train import make_scorer
from models.tiny import tcf_argv, write_encoder
from models.training.checkpoint import WEIGHTS, file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def assets(tcf_assets: tuple[Path, Path]) -> tuple[Path, Path]:
    return tcf_assets


def config(assets: tuple[Path, Path], out: Path, *flags: str) -> cli.TrainCli:
    return parse(cli.TrainCli, [*tcf_argv(*assets, out), *flags], presets=cli.SCHEDULES)


@pytest.mark.parametrize("towers", [("sasrec", "text", 1), ("dssm", "text", 0), ("sasrec", "id", 0)])
def test_checkpoint_round_trip(tmp_path: Path, assets, towers) -> None:
    user, item, n = towers
    cfg = config(assets, tmp_path / "ck", "--model.user-tower", user, "--model.item-tower", item,
                 "--lm.unfreeze-top", str(n), "--train.epochs", "3")
    log = cli.train(cfg)
    assert len(log["epochs"]) == 3 and log["wall_s"]["train"] > 0
    saved = json.loads((cfg.out / "config.json").read_text())
    assert saved["kind"] == "tcf" and saved["user_tower"] == user and saved["item_tower"] == item
    ck = load_checkpoint(cfg.out, preinfer_cache=None)
    valid = evaluate(make_scorer(ck.model), ck.split, "valid", ("hr@10", "ndcg@10"))
    # the loaded model reproduces the metric the trainer measured on its in-memory model at that epoch
    assert valid["ndcg@10"] == pytest.approx(saved["best"]["valid"]["ndcg@10"], abs=1e-9)
    again = load_checkpoint(cfg.out)
    s1 = make_scorer(ck.model)(ck.split.eval_users("test")[:5], [ck.split.train[u] for u in range(5)])
    s2 = make_scorer(again.model)(ck.split.eval_users("test")[:5], [ck.split.train[u] for u in range(5)])
    assert (s1 == s2).all()
    if n:
        assert any(k.startswith("item_tower.top.") for k in load_file(str(cfg.out / WEIGHTS)))


def test_strict_load_rejects_tampering(tmp_path: Path, assets) -> None:
    cfg = config(assets, tmp_path / "ck", "--train.epochs", "1")
    cli.train(cfg)
    weights, conf = cfg.out / WEIGHTS, cfg.out / "config.json"
    original = weights.read_bytes()
    state = load_file(str(weights))

    def rewrite(new_state: dict) -> None:
        save_file(new_state, str(weights))
        c = json.loads(conf.read_text())
        c["weights_sha256"] = file_sha256(weights)
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


def test_text_encoder_must_be_the_one_trained_on(tmp_path: Path, assets) -> None:
    enc = write_encoder(tmp_path / "enc", "bert", layers=2)
    cfg = parse(cli.TrainCli, [*tcf_argv(enc, assets[1], tmp_path / "ck"), "--train.epochs", "1"])
    cli.train(cfg)
    write_encoder(enc, "bert", layers=2, seed=1)  # other weights at the same path
    with pytest.raises(ValueError, match="pass the original LM"):
        load_checkpoint(cfg.out)


def test_resume_continues(tmp_path: Path, assets) -> None:
    out = tmp_path / "ck"
    first = cli.train(config(assets, out, "--train.epochs", "2"))
    assert len(first["epochs"]) == 2
    second = cli.train(config(assets, out, "--train.epochs", "3"))
    assert len(second["epochs"]) == 3 and second["epochs"][:2] == first["epochs"]  # one more epoch, not three
    with pytest.raises(ValueError, match="different model setup"):
        cli.train(config(assets, out, "--train.epochs", "4", "--model.dim", "8"))
    fresh = cli.train(config(assets, tmp_path / "fresh", "--train.epochs", "3"))
    assert len(fresh["epochs"]) == 3


def test_epochs_zero_is_honoured(tmp_path: Path, assets) -> None:
    log = cli.train(config(assets, tmp_path / "ck", "--schedule", "full", "--train.epochs", "0"))
    assert log["epochs"] == [] and log["train"]["epochs"] == 0 and log["train"]["patience"] == 10
    load_checkpoint(tmp_path / "ck")  # the untrained model, complete


def test_loss_auto_is_full_softmax_while_the_catalogue_fits() -> None:
    from models.tcf.train import FULL_SOFTMAX_MAX_ITEMS, RecipeConfig

    assert RecipeConfig().full_softmax(FULL_SOFTMAX_MAX_ITEMS)
    assert not RecipeConfig().full_softmax(FULL_SOFTMAX_MAX_ITEMS + 1)
    assert not RecipeConfig(loss="ibce").full_softmax(10) and RecipeConfig(loss="softmax").full_softmax(10**7)


def test_eval_report(tmp_path: Path, assets) -> None:
    """Seeds grouped by label, paired differences against the reference, one section per data
    preparation stating what was really kept, baselines per section, serving cost per checkpoint."""
    text_cfg = config(assets, tmp_path / "ck", "--schedule", "short", "--train.epochs", "1")
    cli.train(text_cfg)
    ids = []
    for seed in (0, 1):
        ids.append(config(assets, tmp_path / f"ck_id{seed}", "--schedule", "short", "--train.epochs", "1",
                          "--model.item-tower", "id",
                          "--train.seed", str(seed), "--recipe.loss", "ibce"))
        cli.train(ids[-1])
    full = config(assets, tmp_path / "ck_full", "--train.epochs", "1", "--recipe.keep-last", "0")
    cli.train(full)
    argv = ["--checkpoint", str(text_cfg.out), "--label", "text",
            *[a for c in ids for a in ("--checkpoint", str(c.out), "--label", "id")],
            "--checkpoint", str(full.out), "--label", "text-full", "--reference", "nowhere", "--reference", "id",
            "--report", "tcf_test", "--results-dir", str(tmp_path / "results"), "--serving-length", "4"]
    assert cli.eval_main(argv) == 0
    payload = json.loads((tmp_path / "results" / "tcf_test.json").read_text())
    truncated, whole = payload["sections"]
    assert "last 11 interactions kept" in truncated["data"] and "whole history" in whole["data"]
    labels = [v["label"] for v in truncated["variants"]]
    assert labels[:2] == ["text", "id"] and {"most_popular", "ease"} <= set(labels)
    text, ident = truncated["variants"][:2]
    assert ident["seeds"] == 2 and ident["seed_sd"]["hr@10"] is not None and ident["vs_reference"] == {}
    diff = text["vs_reference"]["hr@10"]
    assert diff["n"] == truncated["split_counts"]["evaluated_users_test"] and diff["se"] >= 0
    assert text["test"]["hr@10"] - ident["test"]["hr@10"] == pytest.approx(diff["mean"])
    assert "hr@10|rare" in text["test"] and text["runs"][0]["precision"] == "fp32"
    assert text["runs"][0]["user_encoder"]["length"] == 4 and text["runs"][0]["user_encoder"]["p50_ms"] > 0
    assert whole["variants"][0]["label"] == "text-full" and whole["reference"] is None
    md = (tmp_path / "results" / "tcf_test.md").read_text()
    assert md.startswith("# TCF") and "max_seq_len + 3" not in md and "Reference points" not in md


def test_default_schedule_is_the_validated_variant_and_flags_win() -> None:
    d = parse(cli.TrainCli, [], presets=cli.SCHEDULES)
    assert (d.schedule, d.model.item_tower, d.model.mlp_input_norm, d.model.max_seq_len) == ("default", "hybrid", True, 50)
    assert (d.recipe.keep_last, d.recipe.loss, d.train.patience, d.model.id_dropout) == (0, "ibce", 30, 0.7)
    short = parse(cli.TrainCli, ["--schedule", "short"], presets=cli.SCHEDULES)  # the paper's preparation
    assert (short.model.item_tower, short.model.max_seq_len, short.recipe.keep_last) == ("text", 20, -1)
    flagged = parse(cli.TrainCli, ["--model.item-tower", "text", "--recipe.loss", "auto"], presets=cli.SCHEDULES)
    assert (flagged.model.item_tower, flagged.recipe.loss, flagged.model.max_seq_len) == ("text", "auto", 50)
