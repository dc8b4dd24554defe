"""The TCF model: an item tower and a user tower whose dot product scores items, plus its config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from models.tcf import text_encoder as te
from models.tcf.data import Batch, left_pad
from models.tcf.item_tower import HybridItemTower, IdItemTower, TextItemTower
from models.tcf.loss import ibce_loss
from models.tcf.preinfer import PreInferred
from models.tcf.user_tower import DSSM, SASRec


@dataclass
class ModelConfig:
    user_tower: Literal["sasrec", "dssm"] = "sasrec"
    # text: LM features + MLP (new items by their text); id: one learned vector per item (no new items);
    # hybrid: text + ID vector, the ID part dropped for a share `id_dropout` of items in training so that the
    # text part stands on its own (new items are served by it)
    item_tower: Literal["text", "id", "hybrid"] = "text"
    id_dropout: float = 0.5
    standardize: bool = False  # standardise the frozen LM features per dimension before the MLP (floored std)
    dim: int = 64  # D: item/user vector size (the paper uses 512; 64 keeps CPU training quick)
    mlp_layers: int = 2
    mlp_input_norm: bool = False  # LayerNorm on the pooled LM state before the MLP (beyond the paper)
    max_seq_len: int = 20  # S: SASRec reads the user's last S items
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.1


def uses_text(item_tower: str) -> bool:
    """Item towers that read the item's text (and so can encode an item that was not trained on)."""
    return item_tower in ("text", "hybrid")


class TCFModel(nn.Module):
    def __init__(self, cfg: ModelConfig, item_tower: nn.Module, num_users: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_tower = item_tower
        if cfg.user_tower == "sasrec":
            self.user_tower: nn.Module = SASRec(cfg.dim, cfg.max_seq_len, cfg.blocks, cfg.heads, cfg.dropout)
        elif cfg.user_tower == "dssm":
            self.user_tower = DSSM(num_users, cfg.dim)
        else:
            raise ValueError(f"unknown user_tower {cfg.user_tower!r}; accepted: sasrec, dssm")

    def forward(self, batch: Batch) -> torch.Tensor:
        """The IBCE loss of one batch (a single forward, so DDP can synchronise its gradients)."""
        vecs = self.item_tower(batch.rows)
        if self.cfg.user_tower == "sasrec":
            out = self.user_tower(vecs[batch.seq_idx], batch.seq_mask)
            queries = out[batch.query_pos]
        else:
            queries = self.user_tower(batch.users)
        return ibce_loss(queries, vecs[batch.cand_idx], batch.target, batch.log_q, batch.own)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def all_item_vectors(self, chunk: int = 256) -> torch.Tensor:
        n, device = self.item_tower.num_items, self.device
        return torch.cat([self.item_tower(torch.arange(s, min(s + chunk, n), device=device))
                          for s in range(0, n, chunk)])

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray], item_vecs: torch.Tensor) -> torch.Tensor:
        if self.cfg.user_tower == "dssm":
            return self.user_tower(torch.as_tensor(users, dtype=torch.long, device=self.device))
        rows, mask = left_pad(histories, self.cfg.max_seq_len)
        rows_t, mask_t = torch.from_numpy(rows).to(item_vecs.device), torch.from_numpy(mask).to(item_vecs.device)
        return self.user_tower(item_vecs[rows_t], mask_t)[:, -1]


def build_model(cfg: ModelConfig, text: te.TextEncoderConfig, unfreeze_top: int, num_users: int, num_items: int,
                pre: PreInferred | None = None, lm: nn.Module | None = None) -> TCFModel:
    """Builds the model; the text tower needs the pre-inferred table and (for N > 0) the LM to slice.

    For N > 0 the text tower's `top` shares its modules with `lm`, so loading the checkpoint's
    weights into the model also updates `lm`'s top layers (used by the serving item encoder).
    """
    if cfg.item_tower == "id":
        tower: nn.Module = IdItemTower(num_items, cfg.dim)
    elif uses_text(cfg.item_tower):
        if pre is None:
            raise ValueError("the text item tower needs the pre-inferred item table")
        top = None
        if unfreeze_top > 0:
            if lm is None:
                raise ValueError("unfreeze_top > 0 needs the LM to take the top layers from")
            top = te.top_layers(lm, unfreeze_top)
            top.train()
            for p in top.parameters():
                p.requires_grad_(True)
        in_dim = (pre.pooled if pre.pooled is not None else pre.hidden).shape[-1]
        tower = TextItemTower(in_dim, cfg.dim, cfg.mlp_layers, text.pooling, top, cfg.mlp_input_norm,
                              cfg.standardize)
        tower.set_table(pre)
        if tower.num_items != num_items:
            raise ValueError(f"pre-inferred table has {tower.num_items} items, the item map {num_items}")
        if cfg.item_tower == "hybrid":
            tower = HybridItemTower(tower, num_items, cfg.dim, cfg.id_dropout)
    else:
        raise ValueError(f"unknown item_tower {cfg.item_tower!r}; accepted: text, id, hybrid")
    return TCFModel(cfg, tower, num_users)
