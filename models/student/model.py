"""The student: SASRec over a history of item rows, answering in the teacher's score space.

Its output is compared by inner product with the teacher's exported item vectors (`CLLM4Rec.item_matrix()`:
the scaled collaborative rows plus the bias column when the teacher has an item bias), which it holds as a
fixed buffer and never trains: the exported version then searches exactly the teacher's item index. Only the
user side is new. Its input rows start as the same teacher vectors (trained further, projected down to the
blocks' width), so the first step already reads items where the teacher put them.

The blocks are TCF's SASRec (models.tcf.user_tower): causal attention over left-padded rows, positions
counted from the newest item, so a history's vector does not depend on how much padding precedes it.
"""

from __future__ import annotations

import torch
from torch import nn

from models.student.config import StudentConfig
from models.tcf.user_tower import SASRec


class Student(nn.Module):
    """forward(item_rows int64 [B, S] left-padded, mask int64 [B, S]) -> user vector [B, teacher dim]."""

    def __init__(self, cfg: StudentConfig, teacher_items: torch.Tensor, bias_column: bool = False) -> None:
        """`bias_column`: the teacher's last dimension is its item bias (a constant 1 on its user side); the
        student's output then starts with that 1 too, i.e. from the teacher's popularity prior."""
        super().__init__()
        if teacher_items.ndim != 2 or teacher_items.shape[0] == 0:
            raise ValueError(f"teacher item vectors must be a non-empty [items, dim] matrix, got {tuple(teacher_items.shape)}")
        self.cfg = cfg
        rows = teacher_items.detach().float().clone()
        self.register_buffer("teacher_items", rows.clone())  # what serving scores with: never trained
        self.items = nn.Embedding.from_pretrained(rows, freeze=False)
        self.proj = nn.Linear(rows.shape[1], cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)  # teacher rows carry its temperature: their scale is not the blocks'
        self.sasrec = SASRec(cfg.dim, cfg.max_seq_len, cfg.blocks, cfg.heads, cfg.dropout)
        self.out = nn.Linear(cfg.dim, rows.shape[1])
        if bias_column:
            with torch.no_grad():
                self.out.bias[-1] = 1.0

    @property
    def num_items(self) -> int:
        return int(self.teacher_items.shape[0])

    @property
    def vector_dim(self) -> int:
        return int(self.teacher_items.shape[1])

    @property
    def device(self) -> torch.device:
        return self.teacher_items.device

    def forward(self, item_rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.proj(self.items(item_rows)))
        return self.out(self.sasrec(x, mask)[:, -1])


def left_padded(histories: list[list[int]] | list, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(item_rows, mask) int64 [B, S]: each history's most recent `max_len` rows, oldest first, left-padded
    with row 0 (masked) to the batch's longest; S >= 1 so an empty history is still a valid input."""
    kept = [list(h)[-max_len:] if max_len > 0 else [] for h in histories]
    width = max(1, max((len(h) for h in kept), default=1))
    rows = torch.zeros((len(kept), width), dtype=torch.long)
    mask = torch.zeros((len(kept), width), dtype=torch.long)
    for i, h in enumerate(kept):
        if h:
            rows[i, width - len(h):] = torch.as_tensor([int(x) for x in h], dtype=torch.long)
            mask[i, width - len(h):] = 1
    return rows, mask
