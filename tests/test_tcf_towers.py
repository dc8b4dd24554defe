"""SASRec causality and padding invariance, the IBCE loss by hand, and learning on a tiny data set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.tcf.data import dssm_batch, log_popularity, sasrec_batch, sasrec_windows
from models.tcf.item_tower import IdItemTower
from models.tcf.loss import ibce_loss
from models.tcf.model import ModelConfig, TCFModel
from models.tcf.user_tower import SASRec


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _sasrec() -> SASRec:
    torch.manual_seed(0)
    return SASRec(dim=8, max_len=10, blocks=2, heads=2, dropout=0.0).eval()


def test_sasrec_is_causal() -> None:
    model = _sasrec()
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.long)
    base = model(x, mask)
    for t in range(6):
        y = x.clone()
        y[:, t] += torch.randn(2, 8) * 3
        out = model(y, mask)
        assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6), f"position < {t} changed"
        assert not torch.allclose(out[:, t], base[:, t], atol=1e-4)


def test_sasrec_left_padding_invariant() -> None:
    model = _sasrec()
    items = torch.randn(1, 4, 8)
    short = model(items, torch.ones(1, 4, dtype=torch.long))
    for pad in (1, 3, 6):
        padded = torch.cat([torch.randn(1, pad, 8) * 5, items], 1)  # garbage in padded slots
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)], 1)
        out = model(padded, mask)
        assert torch.allclose(out[:, pad:], short, atol=1e-5)
        assert torch.isfinite(out).all()


def test_ibce_by_hand() -> None:
    """2 queries, 3 distinct candidates; query 0 owns candidate 2 (masked), query 1 owns its target only."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
    target = torch.tensor([0, 2])
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    own = torch.tensor([[True, False, True], [False, False, True]])
    got = ibce_loss(q, v, target, log_q, own)
    # query 0: logits 1 - ln .5, 0.5 - ln .25, (masked)
    l0 = [1 - math.log(0.5), 0.5 - math.log(0.25)]
    ce0 = -(l0[0] - math.log(sum(math.exp(x) for x in l0)))
    # query 1: logits 0 - ln .5, 0.5 - ln .25, 2 - ln .25; its own item is the target: not masked
    l1 = [-math.log(0.5), 0.5 - math.log(0.25), 2 - math.log(0.25)]
    ce1 = -(l1[2] - math.log(sum(math.exp(x) for x in l1)))
    assert abs(float(got) - (ce0 + ce1) / 2) < 1e-6
    # without masking and logQ the value differs (both parts matter)
    assert abs(float(ibce_loss(q, v, target, log_q, None)) - float(got)) > 1e-3
    assert abs(float(ibce_loss(q, v, target, torch.zeros(3), own)) - float(got)) > 1e-3


def test_batch_masks_own_items_and_dedupes_candidates() -> None:
    train = [np.array([0, 1, 2]), np.array([2, 3, 4])]
    log_q = log_popularity(train, 5)
    b = sasrec_batch(sasrec_windows(train, 4), train, max_len=4, log_q=log_q)
    cands = b.rows[b.cand_idx].tolist()
    assert cands == [1, 2, 3, 4]  # targets 1,2 (user 0) and 3,4 (user 1), item 2 once
    assert b.target.tolist() == [0, 1, 2, 3]
    # user 0's rows mask its own item 2 as a negative for target 1 (target itself is unmasked in the loss)
    assert b.own.tolist() == [[True, True, False, False], [True, True, False, False],
                              [False, True, True, True], [False, True, True, True]]
    d = dssm_batch(np.array([0, 1, 1]), np.array([1, 2, 4]), train, log_q)
    assert d.rows.tolist() == [1, 2, 4] and d.target.tolist() == [0, 1, 2]


def _groups(n_users: int = 40, n_items: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.permutation(np.arange(10) + (0 if u % 2 else 10)) for u in range(n_users)]


