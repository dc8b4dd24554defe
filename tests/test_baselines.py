"""Baselines: trained on train only, deterministic, and ALS/EASE beat popularity on clear structure."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_data

from models.baselines import fit, run_baselines
from models.baselines.als import ALSConfig
from models.baselines.bpr import BPRConfig
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
