"""The student's settings: its architecture, the training prefixes the teacher is asked about, and the
weights of its three losses (docs/methods.md, "A distilled student")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class StudentConfig:
    dim: int = 64  # width of the attention blocks (the item rows are projected down to it)
    blocks: int = 2  # SASRec blocks
    heads: int = 2
    dropout: float = 0.1
    # most recent history items read; the teacher reads 128 (its max_history), the student the same by default
    max_seq_len: int = 128


@dataclass
class PrefixConfig:
    """Which sub-histories of each user's train items (time order) the student trains on. They are
    fixed (not redrawn per epoch) because the teacher's answers for them are computed once and cached."""

    per_user: int = 8  # prefixes per user, evenly spaced lengths ending at the whole train history
    min_length: int = 2  # shortest prefix
    # whose prompt the teacher scores a prefix with: "known" (the user's own token, the teacher's best answer,
    # what its known-user vectors are) or "anonymous" (the history alone, what its history requests are)
    teacher_user: Literal["known", "anonymous"] = "known"
    top_k: int = 20  # teacher's top items kept per prefix (ranking distillation targets)
    batch_size: int = 32  # prompts per teacher forward pass


@dataclass
class DistillConfig:
    """Loss weights (0 switches a loss off) and the ranking-distillation importance weights."""

    rank_weight: float = 1.0  # ranking distillation: softmax cross-entropy on the teacher's top-K, weighted
    embed_weight: float = 1.0  # embedding distillation: the student's vector vs the teacher's, same prefix
    truth_weight: float = 1.0  # ground truth: multinomial over the user's later train items
    # cosine / mse (relative) of the vectors with each dimension weighted by the item vectors' RMS in it, or
    # "scores": squared error of the row-centred scores over every item (models.student.loss.embedding_loss)
    embed_loss: Literal["cosine", "mse", "scores"] = "cosine"
    # importance of the teacher's k-th item = a mix (normalised per prefix) of three terms, as in DLLM2Rec:
    rank_decay: float = 10.0  # position: exp(-k / rank_decay), k = 0 for the teacher's first item
    confidence_temperature: float = 1.0  # confidence: softmax of the teacher's top-K scores / this temperature
    position_share: float = 1.0  # mixing weights of the three terms
    confidence_share: float = 1.0
    consistency_share: float = 0.5  # consistency: the item is also in the student's current top-K

    def uses_teacher(self) -> bool:
        return self.rank_weight > 0 or self.embed_weight > 0
