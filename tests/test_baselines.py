"""Baselines: trained on train only, deterministic, and ALS/EASE beat popularity on clear structure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_data

from models.baselines import fit, run_baselines
from models.baselines.als import ALSConfig
from models.baselines.bpr import BPR, BPRConfig
from models.data.splits import Split, make_split
from models.metrics import evaluate


def test_popularity_ranks_most_frequent_unseen_first():
    # item 2 is held by 3 users, item 0 by 2, item 1 by 1 (in train).
    split = Split(
        "random_80_10_10",
        0,
        4,
        train=[np.array([2, 0]), np.array([2, 1]), np.array([2, 0])],
        valid=[np.array([], int)] * 3,
        test=[np.array([], int)] * 3,
        too_short=0,
    )
    pop = fit("most_popular", split)
    scores = pop(np.array([1]), [np.array([2, 1])])
    assert np.argmax(np.where(np.isin(np.arange(4), [2, 1]), -np.inf, scores[0])) == 0
    assert scores[0].tolist() == [2.0, 1.0, 3.0, 0.0]


def test_popularity_counts_train_only():
    split = Split(
        "leave_one_out",
        0,
        3,
        train=[np.array([0]), np.array([0])],
        valid=[np.array([1]), np.array([1])],
        test=[np.array([2]), np.array([2])],
        too_short=0,
    )
    assert fit("most_popular", split)(np.array([0]), [np.array([0])])[0].tolist() == [2.0, 0.0, 0.0]


def test_als_and_ease_beat_popularity_on_two_groups(two_groups):
    split = make_split(two_groups, "random_80_10_10", 0)
    metrics = ["recall@5"]
    pop = evaluate(fit("most_popular", split), split, "test", metrics)["recall@5"]
    als = evaluate(
        fit("als", split, ALSConfig(factors=8, regularization=1.0, iterations=10)), split, "test", metrics
    )
    ease = evaluate(fit("ease", split), split, "test", metrics)
    assert als["recall@5"] > pop + 0.1, (als, pop)
    assert ease["recall@5"] > pop + 0.1, (ease, pop)


def test_implicit_models_are_deterministic(two_groups):
    split = make_split(two_groups, "random_80_10_10", 0)
    users, history = np.arange(5), split.seen("test")[:5]
    for name, cfg in [
        ("als", ALSConfig(factors=8, iterations=5)),
        ("bpr", BPRConfig(factors=8, iterations=5)),
    ]:
        a = fit(name, split, cfg)(users, history)
        b = fit(name, split, cfg)(users, history)
        assert a.shape == (5, two_groups.num_items)
        np.testing.assert_array_equal(a, b)


def test_run_baselines_on_one_split(two_groups):
    split = make_split(two_groups, "leave_one_out", 0)
    out = run_baselines(two_groups, split, names=("most_popular", "ease"), tune=False)
    assert set(out) == {"most_popular", "ease"}
    assert set(out["ease"]) == {"hr@10", "ndcg@10", "users"} and out["ease"]["users"] == 60
    with pytest.raises(ValueError, match="unknown baseline 'svd'"):
        run_baselines(two_groups, split, names=("svd",))
    other = make_data([0, 1], [0, 1])
    with pytest.raises(ValueError, match="not the same data"):
        run_baselines(other, split)


def _group_split_with_a_switching_user() -> Split:
    """Users of group A (items 0-11) and B (12-23); user 0 watched two A items in train, then eight
    B items (valid), and its test item is B's: only a model that sees the valid items knows it."""
    rng = np.random.default_rng(0)
    empty = np.zeros(0, dtype=np.int64)
    train = [np.array([0, 1])]
    for u in range(60):
        offset = 0 if u < 30 else 12
        train.append(np.sort(rng.choice(12, size=8, replace=False) + offset))
    valid = [np.arange(12, 20)] + [empty] * 60
    test = [np.array([20])] + [empty] * 60
    return Split("random_80_10_10", 0, 24, train, valid, test, too_short=0)


def test_bpr_scores_the_test_part_with_the_valid_items_as_history():
    """BPR has no fold-in: scored with factors fitted on train only, the switching user still looks
    like an A user and its B test item misses; refitted on train + valid (the history every other
    model reads at test time), it hits. Fails on the old train-only scoring."""
    from models.baselines.runner import history_split, run_baseline

    split = _group_split_with_a_switching_user()
    cfg = BPRConfig(factors=8, learning_rate=0.05, regularization=0.001, iterations=300)
    result = run_baseline("bpr", split, ["hr@10"], cfg)
    assert result.test["users"] == 1.0
    assert result.test["hr@10"] == 1.0
    train_only = evaluate(fit("bpr", split, cfg), split, "test", ["hr@10"])["hr@10"]
    assert train_only == 0.0  # the handicap the refit removes
    refit = history_split(split, "test")
    assert refit.train[0].tolist() == [0, 1, *range(12, 20)] and all(len(v) == 0 for v in refit.valid)
    assert history_split(split, "valid") is split


def test_bpr_refits_warm_from_its_train_factors_and_leaves_them_as_they_were():
    """The refit costs refit_iterations epochs, not a whole fit: it starts from the train fit's factors
    (closer to them after 10 epochs than a scratch fit on the same rows ever is) and copies them, so the
    train fit still scores the valid part. refit_iterations 0 is the scratch refit."""
    from models.baselines.runner import history_split

    split = _group_split_with_a_switching_user()
    cfg = BPRConfig(factors=8, learning_rate=0.05, iterations=100, refit_iterations=10)
    bpr = fit("bpr", split, cfg)
    before = np.array(bpr.model.item_factors, copy=True)
    rows = history_split(split, "test")
    warm = bpr.refit(rows)
    assert np.array_equal(np.asarray(bpr.model.item_factors), before)  # the train fit is untouched
    scratch = BPR(dataclasses.replace(cfg, refit_iterations=0)).fit(split).refit(rows)
    assert np.array_equal(np.asarray(scratch.model.item_factors), np.asarray(fit("bpr", rows, cfg).model.item_factors))

    def gap(x) -> float:
        return float(np.abs(np.asarray(x.model.item_factors) - before).mean())

    assert 0 < gap(warm) < gap(scratch) / 2


def test_baselines_that_read_the_history_are_not_refitted():
    from models.baselines.runner import fit_for

    split = _group_split_with_a_switching_user()
    ease = fit("ease", split)
    assert fit_for("ease", split, "test", fitted=ease) is ease
    bpr = fit("bpr", split, BPRConfig(factors=4, iterations=2))
    assert fit_for("bpr", split, "valid", fitted=bpr) is bpr
    assert fit_for("bpr", split, "test", BPRConfig(factors=4, iterations=2), fitted=bpr) is not bpr


def test_a_test_mask_removes_items_the_scorer_never_saw():
    """Items in `test_mask` (held-out items a user watched) are masked though they are not history."""
    from models.baselines.runner import run_baseline

    split = Split("leave_one_out", 0, 4, train=[np.array([0]), np.array([0, 1])], valid=[np.array([1]), np.array([2])],
                  test=[np.array([3]), np.array([3])], too_short=0)
    # most-popular ranks 0, 1, 2 (masked: seen), then 3; with item 2 also masked for user 0, HR@1 = 1
    plain = run_baseline("most_popular", split, ["hr@1"])
    masked = run_baseline("most_popular", split, ["hr@1"], test_mask=[np.array([2]), np.zeros(0, np.int64)])
    assert plain.test_per_user["hr@1"].tolist() == [0.0, 1.0]
    assert masked.test_per_user["hr@1"].tolist() == [1.0, 1.0]
