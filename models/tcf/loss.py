"""IBCE: in-batch softmax cross-entropy with logQ correction and own-item masking.

Candidates are the DISTINCT positive items of the batch (a repeated item is one candidate,
so it is never its own negative). For query row r with target candidate t(r):

    logit[r, c] = q_r . v_c - log Q(c)          (Q = the item's sampling probability = popularity)
    logit[r, c] = -inf   if own[r, c] and c != t(r)
    loss = mean_r CE(logit[r], t(r))

`own[r, c]` is True when candidate c is one of the query user's own training items: such an
item is a positive of that user, not a negative, so it is removed from the softmax. The
target itself is never masked. logQ correction removes the popularity bias of in-batch
sampling (popular items appear as negatives more often).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibce_loss(queries: torch.Tensor, cand_vecs: torch.Tensor, target: torch.Tensor, log_q: torch.Tensor,
              own: torch.Tensor | None = None) -> torch.Tensor:
    """queries [R, D], cand_vecs [C, D], target [R] (candidate column), log_q [C], own bool [R, C]."""
    logits = queries @ cand_vecs.T - log_q.unsqueeze(0)
    if own is not None:
        own = own.clone()
        own[torch.arange(len(target), device=target.device), target] = False
        logits = logits.masked_fill(own, float("-inf"))
    return F.cross_entropy(logits, target)
