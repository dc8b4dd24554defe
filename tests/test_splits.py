"""Both protocols: deterministic, disjoint, sized as documented, short users counted."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_data

from models.data.splits import make_split


@pytest.fixture
def varied():
    """30 users with 2..31 distinct items (user u has u + 2), timestamps reversed to input order."""
    users, items, times = [], [], []
    for u in range(30):
        n = u + 2
        users += [u] * n
        items += list(range(n))
        times += [float(100 - k) for k in range(n)]  # later in the file = earlier in time
    return make_data(users, items, times)


def test_random_split_deterministic_per_seed(varied):
    a, b = make_split(varied, "random_80_10_10", 3), make_split(varied, "random_80_10_10", 3)
    c = make_split(varied, "random_80_10_10", 4)
    for part in ("train", "valid", "test"):
        assert all(np.array_equal(x, y) for x, y in zip(getattr(a, part), getattr(b, part), strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a.test, c.test, strict=True))


def test_random_split_disjoint_and_sized(varied):
    split = make_split(varied, "random_80_10_10", 0)
    for u in range(varied.num_users):
        tr, va, te = split.train[u], split.valid[u], split.test[u]
        n = u + 2
        assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
        assert len(tr) + len(va) + len(te) == n
        if n >= 3:
            assert len(te) == max(1, round(0.1 * n)) and len(va) == max(1, round(0.1 * n))
        if n >= 10:  # below that, one item each for valid and test dominates
            assert abs(len(tr) / n - 0.8) <= 0.1 and abs(len(te) / n - 0.1) <= 0.05
    assert split.too_short == 1  # the one user with 2 items: train only, never evaluated
    assert 0 not in split.eval_users("test") and len(split.eval_users("test")) == 29
    counts = split.counts()
    assert counts["users_too_short"] == 1 and counts["evaluated_users_valid"] == 29
    total = sum(u + 2 for u in range(30))
    assert counts["train_interactions"] + counts["valid_interactions"] + counts["test_interactions"] == total


def test_leave_one_out_takes_last_two_by_time(varied):
    split = make_split(varied, "leave_one_out", 0)
    # Times decrease along the input, so item 0 is each user's latest and item 1 the one before.
    for u in range(1, varied.num_users):
        assert split.test[u].tolist() == [0] and split.valid[u].tolist() == [1]
        assert split.train[u].tolist() == list(range(u + 1, 1, -1))  # oldest first
    assert split.too_short == 1 and len(split.test[0]) == 0
    seen = split.seen("test")[5]
    assert 1 in seen and 0 not in seen  # test ranking masks train + valid, not the target


def test_unknown_protocol(varied):
    with pytest.raises(ValueError, match="accepted: random_80_10_10, leave_one_out"):
        make_split(varied, "temporal", 0)
