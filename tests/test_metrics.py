"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.data.splits import Split
from models.metrics import evaluate, evaluate_per_user, hits_matrix, per_user_metrics, top_k
from models.stats import mean_se, paired_difference


def _scores(order: list[int], num_items: int) -> np.ndarray:
    """One row whose ranking is `order` (best first); other items score lowest."""
    s = np.full((1, num_items), -100.0)
    for rank, item in enumerate(order):
        s[0, item] = 100.0 - rank
    return s


def test_recall_uses_min_k_and_targets():
    scores = _scores([0, 1, 2, 3, 4, 5], 10)
    # |test| = 2 < K = 5: both found -> 1.0 (not 2/5).
    small = per_user_metrics(scores, [np.array([], int)], [np.array([1, 4])], ["recall@5"])
    assert small["recall@5"][0] == pytest.approx(1.0)
    # |test| = 4 > K = 2: one hit in top 2 -> 1 / min(2, 4) = 0.5.
    big = per_user_metrics(scores, [np.array([], int)], [np.array([1, 6, 7, 8])], ["recall@2"])
    assert big["recall@2"][0] == pytest.approx(0.5)


def test_ndcg_ideal_normalisation_and_hr():
    scores = _scores([0, 1, 2, 3], 6)
    targets = [np.array([1, 3])]  # hits at ranks 2 and 4
    out = per_user_metrics(scores, [np.array([], int)], targets, ["ndcg@4", "ndcg@1", "hr@1", "hr@2"])
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert out["ndcg@4"][0] == pytest.approx(dcg / ideal)
    assert out["ndcg@1"][0] == pytest.approx(0.0)
    assert out["hr@1"][0] == 0.0 and out["hr@2"][0] == 1.0
    perfect = per_user_metrics(_scores([1, 3, 0], 6), [np.array([], int)], targets, ["ndcg@10"])
    assert perfect["ndcg@10"][0] == pytest.approx(1.0)


def test_seen_items_are_masked():
    scores = _scores([0, 1, 2], 5)
    # Item 0 is seen: it must not take the top slot, so target 1 moves up to rank 1.
    out = per_user_metrics(scores, [np.array([0])], [np.array([1])], ["hr@1", "ndcg@1"])
    assert out["hr@1"][0] == 1.0 and out["ndcg@1"][0] == pytest.approx(1.0)


def test_evaluate_passes_history_and_averages():
    split = Split(
        protocol="leave_one_out",
        seed=0,
        num_items=4,
        train=[np.array([0]), np.array([1]), np.array([0, 1])],
        valid=[np.array([2]), np.array([3]), np.array([], int)],
        test=[np.array([3]), np.array([0]), np.array([], int)],
        too_short=1,
    )
    calls = []

    def scorer(users, history):
        calls.append([h.tolist() for h in history])
        return np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (len(users), 1))

    res = evaluate(scorer, split, "test", ["hr@1"])
    # user 0 saw {0, 2}: top unseen = 1, target 3 -> miss; user 1 saw {1, 3}: top = 0 = target -> hit.
    assert res["hr@1"] == pytest.approx(0.5) and res["users"] == 2
    assert sorted(calls[0][0]) == [0, 2] and sorted(calls[0][1]) == [1, 3]


def test_bad_metric_name():
    with pytest.raises(ValueError, match="accepted: recall@K, ndcg@K, hr@K"):
        per_user_metrics(np.zeros((1, 3)), [np.array([], int)], [np.array([1])], ["map@10"])


def test_top_k_breaks_ties_at_the_boundary_by_lower_index():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 40)).astype(np.float32)  # many ties, everywhere
    scores[3] = -np.inf  # a row that is all ties at -inf
    for k in (1, 5, 17, 40, 60):
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # score desc, index asc
        np.testing.assert_array_equal(top_k(scores, k), expected)


def test_top_k_matches_a_full_sort_with_and_without_ties_in_one_batch():
    """Rows crowded with ties at the k-th score take a slower path than the others; both must rank as a
    full sort by (score desc, index asc) does, whichever rows of the batch take which path."""
    rng = np.random.default_rng(3)
    scores = np.stack([rng.standard_normal(300), rng.integers(0, 4, 300), np.full(300, 2.0),
                       np.r_[np.full(10, 5.0), rng.standard_normal(290)]]).astype(np.float32)
    for k in (1, 7, 50, 300):
        expected = np.stack([np.lexsort((np.arange(300), -row))[:k] for row in scores])
        assert np.array_equal(top_k(scores, k), expected), k


def test_top_k_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([[0.0, np.nan, 1.0]]), 2)


def test_evaluate_per_user_matches_the_means():
    split = Split("leave_one_out", 0, 4, [np.array([0]), np.array([1])], [np.array([2]), np.array([3])],
                  [np.array([3]), np.array([0])], 0)

    def scorer(users, history):
        return np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (len(users), 1))

    users, per_user = evaluate_per_user(scorer, split, "test", ["hr@1"])
    assert users.tolist() == [0, 1] and per_user["hr@1"].tolist() == [0.0, 1.0]
    assert evaluate(scorer, split, "test", ["hr@1"])["hr@1"] == per_user["hr@1"].mean()


def test_paired_difference_and_its_standard_error():
    a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.5) and d.n == 4
    assert d.se == pytest.approx(np.std(a - b, ddof=1) / 2)
    assert math.isnan(mean_se([0.3]).se)
    with pytest.raises(ValueError, match="same users"):
        paired_difference(a, b[:3])


def test_hits_matrix_equals_a_membership_test_per_user():
    rng = np.random.default_rng(0)
    for _ in range(100):
        users, items, k = rng.integers(1, 40), rng.integers(1, 300), rng.integers(1, 30)
        topk = rng.integers(0, items, size=(users, k))
        targets = [rng.choice(items, size=rng.integers(0, min(items, 20) + 1), replace=False) for _ in range(users)]
        want = np.array([np.isin(topk[u], t) for u, t in enumerate(targets)], dtype=np.float64)
        np.testing.assert_array_equal(hits_matrix(topk, targets), want)
    assert hits_matrix(np.zeros((0, 5), dtype=np.int64), []).shape == (0, 5)
