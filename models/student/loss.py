"""The student's three losses over one batch of prefixes (docs/methods.md, "A distilled student").

Every softmax is over all items with the prefix's own items masked out, as evaluation and serving mask a
user's seen items: probability spent on them would be spent on nothing.

Ranking distillation follows DLLM2Rec (Cui et al., RecSys'24): the teacher's top-K items of a prefix are
targets of the student's softmax, each weighted by a normalised mix of three importance terms:
- position: exp(-k / rank_decay) for the teacher's k-th item, so its first items count most;
- confidence: the softmax of the teacher's own top-K scores (at `confidence_temperature`). DLLM2Rec measures
  confidence by the distance between a recommended item and the ground-truth next item in the teacher's
  item space; we use the teacher's score instead because the prefix that matters most here, the user's
  whole train history (the one the student serves), has no ground-truth item in the training data, while
  the teacher's score exists for every prefix and says the same thing: how sure the teacher is of the item;
- consistency: whether the item is also in the student's current top-K (DLLM2Rec's "consistency-aware"
  term), which spends the distillation signal on the items the student can already reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.student.config import DistillConfig

MASKED = -1e9  # finite: a fully masked row stays NaN-free


@dataclass
class Targets:
    """One batch's targets; rows without a teacher answer or without later items carry zero weight."""

    seen: torch.Tensor  # bool [B, J]: the prefix's own items (masked)
    truth: torch.Tensor  # float [B, J]: 1 on the user's later train items (multinomial targets)
    top_items: torch.Tensor | None = None  # int64 [B, K]: the teacher's top-K
    top_scores: torch.Tensor | None = None  # float [B, K]
    teacher_vectors: torch.Tensor | None = None  # float [B, dim]


def importance(cfg: DistillConfig, top_items: torch.Tensor, top_scores: torch.Tensor,
               student_logits: torch.Tensor) -> torch.Tensor:
    """[B, K] weights of the teacher's top-K items, each row summing to 1 (see the module docstring)."""
    k = top_items.shape[1]
    position = torch.exp(-torch.arange(k, device=top_items.device, dtype=torch.float32) / max(cfg.rank_decay, 1e-6))
    position = (position / position.sum()).expand(top_items.shape[0], k)
    confidence = F.softmax(top_scores.float() / max(cfg.confidence_temperature, 1e-6), dim=1)
    student_top = student_logits.detach().topk(k, dim=1).indices
    shared = (top_items.unsqueeze(2) == student_top.unsqueeze(1)).any(2).float()
    consistency = shared / shared.sum(1, keepdim=True).clamp(min=1.0)
    mix = cfg.position_share * position + cfg.confidence_share * confidence + cfg.consistency_share * consistency
    return mix / mix.sum(1, keepdim=True).clamp(min=1e-12)


def dimension_weights(items: torch.Tensor) -> torch.Tensor:
    """Per dimension of the score space, the RMS of the item vectors in it: how much a unit of a user
    vector's dimension moves scores. An LM's hidden states have a few huge dimensions that the teacher's
    item vectors scale down to almost nothing (its feature scale); compared raw, those would dominate a
    cosine or a squared error while changing no ranking."""
    return items.float().pow(2).mean(0).sqrt()


def embedding_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, items: torch.Tensor,
                   student_scores: torch.Tensor) -> torch.Tensor:
    """"cosine" / "mse" (relative to the teacher's mean square) between the vectors with each dimension
    weighted by `dimension_weights`; "scores": squared error of the row-centred scores over every item
    (logit matching: the vectors compared through the items' Gram matrix), relative to the teacher's."""
    if kind == "scores":
        t = teacher @ items.T
        t = t - t.mean(1, keepdim=True)
        s = student_scores - student_scores.mean(1, keepdim=True)
        return (s - t).pow(2).mean() / t.pow(2).mean().clamp(min=1e-12)
    w = dimension_weights(items)
    student, teacher = student * w, teacher * w
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
    if kind == "mse":
        return (student - teacher).pow(2).sum(1).mean() / teacher.pow(2).sum(1).mean().clamp(min=1e-12)
    raise ValueError(f"unknown embed_loss {kind!r}; accepted: cosine, mse, scores")


def losses(cfg: DistillConfig, vectors: torch.Tensor, items: torch.Tensor, t: Targets) -> dict[str, torch.Tensor]:
    """{"rank", "embed", "truth", "total"} of user vectors against the item vectors `items` [J, dim]: the
    weighted sum is "total"; a loss whose weight is 0 is not computed."""
    vectors, items = vectors.float(), items.float()
    scores = vectors @ items.T
    logits = scores.masked_fill(t.seen, MASKED)
    log_p = F.log_softmax(logits, dim=1)
    zero = logits.sum() * 0.0
    out = {"rank": zero, "embed": zero, "truth": zero}
    if cfg.truth_weight > 0:
        n = t.truth.sum(1)
        rows = n > 0
        if rows.any():
            out["truth"] = -((log_p[rows] * t.truth[rows]).sum(1) / n[rows]).mean()
    if cfg.rank_weight > 0 and t.top_items is not None and t.top_scores is not None:
        w = importance(cfg, t.top_items, t.top_scores, logits)
        out["rank"] = -(w * log_p.gather(1, t.top_items)).sum(1).mean()
    if cfg.embed_weight > 0 and t.teacher_vectors is not None:
        out["embed"] = embedding_loss(cfg.embed_loss, vectors, t.teacher_vectors.float(), items, scores)
    out["total"] = cfg.rank_weight * out["rank"] + cfg.embed_weight * out["embed"] + cfg.truth_weight * out["truth"]
    return out
