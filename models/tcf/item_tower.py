"""Item towers: text (frozen LM part pre-computed + trainable top N layers + pooling + MLP) and ID."""

from __future__ import annotations

import torch
from torch import nn

from models.tcf import text_encoder as te
from models.tcf.preinfer import PreInferred


class MLPProjection(nn.Module):
    """Linear(in, D), then (layers - 1) x [GELU, Linear(D, D)]: the paper's projection to dimension D.

    `input_norm` puts a LayerNorm first (beyond the paper): decoder LMs' pooled states have a few
    huge outlier dimensions that otherwise dominate the first Linear and slow learning.
    """

    def __init__(self, in_dim: int, dim: int, layers: int = 2, input_norm: bool = False) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {layers}")
        mods: list[nn.Module] = ([nn.LayerNorm(in_dim)] if input_norm else []) + [nn.Linear(in_dim, dim)]
        for _ in range(layers - 1):
            mods += [nn.GELU(), nn.Linear(dim, dim)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextItemTower(nn.Module):
    """Item row -> vector from the pre-inferred table (rows = item rows of the IdMap, same order).

    The table is a non-persistent buffer: it is re-derived from the text encoder and the item
    texts (cached), never stored in the checkpoint. Only `top` (the N unfrozen layers, if any)
    and `mlp` are trained and saved.
    """

    def __init__(self, in_dim: int, dim: int, mlp_layers: int, pooling: str, top: nn.Module | None = None,
                 input_norm: bool = False) -> None:
        super().__init__()
        self.pooling = pooling
        self.top = top
        self.mlp = MLPProjection(in_dim, dim, mlp_layers, input_norm)
        self.register_buffer("pooled", torch.zeros(0), persistent=False)
        self.register_buffer("hidden", torch.zeros(0), persistent=False)
        self.register_buffer("mask", torch.zeros(0, dtype=torch.long), persistent=False)

    def set_table(self, pre: PreInferred) -> None:
        if self.top is None:
            if pre.pooled is None:
                raise ValueError("N = 0 needs pooled pre-inferred vectors")
            self.pooled = pre.pooled
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


class FullTextItemEncoder(nn.Module):
    """Serving path from raw tokens: the whole LM (with the trained top layers) + pooling + MLP."""

    def __init__(self, lm: nn.Module, pooling: str, mlp: MLPProjection) -> None:
        super().__init__()
        self.lm, self.pooling, self.mlp = lm, pooling, mlp

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.mlp(te.pool(hidden, attention_mask, self.pooling))
