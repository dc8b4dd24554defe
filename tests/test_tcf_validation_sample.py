"""TCF validation on a fixed, seeded sample of the validation users: the same users every epoch and every
run, its size in the checkpoint, the training log and the eval report's description; all users when the
sample is as big as the part (ML-100K's 943 users under the default 2000)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import parse
from models.tcf import cli
from models.tcf.report import preparation
from models.tiny import tcf_argv
from models.training.validation import sample_users


def test_sample_is_fixed_by_its_seed_and_everyone_when_small() -> None:
    users = np.arange(0, 5000, 2)
    a, b = sample_users(users, 100, seed=3), sample_users(users, 100, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100 and np.isin(a, users).all()
    assert np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_users(users, 100, seed=4))
    assert np.array_equal(sample_users(users[:943], 2000), users[:943])
    assert np.array_equal(sample_users(users, 0), users)


def test_training_validates_on_the_sample_and_records_its_size(tmp_path: Path,
                                                              tcf_assets: tuple[Path, Path]) -> None:
    out = tmp_path / "ck"
    cfg = parse(cli.TrainCli, [*tcf_argv(*tcf_assets, out), "--train.epochs", "1", "--recipe.valid-users", "5"],
                presets=cli.SCHEDULES)
    task = cli.build_task(cfg)
    every = task.split.eval_users("valid")
    assert len(every) > 5
    assert np.array_equal(task.valid_users, sample_users(every, 5, 0))
    seen: list[int] = []
    real = cli.TCFTask.validate

    def counting(self, place):
        out = real(self, place)
        seen.append(len(self.valid_users))
        return out

    cli.TCFTask.validate = counting  # type: ignore[method-assign]
    try:
        cli.train(cfg)
    finally:
        cli.TCFTask.validate = real  # type: ignore[method-assign]
    assert seen == [5]
    config = json.loads((out / "config.json").read_text())
    assert config["validation_users"] == {"sampled": 5, "of": len(every), "seed": 0}
    log = json.loads((out / "train" / "log.json").read_text())
    assert log["validation_users"]["sampled"] == 5 and log["steps_per_epoch"] >= 1
    assert f"5 of the {len(every)} validation users" in preparation(config, task.split.num_items)
    assert "validation users" not in preparation({**config, "validation_users": {"sampled": 9, "of": 9, "seed": 0}},
                                                 task.split.num_items)


def test_own_item_mask_is_the_per_query_definition() -> None:
    """The IBCE batch's [queries, candidates] own-item mask, computed once per distinct user (the 100k-user
    epoch's largest cost when computed per query), equals the per-query definition."""
    from models.tcf.data import _own

    rng = np.random.default_rng(0)
    items = [rng.choice(100, size=rng.integers(1, 30), replace=False) for _ in range(20)]
    queries, cand = rng.integers(0, 20, size=300), np.unique(rng.integers(0, 100, size=50))
    want = np.stack([np.isin(cand, items[u]) for u in queries])
    assert np.array_equal(_own(queries, cand, items), want)
    assert _own(queries[:0], cand, items).shape == (0, len(cand))
