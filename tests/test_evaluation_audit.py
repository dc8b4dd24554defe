"""Issue #27: splits recorded by hash, commands recorded with presets expanded, TCF validation in the
test's precision, and cold start measured against real new-item baselines with every watched item masked."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from training_kit import train_held_out_towers

from common.config import parse
from common.errors import CheckpointError, ConfigError
from models.comparison import seed_differences
from models.data.splits import Split
from models.reports import explicit_argv, explicit_command
from models.tcf import cli
from models.tcf.checkpoint import load_checkpoint
from models.tcf.holdout import (
    content_knn,
    held_seen,
    hold_out,
    random_new_expected,
    text_popularity,
)
from models.tiny import tcf_argv
from models.training.checkpoint import check_split, split_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")
arr = lambda *x: np.array(x, dtype=np.int64)  # noqa: E731


@pytest.fixture
def assets(tcf_assets: tuple[Path, Path]) -> tuple[Path, Path]:
    return tcf_assets


def _split() -> Split:
    return Split("leave_one_out", 0, 10, [arr(0, 1, 2, 3), arr(4, 5, 1), arr(6, 7)], [arr(8), arr(2), arr(1)],
                 [arr(9), arr(6), arr(3)], 0)


# ---- the split's hash ----------------------------------------------------------------------------------------

def test_split_record_hashes_the_exact_assignment() -> None:
    split = _split()
    rec = split_record(split)
    check_split(rec, split, Path("ck"))  # the same split passes
    check_split({"protocol": "leave_one_out"}, split, Path("ck"))  # an old record without a hash: nothing to check
    moved = copy.deepcopy(split)
    moved.valid[0], moved.test[0] = arr(9), arr(8)  # same items, one swapped between valid and test
    with pytest.raises(CheckpointError, match="not the one the checkpoint was trained on") as exc:
        check_split(rec, moved, Path("ck"))
    assert "\n" not in str(exc.value)


def test_tcf_checkpoint_refuses_a_split_that_is_not_its_own(tmp_path: Path, assets) -> None:
    cfg = parse(cli.TrainCli, [*tcf_argv(*assets, tmp_path / "ck"), "--train.epochs", "1"], presets=cli.SCHEDULES)
    cli.train(cfg)
    config = json.loads((cfg.out / "config.json").read_text())
    assert config["split"]["sha256"] == load_checkpoint(cfg.out).split.fingerprint()
    split_json = json.loads((cfg.out / "split.json").read_text())
    u = next(i for i, v in enumerate(split_json["valid"]) if v)
    split_json["valid"][u], split_json["test"][u] = split_json["test"][u], split_json["valid"][u]
    (cfg.out / "split.json").write_text(json.dumps(split_json))
    with pytest.raises(CheckpointError, match="is not the one the checkpoint was trained on"):
        load_checkpoint(cfg.out)
    with pytest.raises(CheckpointError, match="is not the one the checkpoint was trained on"):
        cli.eval_main(["--checkpoint", str(cfg.out), "--no-baselines", "--no-serving-cost", "--report", ""])


# ---- commands with presets expanded -----------------------------------------------------------------------

def test_recorded_command_reparses_to_the_same_config_whatever_the_preset_becomes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    typed = ["--schedule", "default", "--train.seed", "2", "--out", "x y"]
    cfg = parse(cli.TrainCli, typed, presets=cli.SCHEDULES)
    recorded = explicit_command("llmrec train tcf", cfg)
    argv = shlex.split(recorded)[3:]
    assert argv[:2] == ["--schedule", "default"] and "--model.id-dropout" in argv and "--out" in argv
    assert parse(cli.TrainCli, argv, presets=cli.SCHEDULES) == cfg
    changed = copy.deepcopy(cli.SCHEDULES)
    changed["default"]["model"]["id_dropout"] = 0.5  # what happened to two TCF rows
    changed["default"]["train"]["epochs"] = 7
    monkeypatch.setattr(cli, "SCHEDULES", changed)
    assert parse(cli.TrainCli, typed, presets=cli.SCHEDULES) != cfg  # the typed command now trains another model
    assert parse(cli.TrainCli, argv, presets=cli.SCHEDULES) == cfg  # the recorded one does not


def test_cllm4rec_recorded_command_round_trips() -> None:
    from models.cllm4rec import cli as ccli

    for typed in (["--schedule", "default"], ["--schedule", "full", "--lm.lora-layers", "1", "2",
                                              "--recipe.stage-a-plan", ""]):
        cfg = parse(ccli.TrainCli, typed, presets=ccli.SCHEDULES)
        assert parse(ccli.TrainCli, explicit_argv(cfg), presets=ccli.SCHEDULES) == cfg


def test_training_records_the_explicit_command_and_the_report_shows_real_seed_differences(
        tmp_path: Path, assets) -> None:
    outs = []
    for seed in (0, 1):
        cfg = parse(cli.TrainCli, [*tcf_argv(*assets, tmp_path / f"s{seed}"), "--train.epochs", "1", "--train.seed",
                                   str(seed), "--model.item-tower", "id"], presets=cli.SCHEDULES)
        cli.train(cfg)
        recorded = json.loads((cfg.out / "config.json").read_text())["command_explicit"]
        assert parse(cli.TrainCli, shlex.split(recorded)[3:], presets=cli.SCHEDULES) == cfg
        outs += ["--checkpoint", str(cfg.out), "--label", "id"]
    assert cli.eval_main([*outs, "--no-baselines", "--no-serving-cost", "--report", "r", "--results-dir",
                          str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "r.md").read_text()
    assert f"another seed differs by: `--out {tmp_path / 's1'} --train.seed 1`" in md


def test_seed_differences_names_every_changed_flag() -> None:
    a = "llmrec train tcf --out a --train.seed 0 --model.id-dropout 0.7 --train.progress"
    b = "llmrec train tcf --out b --train.seed 1 --model.id-dropout 0.5 --train.progress"
    assert seed_differences(a, b) == "--out b --train.seed 1 --model.id-dropout 0.5"
    assert seed_differences(a, a) == "nothing"


# ---- TCF validation in fp32 ---------------------------------------------------------------------------------

def test_tcf_validation_runs_in_fp32_inside_the_training_autocast(tmp_path: Path, assets) -> None:
    from models.training.distributed import Placement

    cfg = parse(cli.TrainCli, tcf_argv(*assets, tmp_path / "ck"), presets=cli.SCHEDULES)
    task = cli.build_task(cfg)
    seen: list[bool] = []
    dtypes: list[torch.dtype] = []
    original = task.model.user_vectors

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        out = original(*args, **kwargs)
        dtypes.append(out.dtype)
        return out

    task.model.user_vectors = spy  # type: ignore[method-assign]
    plain = task.validate(Placement())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = task.validate(Placement())
    assert seen and not any(seen) and set(dtypes) == {torch.float32}
    assert plain == under_bf16


# ---- cold start --------------------------------------------------------------------------------------------

def test_held_seen_lists_every_held_out_item_a_user_watched_before_its_test_item() -> None:
    split = _split()
    held = arr(1, 6, 8)
    assert [w.tolist() for w in held_seen(split, held)] == [[1, 8], [1], [1, 6]]
    cut = hold_out(split, held)
    # user 2 watched items 6 and 1 (held out): out of its history, still masked by eval
    assert cut.seen("test")[2].tolist() == [7]


def test_content_knn_scores_by_mean_cosine_to_the_recent_history() -> None:
    emb = np.eye(4, dtype=np.float32)
    emb[3] = np.array([0.6, 0.8, 0, 0], dtype=np.float32)  # item 3: like 1 more than 0
    scores = content_knn(emb, recent=2)(arr(0, 1), [arr(2, 0, 1), arr(2)])
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 0.0, 0.7])  # the last two items (0, 1): item 2 left out
    np.testing.assert_allclose(scores[1], [0.0, 0.0, 1.0, 0.0])


def test_text_popularity_gives_a_new_item_the_count_of_its_text_neighbours() -> None:
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.9, 0.1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    train = [arr(0, 2), arr(0), arr(0, 1), arr(2)]  # counts: 0 -> 3, 1 -> 1, 2 -> 2
    scores = text_popularity(emb, train, held=arr(3), k=1)(arr(0), [arr()])
    np.testing.assert_allclose(scores[0], [3, 1, 2, 3])  # item 3's nearest known item is 0
    scores = text_popularity(emb, train, held=arr(3), k=2)(arr(0), [arr()])
    assert scores[0, 3] == 2.0  # mean of items 0 and 1


def test_random_among_new_is_the_exact_expectation_over_unwatched_new_items() -> None:
    held = np.arange(10, 30, dtype=np.int64)  # 20 new items
    split = Split("leave_one_out", 0, 30, [arr(0, 10, 11), arr(1), arr(2)], [arr(3), arr(4), arr(5)],
                  [arr(12), arr(6), arr(13)], 0)
    watched = held_seen(split, held)
    split = hold_out(split, held)  # what training and eval get: 10 and 11 are out of user 0's history
    out = random_new_expected(split, held, watched)
    # user 0: 18 unwatched new items (10, 11 masked) -> 10/18; user 1: known target -> 0; user 2: 20 -> 10/20
    np.testing.assert_allclose(out["hr@10"], [10 / 18, 0.0, 0.5])
    discount = (1 / np.log2(np.arange(2, 12))).sum()
    np.testing.assert_allclose(out["ndcg@10"], [discount / 18, 0.0, discount / 20])
    unmasked = random_new_expected(split, held, None)  # the old protocol: watched new items still candidates
    assert unmasked["hr@10"][0] == 0.5


def test_cold_start_report_masks_watched_held_out_items_and_ranks_new_item_baselines(tmp_path: Path, assets) -> None:
    outs = train_held_out_towers(assets, tmp_path, ("text", "id"), 0.3)
    ck = load_checkpoint(tmp_path / "text")
    assert ck.held_seen is not None and sum(len(w) for w in ck.held_seen) > 0
    held = np.asarray(ck.config["holdout"]["items"])
    for u, w in enumerate(ck.held_seen):  # watched, held out, never a test target, never in the history
        assert np.isin(w, held).all() and not np.isin(w, ck.split.test[u]).any()
        assert not np.isin(w, ck.split.seen("test")[u]).any()
    assert cli.eval_main([*outs, "--reference", "ID-SASREC", "--report", "cold", "--results-dir",
                          str(tmp_path / "r"), "--no-serving-cost"]) == 0
    payload = json.loads((tmp_path / "r" / "cold.json").read_text())
    (section,) = payload["sections"]
    cold = section["new_items"]
    assert cold["reference"] == "content kNN (enc)" and cold["masked_watched_held_out"] > 0
    rows = {r["label"]: r for r in cold["rows"]}
    assert {"content kNN (enc)", "popularity by text neighbours", "random among new items (told the item is new)",
            "text(enc, N=0)-SASREC", "ID-SASREC", "ease"} <= set(rows)
    assert rows["ID-SASREC"]["test"]["hr@10|new"] == 0.0
    assert rows["random among new items (told the item is new)"]["test"]["hr@10|new"] > 0.0
    diff = rows["text(enc, N=0)-SASREC"]["vs_reference"]["hr@10|new"]
    assert diff["n"] == section["new_users"] and np.isfinite(diff["mean"])
    md = (tmp_path / "r" / "cold.md").read_text()
    assert "**New items**" in md and "Δ HR@10 new vs content kNN (enc)" in md
    # a checkpoint from before the watched held-out items were stored: rebuilt from its data, the same
    from models.tcf.report import watched_held_out

    split_json = json.loads((tmp_path / "text" / "split.json").read_text())
    del split_json["held_seen"]
    (tmp_path / "text" / "split.json").write_text(json.dumps(split_json))
    old = load_checkpoint(tmp_path / "text")
    assert old.held_seen is None
    rebuilt = watched_held_out(old, held, tmp_path / "text")
    assert rebuilt is not None and [w.tolist() for w in rebuilt] == [w.tolist() for w in ck.held_seen]


# ---- --verify: rerun the cheapest recorded row ----------------------------------------------------------------

def test_verify_picks_the_cheapest_row_with_seeds_and_explicit_commands() -> None:
    from models.verify import cheapest_row, with_out

    def row(label: str, seeds: int, train_s: float, explicit: bool = True) -> dict:
        runs = [{"command_explicit": f"llmrec train tcf --out {label}{i}" if explicit else None, "train_s": train_s,
                 "test": {"hr@10": 0.1 + i / 100}} for i in range(seeds)]
        return {"label": label, "seeds": seeds, "test": {"hr@10": 0.1}, "seed_sd": {"hr@10": 0.01 if seeds > 1 else None},
                "runs": runs}

    payload = {"sections": [{"variants": [row("one-seed", 1, 1.0), row("typed", 3, 2.0, explicit=False),
                                          row("slow", 3, 50.0), row("fast", 2, 9.0)]}]}
    picked = cheapest_row(payload, "hr@10")
    assert (picked.label, picked.command, picked.first_seed) == ("fast", "llmrec train tcf --out fast0", 0.1)
    with pytest.raises(ConfigError, match="no row with at least two seeds"):
        cheapest_row({"variants": [row("one-seed", 1, 1.0)]}, "hr@10")
    assert with_out(["--out", "a", "--x", "1", "--out=b"], Path("c")) == ["--x", "1", "--out", "c"]


def test_verify_reruns_a_recorded_row_and_flags_one_that_does_not_reproduce(
        tmp_path: Path, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMREC_WORK_DIR", str(tmp_path / "work"))
    outs = []
    for seed in (0, 1):
        cfg = parse(cli.TrainCli, [*tcf_argv(*assets, tmp_path / f"s{seed}"), "--train.epochs", "1", "--train.seed",
                                   str(seed), "--model.item-tower", "id"], presets=cli.SCHEDULES)
        cli.train(cfg)
        outs += ["--checkpoint", str(cfg.out), "--label", "id"]
    assert cli.eval_main([*outs, "--no-baselines", "--no-serving-cost", "--report", "r", "--results-dir",
                          str(tmp_path / "r")]) == 0
    report = tmp_path / "r" / "r.json"
    payload = json.loads(report.read_text())
    (row,) = payload["sections"][0]["variants"]
    assert row["seeds"] == 2 and [r["test"]["hr@10"] for r in row["runs"]]  # each seed's own figure is kept
    assert cli.eval_main(["--verify", str(report)]) == 0  # the same machine: seed 0 again
    rerun = tmp_path / "work" / "verify" / "tcf"
    assert (rerun / "config.json").is_file()
    assert json.loads((rerun / "config.json").read_text())["split"]["sha256"] == \
        json.loads((tmp_path / "s0" / "config.json").read_text())["split"]["sha256"]
    row["test"]["hr@10"] += 3 * max(row["seed_sd"]["hr@10"], 0.01) + 0.05  # a report the code no longer reproduces
    row["seed_sd"]["hr@10"] = max(row["seed_sd"]["hr@10"], 0.01)
    report.write_text(json.dumps(payload))
    assert cli.eval_main(["--verify", str(report)]) == 1
