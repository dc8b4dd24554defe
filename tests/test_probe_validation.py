"""The export gate's quality probe is measured on validation users and their valid items, never on
the test part: the gate picks an engine, a choice the once-read test part must not inform."""

from __future__ import annotations

import numpy as np

from models.cllm4rec.bundle import probe_part as cllm_probe_part
from models.data.splits import Split
from models.tcf.bundle import probe_part as tcf_probe_part


def _split() -> Split:
    # valid items are 10 + u, test items 20 + u: a target says at once which part it came from
    train = [np.array([u % 5, 5 + u % 3]) for u in range(8)]
    valid = [np.array([10 + u]) for u in range(8)]
    test = [np.array([20 + u]) for u in range(8)]
    valid[3] = np.zeros(0, dtype=np.int64)  # a user without a validation item is not probed
    return Split("leave_one_out", 0, 30, train, valid, test, too_short=0)


def test_cllm4rec_probe_targets_are_validation_items() -> None:
    split = _split()
    users, seen, targets = cllm_probe_part(split)
    assert users.tolist() == [0, 1, 2, 4, 5, 6, 7]
    for u in users:
        assert targets[u].tolist() == [10 + u]  # not 20 + u: the test item
        assert seen[u].tolist() == split.train[u].tolist()  # history: train only, the valid item is the target


def test_tcf_probe_targets_are_validation_items_that_are_served() -> None:
    split = _split()
    keep = np.ones(30, dtype=bool)
    keep[12] = False  # user 2's valid item is held out of the export: not a probe target
    users, seen, targets = tcf_probe_part(split, keep)
    assert users == [0, 1, 4, 5, 6, 7]
    for u in users:
        assert targets[u].tolist() == [10 + u]
        assert seen[u].tolist() == split.train[u].tolist()
