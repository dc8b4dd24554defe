"""Item towers: text (frozen LM part pre-computed + trainable top N layers + pooling + MLP) and ID."""

from __future__ import annotations

import torch
from torch import nn

from models.tcf import text_encoder as te
from models.tcf.preinfer import PreInferred


class Standardize(nn.Module):
    """(x - mean) / std per feature dimension, with the statistics of the frozen item table.

    Frozen encoder features have dimensions of very different scales (decoder LMs: a few outliers in
    the hundreds), and a dimension that is nearly constant over the catalogue would be blown up by a
    plain standardisation: its std is floored at `floor` x the median std. The statistics are
    persistent buffers, so they travel in the checkpoint and into the exported item encoder.
    """

    def __init__(self, dim: int, floor: float = 0.1) -> None:
        super().__init__()
        self.floor = floor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        std = x.float().std(0)
        self.mean.copy_(x.float().mean(0))
        self.inv_std.copy_(1.0 / std.clamp_min(max(self.floor * float(std.median()), 1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class MLPProjection(nn.Module):
    """Linear(in, D), then (layers - 1) x [GELU, Linear(D, D)]: the paper's projection to dimension D.

    `input_norm` puts a LayerNorm first (beyond the paper): decoder LMs' pooled states have a few
    huge outlier dimensions that otherwise dominate the first Linear and slow learning.
    `standardize` instead scales each dimension by its spread over the catalogue (Standardize).
    """

    def __init__(self, in_dim: int, dim: int, layers: int = 2, input_norm: bool = False,
                 standardize: bool = False) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {layers}")
        self.standardize = Standardize(in_dim) if standardize else None
        mods: list[nn.Module] = ([nn.LayerNorm(in_dim)] if input_norm else []) + [nn.Linear(in_dim, dim)]
        for _ in range(layers - 1):
            mods += [nn.GELU(), nn.Linear(dim, dim)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x if self.standardize is None else self.standardize(x))


class TextItemTower(nn.Module):
    """Item row -> vector from the pre-inferred table (rows = item rows of the IdMap, same order).

    The table is a non-persistent buffer: it is re-derived from the text encoder and the item
    texts (cached), never stored in the checkpoint. Only `top` (the N unfrozen layers, if any)
    and `mlp` are trained and saved.
    """

    def __init__(self, in_dim: int, dim: int, mlp_layers: int, pooling: str, top: nn.Module | None = None,
                 input_norm: bool = False, standardize: bool = False) -> None:
        super().__init__()
        if standardize and top is not None:
            raise ValueError("standardize needs frozen features (--lm.unfreeze-top 0): trained top layers move them")
        self.pooling = pooling
        self.top = top
        self.mlp = MLPProjection(in_dim, dim, mlp_layers, input_norm, standardize)
        self.register_buffer("pooled", torch.zeros(0), persistent=False)
        self.register_buffer("hidden", torch.zeros(0), persistent=False)
        self.register_buffer("mask", torch.zeros(0, dtype=torch.long), persistent=False)

    def set_table(self, pre: PreInferred) -> None:
        if self.top is None:
            if pre.pooled is None:
                raise ValueError("N = 0 needs pooled pre-inferred vectors")
            self.pooled = pre.pooled
            if self.mlp.standardize is not None:
                self.mlp.standardize.fit(self.pooled)
        else:
            if pre.hidden is None or pre.mask is None:
                raise ValueError("N > 0 needs pre-inferred hidden states and masks")
            self.hidden, self.mask = pre.hidden, pre.mask

    @property
    def num_items(self) -> int:
        return len(self.pooled) if self.top is None else len(self.hidden)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.top is None:
            return self.mlp(self.pooled[rows])
        mask = self.mask[rows]
        hidden = self.top(inputs_embeds=self.hidden[rows], attention_mask=mask).last_hidden_state
        return self.mlp(te.pool(hidden, mask, self.pooling))


class IdItemTower(nn.Module):
    """The classic baseline: one learned vector per item row."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_items, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    @property
    def num_items(self) -> int:
        return self.emb.num_embeddings

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.emb(rows)


class HybridItemTower(nn.Module):
    """Text vector + ID embedding. During training the ID part is dropped for a share `id_dropout` of the
    items of each step, so the text part alone must score well: an item without a trained ID row (new
    since training) is then served by its text alone, and a popular item still gets what its ID row learned.
    """

    def __init__(self, text: TextItemTower, num_items: int, dim: int, id_dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.text = text
        self.emb = nn.Embedding(num_items, dim)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.id_dropout = id_dropout

    @property
    def num_items(self) -> int:
        return self.text.num_items

    @property
    def mlp(self) -> MLPProjection:  # the serving item encoder is the text path
        return self.text.mlp

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        ids = self.emb(rows)
        if self.training and self.id_dropout > 0:
            keep = torch.rand(rows.shape, device=rows.device) >= self.id_dropout
            ids = ids * keep.unsqueeze(-1).to(ids.dtype)
        return self.text(rows) + ids


class FullTextItemEncoder(nn.Module):
    """Serving path from raw tokens: the whole LM (with the trained top layers) + pooling + MLP."""

    def __init__(self, lm: nn.Module, pooling: str, mlp: MLPProjection) -> None:
        super().__init__()
        self.lm, self.pooling, self.mlp = lm, pooling, mlp

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.mlp(te.pool(hidden, attention_mask, self.pooling))
