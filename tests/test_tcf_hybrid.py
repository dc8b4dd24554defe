"""The hybrid item tower (text + ID with ID dropout) and the standardisation of frozen LM features."""

from __future__ import annotations

import pytest
import torch

from models.tcf.item_tower import HybridItemTower, Standardize, TextItemTower
from models.tcf.preinfer import PreInferred


def _text_tower(n: int = 12, in_dim: int = 6, dim: int = 4, standardize: bool = False) -> TextItemTower:
    torch.manual_seed(0)
    pooled = torch.randn(n, in_dim)
    pooled[:, 0] = 5.0  # a constant dimension: its std is ~0
    pooled[:, 1] *= 300.0  # an outlier dimension
    tower = TextItemTower(in_dim, dim, 2, "mean", standardize=standardize)
    tower.set_table(PreInferred(pooled=pooled, hidden=None, mask=None, from_cache=False, key=""))
    return tower


def test_standardize_scales_each_dimension_and_floors_constant_ones() -> None:
    x = _text_tower().pooled
    s = Standardize(x.shape[1], floor=0.1)
    s.fit(x)
    y = s(x)
    assert torch.allclose(y[:, 2:].std(0), torch.ones(4), atol=1e-5)  # ordinary dimensions: unit spread
    assert y[:, 1].std() == pytest.approx(1.0, abs=1e-5)  # the outlier dimension is tamed
    assert y[:, 0].abs().max() < 1e-3  # the constant one is not blown up
    assert "mean" in s.state_dict() and "inv_std" in s.state_dict()  # travels in checkpoints and exports


def test_hybrid_is_text_plus_id_and_id_dropout_only_in_training() -> None:
    text = _text_tower(standardize=True)
    hybrid = HybridItemTower(text, 12, 4, id_dropout=0.5)
    rows = torch.arange(12)
    with torch.no_grad():
        hybrid.emb.weight.fill_(1.0)
        hybrid.eval()
        assert torch.allclose(hybrid(rows), text(rows) + 1.0)
        hybrid.train()
        torch.manual_seed(1)
        diff = hybrid(rows) - text(rows)
    dropped = (diff == 0).all(1)
    assert 0 < int(dropped.sum()) < 12 and torch.allclose(diff[~dropped], torch.ones(int((~dropped).sum()), 4))
    assert hybrid.mlp is text.mlp  # the serving item encoder is the text path
    with pytest.raises(ValueError, match="id_dropout"):
        HybridItemTower(text, 12, 4, id_dropout=1.0)
