"""User towers: SASRec over the user's recent item vectors, and DSSM (a user id embedding)."""

from __future__ import annotations

import math

import torch
from torch import nn


class _Block(nn.Module):
    """Pre-LN causal self-attention + feed-forward, written out so it exports cleanly to ONNX."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        att = att.masked_fill(~allowed.unsqueeze(1), -1e9).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    """Causal self-attention over LEFT-padded item vectors [B, S, D] with mask [B, S] (1 = real item).

    Positions are counted from the newest item backwards (the newest is position 0), which is
    the same as the paper's absolute positions for a fixed S with left padding, but makes the
    outputs at real positions independent of how much padding precedes them. A query attends to
    real keys at or before it, plus itself (so padding rows stay finite; they are never read).
    """

    def __init__(self, dim: int, max_len: int = 20, blocks: int = 2, heads: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, dim)
        # at the item vectors' scale (ID rows start at std 0.02): nn.Embedding's N(0, 1) would drown
        # the items in position noise, and training then sat at the popularity plateau for many epochs
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.ln = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = items.shape[1]
        real = mask > 0
        rpos = torch.arange(s - 1, -1, -1, device=items.device).clamp(max=self.max_len - 1)
        x = (items + self.pos(rpos).unsqueeze(0)) * real.unsqueeze(-1).to(items.dtype)
        x = self.drop(x)
        idx = torch.arange(s, device=items.device)
        causal = idx.unsqueeze(1) >= idx.unsqueeze(0)  # [S, S]: key j <= query i
        diagonal = idx.unsqueeze(1) == idx.unsqueeze(0)
        allowed = (causal.unsqueeze(0) & real.unsqueeze(1)) | diagonal.unsqueeze(0)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x)


class SASRecUserEncoder(nn.Module):
    """forward(item_vectors [B, S, D] left-padded, mask int64 [B, S]) -> user_vector [B, D] (last position)."""

    def __init__(self, sasrec: SASRec) -> None:
        super().__init__()
        self.sasrec = sasrec

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.sasrec(item_vectors, mask)[:, -1]


class DSSM(nn.Module):
    """Two-tower: a learned vector per user row."""

    def __init__(self, num_users: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_users, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.emb(users)