def test_loss_decreases_sasrec_and_dssm() -> None:
    train = _groups()
    log_q = log_popularity(train, 20)
    for tower in ("sasrec", "dssm"):
        torch.manual_seed(0)
        model = TCFModel(ModelConfig(user_tower=tower, item_tower="id", dim=16, max_seq_len=8, dropout=0.0),
                         IdItemTower(20, 16), num_users=40)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        windows = sasrec_windows(train, 8)
        pu = np.concatenate([np.full(len(t), u) for u, t in enumerate(train)])
        pi = np.concatenate(train)
        losses = []
        for _step in range(40):
            if tower == "sasrec":
                batch = sasrec_batch(windows, train, 8, log_q)
            else:
                batch = dssm_batch(pu, pi, train, log_q)
            loss = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.8 * losses[0], (tower, losses[0], losses[-1])


def test_windows_make_every_training_item_a_target_once() -> None:
    """--recipe.keep-last 0 trains on the whole history: windows of S + 1 items tile each sequence."""
    train = [np.arange(11), np.array([3, 4]), np.array([5])]
    windows = sasrec_windows(train, max_len=4)
    assert windows.tolist() == [[0, 11], [0, 7], [0, 3], [1, 2]]
    b = sasrec_batch(windows, train, max_len=4, log_q=log_popularity(train, 11))
    targets = b.rows[b.cand_idx][b.target]
    assert sorted(targets.tolist()) == sorted([*range(1, 11), 4])  # user 0's items 1..10 once, user 1's item 4
    inputs = b.rows[b.seq_idx][b.seq_mask.bool()]
    assert sorted(inputs.tolist()) == sorted([*range(0, 10), 3])


def test_full_softmax_batch_is_plain_cross_entropy_over_every_item() -> None:
    train = [np.array([0, 1, 2]), np.array([2, 3, 4])]
    log_q = log_popularity(train, 6)
    windows = sasrec_windows(train, 4)
    b = sasrec_batch(windows, train, max_len=4, log_q=log_q, full_softmax=True)
    assert b.rows.tolist() == list(range(6)) and b.cand_idx.tolist() == list(range(6))
    assert b.target.tolist() == [1, 2, 3, 4] and b.own is None and not b.log_q.any()
    torch.manual_seed(0)
    model = TCFModel(ModelConfig(item_tower="id", dim=8, max_seq_len=4, dropout=0.0), IdItemTower(6, 8), num_users=2)
    vecs = model.item_tower.emb.weight
    queries = model.user_tower(vecs[b.seq_idx], b.seq_mask)[b.query_pos]
    expected = torch.nn.functional.cross_entropy(queries @ vecs.T, b.target)
    assert torch.allclose(model(b), expected)
    d = dssm_batch(np.array([0, 1]), np.array([1, 4]), train, log_q, full_softmax=True)
    assert d.target.tolist() == [1, 4] and len(d.rows) == 6


def test_batch_width_is_the_longest_window_and_changes_no_output() -> None:
    train = [np.array([0, 1, 2]), np.array([2, 3, 4, 5])]
    log_q = log_popularity(train, 6)
    windows = sasrec_windows(train, 10)
    b = sasrec_batch(windows, train, max_len=10, log_q=log_q, full_softmax=True)
    assert b.seq_idx.shape == (2, 3)  # the longest window has 3 inputs, not 10
    torch.manual_seed(0)
    model = TCFModel(ModelConfig(item_tower="id", dim=8, max_seq_len=10, dropout=0.0), IdItemTower(6, 8), num_users=2)
    vecs = model.item_tower.emb.weight
    padded = torch.cat([torch.zeros(2, 7, dtype=torch.long), b.seq_idx], 1)
    pad_mask = torch.cat([torch.zeros(2, 7, dtype=torch.long), b.seq_mask], 1)
    wide = model.user_tower(vecs[padded], pad_mask)[:, 7:]
    torch.testing.assert_close(model.user_tower(vecs[b.seq_idx], b.seq_mask), wide)
