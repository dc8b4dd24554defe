"""CLLM4Rec: ID tokens learned on a causal LM, with three heads over one backbone.

In the paper's setting only two ID tables are trained, each [I users + J items + 1 anonymous
user, H]: collaborative z^l (collaborative LM + rec head) and content z^c (content LM); the LM is
frozen. The capacity levers (models.training.capacity: LoRA adapters, unfrozen top blocks, fewer
blocks) may let part of the LM train too. Ids < N go to the LM's vocabulary embedding, ids >= N
to the chosen ID table (row id - N).

Item scoring (collaborative LM and rec head) is h . (feature_scale * exp(log_scale) * z^l_item):
the final hidden state of the backbone has a few huge dimensions, which make raw dot products
saturate and let those dimensions dominate every update; `feature_scale` (a fixed per-dimension
1/RMS measured once on real prompts, see `calibrate`) and a learnable temperature fix that.
Both are folded into the exported item vectors, so serving still scores user_vector . item_vector
with user_vector = the raw last hidden state. Two levers that are not the paper's setting change the
rec head: `pooling="mean"` (the user vector is the mean hidden state over the prompt) and
`tie_items=False` (items are scored with their own output rows instead of z^l_item). An optional item bias (the popularity prior a
softmax over items otherwise has to spend hidden dimensions on) rides along as one more
dimension: the user vector gets a constant 1 appended and the item vector its bias.

Three levers keep a training step's cost from growing with the number of users and items (none is the
paper's setting; the task switches the last two on from a size on, see RecipeConfig):
- `user_tokens=False` (a model setting): no ID row per user; every prompt starts with the
  anonymous-user token, so a user is their history and the tables hold only items (+ the anonymous row).
- `sparse_ids` (a training setting, set by the task): the ID tables are read with sparse gradients, so
  a step touches only the batch's rows (the loop's optimizer updates them row-wise: models.training.optim).
- sampled item softmax (the task passes `candidates` and `log_q`): the collaborative loss scores only a
  candidate set of items (the batch's own plus sampled negatives), with the sampling probabilities' log
  subtracted from the logits (logQ correction), instead of every item at every position; the rec loss
  keeps every item (`rec_full`) unless the task samples it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from models.cllm4rec.prompts import IGNORE
from models.cllm4rec.tokens import IdVocab
from models.training.capacity import trained_lm_names
from models.training.checkpoint import load_strict

TRAINED_KEYS = ("collab_embeddings", "content_embeddings", "feature_scale", "log_scale")
BIAS_KEY = "item_bias"
CONTENT_KEY = "content_embeddings"
OUTPUT_KEY = "item_output"


def score_space(hidden: torch.Tensor, item_bias: bool) -> torch.Tensor:
    """Raw hidden states -> user vectors: a constant 1 appended when items carry a bias (shared
    with the exported user encoder, so training and serving build the same vector)."""
    if not item_bias:
        return hidden
    return torch.cat([hidden, hidden.new_ones(*hidden.shape[:-1], 1)], dim=-1)


@dataclass
class ModelConfig:
    init_std: float = 0.02  # ID rows start at N(0, init_std^2) (items: at their titles' embedding, see item_init)
    mutual_reg: float = 1.0  # lambda of lambda * mean_rows ||z^l - sg(z^c)||^2 (and its mirror)
    learn_scale: bool = True  # learnable score temperature exp(log_scale) on item scores
    item_bias: bool = True  # learnable per-item bias on item scores (served as one more vector dimension)
    max_history: int = 128  # most recent items kept in a prompt (training, evaluation and serving alike)
    # True (the paper): an item is scored with its own collaborative token row; False: every item
    # gets a separate output row (started equal to its token row), so reading an item in a prompt
    # and being scored as a recommendation no longer compete for one vector
    tie_items: bool = True
    # "last" (the paper): the user vector is the hidden state at the prompt's last token; "mean": the
    # mean hidden state over its real tokens after the first, so every history item reaches the user vector
    # directly instead of through one token's attention over a hundred others
    pooling: Literal["last", "mean"] = "last"
    # False: no ID row per user (a user is their history: every prompt uses the anonymous-user token),
    # so the model's size does not grow with the number of users; known users are served from their history
    user_tokens: bool = True
    # the content ID table (z^c): read only by schedules with a content stage (the content LM and the mutual
    # regularizer after it), and as large as the collaborative table; None: only when the recipe has a content
    # stage (models.cllm4rec.train.with_content_table; a checkpoint without the key has one)
    content_table: bool | None = None


class CLLM4Rec(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone: PreTrainedModel, vocab: IdVocab) -> None:
        super().__init__()
        emb = backbone.get_input_embeddings().weight
        if emb.shape[0] < vocab.vocab_size:
            raise ValueError(f"backbone embedding has {emb.shape[0]} rows, the tokenizer {vocab.vocab_size} tokens")
        if vocab.user_tokens != cfg.user_tokens:
            raise ValueError(f"the model config says user_tokens={cfg.user_tokens}, the token layout "
                             f"{vocab.user_tokens}: build the IdTokenizer with the model's user_tokens")
        self.cfg = cfg
        self.vocab = vocab
        self.hidden_size = int(emb.shape[1])
        self.backbone = backbone
        # sparse gradients for the ID tables (the task sets it for training; see the module docstring)
        self.sparse_ids = False
        rows = vocab.id_rows
        self.collab_embeddings = nn.Parameter(torch.randn(rows, self.hidden_size) * cfg.init_std)
        # drawn after the collaborative table, so leaving it out changes no other initial value
        self.content_embeddings: nn.Parameter | None = (
            nn.Parameter(torch.randn(rows, self.hidden_size) * cfg.init_std) if cfg.content_table is not False else None)
        self.register_buffer("feature_scale", torch.ones(self.hidden_size))
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=cfg.learn_scale)
        self.item_bias = nn.Parameter(torch.zeros(vocab.num_items), requires_grad=cfg.item_bias)
        u = vocab.item_row
        # only an untied model has output rows: a tied one scores with its token rows
        self.item_output: nn.Parameter | None = (None if cfg.tie_items else
                                                 nn.Parameter(self.collab_embeddings.detach()[u : u + vocab.num_items].clone()))

    @property
    def device(self) -> torch.device:
        return self.collab_embeddings.device

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    # ---- embeddings and hidden states -------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Routes ids < N to the frozen vocabulary rows and ids >= N to `table` rows (id - N)."""
        n = self.vocab.vocab_size
        if int(input_ids.max()) >= n + table.shape[0] or int(input_ids.min()) < 0:
            raise ValueError(f"token id out of range [0, {n + table.shape[0]})")
        words = self.backbone.get_input_embeddings()(input_ids.clamp(max=n - 1)).float()
        if self.sparse_ids and table.requires_grad:
            # only the ID positions' rows: the sparse gradient then holds exactly the rows read, not also
            # the row every word position would be clamped to (row-wise Adam would move it for nothing)
            at = input_ids >= n
            out = words.clone()
            out[at] = F.embedding(input_ids[at] - n, table, sparse=True).to(out.dtype)
            return out
        ids = F.embedding((input_ids - n).clamp(min=0), table)
        return torch.where((input_ids >= n).unsqueeze(-1), ids, words)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        out = self.backbone.base_model(inputs_embeds=self.embed(input_ids, table), attention_mask=attention_mask)
        return out.last_hidden_state.float()

    @staticmethod
    def last_real(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state at each row's last real token (rows are right-padded)."""
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        idx = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return torch.gather(hidden, 1, idx).squeeze(1)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
        """One vector per prompt (see ModelConfig.pooling); padding never counts. The mean leaves out
        the first token: decoder LMs park huge "attention sink" activations there, which would turn
        the user vector into a function of prompt length."""
        if pooling == "last":
            return CLLM4Rec.last_real(hidden, attention_mask)
        if pooling == "mean":
            mask = attention_mask[:, 1:].unsqueeze(-1).to(hidden.dtype)
            return (hidden[:, 1:] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        raise ValueError(f"unknown pooling {pooling!r}; accepted: last, mean")

    @property
    def vector_dim(self) -> int:
        """Width of user and item vectors in score space (hidden size, +1 with the item bias)."""
        return self.hidden_size + int(self.cfg.item_bias)

    def score_space(self, hidden: torch.Tensor) -> torch.Tensor:
        return score_space(hidden, self.cfg.item_bias)

    def item_matrix(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[J, vector_dim] vectors whose dot product with a user vector is the item score; with
        `items` (indices), only those items' rows, in that order."""
        u = self.vocab.item_row
        table = self.collab_embeddings if self.item_output is None else self.item_output
        first = u if self.item_output is None else 0
        if items is None and self.sparse_ids and table.requires_grad and torch.is_grad_enabled():
            items = torch.arange(self.num_items, device=table.device)  # read as rows: a sparse gradient
        if items is None:
            rows = table[first : first + self.num_items]
            bias = self.item_bias
        else:
            rows = F.embedding(items + first, table, sparse=self.sparse_ids)
            bias = self.item_bias[items]
        scaled = rows * self.feature_scale * self.log_scale.exp()
        if not self.cfg.item_bias:
            return scaled
        return torch.cat([scaled, bias.unsqueeze(1)], dim=1)

    def user_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden(input_ids, attention_mask, self.collab_embeddings)
        return self.score_space(self.pool(h, attention_mask, self.cfg.pooling))

    def rec_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(input_ids, attention_mask) @ self.item_matrix().T

    # ---- losses ------------------------------------------------------------------------------
    def mutual_reg(self, input_ids: torch.Tensor, table: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """lambda * mean over the batch's ID rows of ||table - stopgrad(other)||^2."""
        n = self.vocab.vocab_size
        rows = torch.unique(input_ids[input_ids >= n]) - n
        if self.cfg.mutual_reg == 0 or rows.numel() == 0:
            return table.sum() * 0.0
        diff = F.embedding(rows, table, sparse=self.sparse_ids) - other[rows].detach()
        return self.cfg.mutual_reg * diff.pow(2).sum(1).mean()

    @staticmethod
    def _next_token_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = targets != IGNORE
        return hidden[:, :-1][keep], targets[keep]

    def item_logits(self, vectors: torch.Tensor, candidates: torch.Tensor | None = None,
                    log_q: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of user vectors against every item, or against `candidates` only with their
        log sampling probability subtracted (logQ correction: a sampled softmax then estimates the full
        one without favouring the items the sampler draws most)."""
        scores = vectors @ self.item_matrix(candidates).T
        return scores if log_q is None else scores - log_q

    def collab_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, reg: bool = True,
        candidates: torch.Tensor | None = None, log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item cross-entropy over the item space only (output tied to item embeddings); with
        `candidates`, over those items only and `labels` are positions in `candidates`."""
        h = self.hidden(input_ids, attention_mask, self.collab_embeddings)
        hs, targets = self._next_token_positions(h, labels)
        loss = F.cross_entropy(self.item_logits(self.score_space(hs), candidates, log_q), targets)
        if reg:
            loss = loss + self.mutual_reg(input_ids, self.collab_embeddings, self._content())
        return loss

    def _content(self) -> nn.Parameter:
        if self.content_embeddings is None:
            raise ValueError("this model has no content table (--model.content-table False, or a schedule without a "
                             "content stage): the content LM and the mutual regularizer need one")
        return self.content_embeddings

    def content_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, reg: bool = True
    ) -> torch.Tensor:
        """Next-word cross-entropy over the vocabulary through the frozen LM head."""
        h = self.hidden(input_ids, attention_mask, self._content())
        hs, targets = self._next_token_positions(h, labels)
        logits = self.backbone.get_output_embeddings()(hs).float()
        loss = F.cross_entropy(logits, targets)
        if reg:
            loss = loss + self.mutual_reg(input_ids, self._content(), self.collab_embeddings)
        return loss

    def rec_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        targets: torch.Tensor,
        reg: bool = False,
        labels: torch.Tensor | None = None,
        collab_weight: float = 0.0,
        candidates: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
        rec_full: bool = False,
    ) -> torch.Tensor:
        """Multinomial log-likelihood of the held-out items: -sum_j y_j log softmax(s)_j.

        With `labels` (item index at each history position) and collab_weight > 0 the
        collaborative-LM loss over the prompt's own history is added: it reuses the same
        forward pass, so it is extra supervision for the item rows at almost no cost.
        With `candidates` (a sampled softmax), `targets` and `labels` index into `candidates`; with
        `rec_full` as well, only the collaborative loss samples (`labels` index into `candidates`) and the
        rec loss scores every item (`targets` over all of them): one row per prompt, cheap beside the
        collaborative loss's row per history position. Its gradient reaches the prompt (the LM, the user's
        row) from every item, and the item rows of the candidates only: a gradient for every item's row
        would make each sparse step touch the whole table (at 20k items: 1.71 s per step against 1.34).
        """
        h = self.hidden(input_ids, attention_mask, self.collab_embeddings)
        items = self.item_matrix(candidates)
        pooled = self.score_space(self.pool(h, attention_mask, self.cfg.pooling))
        if rec_full and candidates is not None:
            with torch.no_grad():
                every = self.item_matrix()
            scores = (pooled @ every.T).index_copy(1, candidates, pooled @ items.T)
        else:
            scores = pooled @ items.T
            if log_q is not None:
                scores = scores - log_q
        loss = -(F.log_softmax(scores, dim=-1) * targets).sum(1).mean()
        if labels is not None and collab_weight > 0:
            hs, next_items = self._next_token_positions(h, labels)
            if next_items.numel():
                logits = self.score_space(hs) @ items.T
                if log_q is not None:
                    logits = logits - log_q
                loss = loss + collab_weight * F.cross_entropy(logits, next_items)
        if reg:
            loss = loss + self.mutual_reg(input_ids, self.collab_embeddings, self._content())
        return loss

    def forward(self, task: str, **batch: torch.Tensor) -> torch.Tensor:
        """One entry point per task, so DistributedDataParallel can wrap the whole model."""
        if task == "collab":
            return self.collab_loss(**batch)
        if task == "content":
            return self.content_loss(**batch)
        if task == "rec":
            return self.rec_loss(**batch)
        raise ValueError(f"unknown task {task!r}; accepted: collab, content, rec")

    # ---- state -------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, batches: list[dict[str, torch.Tensor]], item_counts: torch.Tensor | None = None) -> None:
        """feature_scale = 1 / per-dimension RMS of last hidden states on real rec prompts.

        RMS, not std: several dimensions carry a large constant offset; dividing by their std
        would blow them up and make the initial scores (and loss) huge.

        With `item_counts` (train interactions per item) and an item bias, the bias starts at the
        centred log(1 + count): the multinomial's own popularity prior, so the first steps start
        from most-popular instead of from uniform.
        """
        hs = torch.cat([
            self.pool(self.hidden(b["input_ids"], b["attention_mask"], self.collab_embeddings), b["attention_mask"],
                      self.cfg.pooling)
            for b in batches
        ])
        rms = hs.pow(2).mean(0).sqrt()
        self.feature_scale.copy_(1.0 / (rms + 1e-3 * rms.mean() + 1e-8))
        # Temperature: initial item scores of unit spread, whatever the item rows' scale (random
        # N(0, 0.02^2) rows and title-initialised rows differ by ~4x).
        self.log_scale.zero_()
        spread = float((hs @ self.item_matrix()[:, : self.hidden_size].T).std())
        if spread > 0:
            self.log_scale.fill_(-torch.log(torch.tensor(spread)).item())
        if self.cfg.item_bias and item_counts is not None:
            prior = torch.log1p(item_counts.float().to(self.device))
            self.item_bias.copy_(prior - prior.mean())

    @torch.no_grad()
    def init_items_from_text(self, token_ids: list[list[int]]) -> int:
        """Item rows of both tables = the mean frozen vocabulary embedding of the item's text.

        An item then starts where the backbone already reads its title, instead of at noise the
        LM has never seen; returns how many items had text.
        """
        if len(token_ids) != self.num_items:
            raise ValueError(f"{len(token_ids)} item texts for {self.num_items} items")
        vocab = self.backbone.get_input_embeddings().weight
        u, done = self.vocab.item_row, 0
        for j, ids in enumerate(token_ids):
            if ids:
                row = vocab[torch.as_tensor(ids, device=vocab.device)].float().mean(0)
                self.collab_embeddings[u + j] = row
                if self.content_embeddings is not None:
                    self.content_embeddings[u + j] = row
                if self.item_output is not None:
                    self.item_output[j] = row
                done += 1
        return done

    def trained_keys(self) -> list[str]:
        """What a checkpoint stores: the ID tables and heads, plus the LM weights that train
        (adapters, unfrozen blocks) under their `backbone.` names; the frozen LM is referenced."""
        own = [k for k in TRAINED_KEYS if k != CONTENT_KEY or self.content_embeddings is not None]
        own += [*((BIAS_KEY,) if self.cfg.item_bias else ()), *((OUTPUT_KEY,) if self.item_output is not None else ())]
        return own + trained_lm_names(self.backbone, "backbone.")

    def trained_state(self) -> dict[str, torch.Tensor]:
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        return {k: own[k].detach().clone().contiguous() for k in self.trained_keys()}

    def load_trained_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Strict: every key present, nothing extra, every shape equal."""
        load_strict(self, self.trained_keys(), dict(tensors))

    def id_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.collab_embeddings, self.content_embeddings, self.item_output) if p is not None]

    def head_parameters(self) -> list[nn.Parameter]:
        """Temperature and item bias: a handful of scalars that must move by whole units (the
        softmax over items needs a spread of several nats), far beyond what an embedding-sized
        learning rate lets them travel in a few hundred steps; they get their own rate."""
        return [p for p in (self.log_scale, self.item_bias) if p.requires_grad]

    def lm_parameters(self) -> list[nn.Parameter]:
        """LM weights that train: LoRA adapters or unfrozen blocks (none in the paper's setting)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]
