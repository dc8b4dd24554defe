"""TCF data preparation and training batches (index arrays only; the model turns them into vectors).

Preparation follows the paper: users with fewer than 5 interactions are dropped (the data
config's `min_user_interactions`, which TCF's train command defaults to 5), and each remaining
user keeps only their most recent `keep_last` interactions (S + 3 by default: S for the SASRec
window, +1 for the next-item target, +2 for the leave-one-out validation and test items; 0 keeps
the whole history, which SASRec then trains on in windows of S + 1 items: see sasrec_windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.data.dataset import InteractionData


def keep_recent(data: InteractionData, keep_last: int = 23) -> InteractionData:
    """Each user's most recent `keep_last` interactions (all of them when 0)."""
    order = data.order()
    users = data.user[order]
    bounds = np.searchsorted(users, np.arange(data.num_users + 1))
    keep: list[np.ndarray] = []
    for u in range(data.num_users):
        lo, hi = bounds[u], bounds[u + 1]
        if keep_last > 0:
            lo = max(lo, hi - keep_last)
        keep.append(order[lo:hi])
    idx = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return InteractionData(
        name=data.name,
        users=data.users,
        items=data.items,
        user=data.user[idx],
        item=data.item[idx],
        timestamp=None if data.timestamp is None else data.timestamp[idx],
        item_text=data.item_text,
        item_title=data.item_title,
        review=None if data.review is None else [data.review[i] for i in idx],
        catalogue_only=data.catalogue_only,
    )


def log_popularity(train: list[np.ndarray], num_items: int) -> np.ndarray:
    """log Q(item): add-one smoothed share of the item among training interactions (the sampling odds)."""
    counts = np.bincount(np.concatenate(train).astype(np.int64), minlength=num_items).astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


@dataclass
class Batch:
    rows: torch.Tensor  # [U] item rows whose vectors the step needs (full softmax: every item)
    seq_idx: torch.Tensor  # [B, S] index into rows (SASRec input; 0 where padded)
    seq_mask: torch.Tensor  # [B, S] 1 = real input item
    query_pos: torch.Tensor  # [B, S] bool: positions with a next-item target
    users: torch.Tensor  # [B] user rows (DSSM queries)
    cand_idx: torch.Tensor  # [C] index into rows: the softmax's candidates
    target: torch.Tensor  # [R] candidate column of each query's positive
    own: torch.Tensor | None  # [R, C] bool: candidate is one of the query user's own training items
    log_q: torch.Tensor  # [C]


def _own(query_users: np.ndarray, cand: np.ndarray, user_items: list[np.ndarray]) -> np.ndarray:
    """[R, C]: whether each candidate is one of the query's user's items. One membership test per distinct
    user of the batch, not per query: a SASRec batch has up to 50 queries per user, and at 100k users the
    per-query version was most of a training step's time (cProfile of the default schedule's steps)."""
    if not len(query_users):
        return np.zeros((0, len(cand)), dtype=bool)
    users, inverse = np.unique(query_users, return_inverse=True)
    return np.stack([np.isin(cand, user_items[u]) for u in users])[inverse]


def _assemble(inp: np.ndarray, mask: np.ndarray, users: np.ndarray, query_users: np.ndarray, targets: np.ndarray,
              train: list[np.ndarray], log_q: np.ndarray, full_softmax: bool,
              candidates: np.ndarray | None = None) -> Batch:
    """One batch from item rows: SASRec inputs `inp`/`mask` [B, S] (S = 0 for DSSM), one query per
    target. Full softmax: the candidates are every item (plain cross-entropy: no logQ, no masking,
    every item's vector computed each step). Sampled (IBCE): the batch's distinct targets, with
    logQ and the query user's own items masked (see models.tcf.loss). `candidates` (sorted rows; full
    softmax only): the items a step may rank, so items held out of training are not pushed down as
    negatives either."""
    real = mask.astype(bool)
    if full_softmax:
        rows = np.arange(len(log_q))
        seq_idx, cand_idx, tcol = np.where(real, inp, 0), rows, targets
        if candidates is not None:
            cand_idx, tcol = candidates, np.searchsorted(candidates, targets)
        own, lq = None, np.zeros(len(cand_idx), dtype=np.float32)
    else:
        rows, inv = np.unique(np.concatenate([inp[real], targets]), return_inverse=True)
        seq_idx = np.zeros_like(inp)
        seq_idx[real] = inv[: real.sum()]
        cand, tcol = np.unique(targets, return_inverse=True)
        cand_idx, own, lq = np.searchsorted(rows, cand), _own(query_users, cand, train), log_q[cand]
    return Batch(
        rows=torch.from_numpy(rows), seq_idx=torch.from_numpy(seq_idx), seq_mask=torch.from_numpy(mask),
        query_pos=torch.from_numpy(real), users=torch.from_numpy(np.asarray(users, dtype=np.int64)),
        cand_idx=torch.from_numpy(cand_idx), target=torch.from_numpy(tcol.astype(np.int64)),
        own=None if own is None else torch.from_numpy(own), log_q=torch.from_numpy(lq),
    )


def sasrec_windows(train: list[np.ndarray], max_len: int) -> np.ndarray:
    """[W, 2] (user, end): windows of max_len + 1 items tiling each user's whole training sequence
    from its end, so every training item is a next-item target exactly once per epoch however long
    the history (window = items[end - max_len - 1 : end]; the next one ends max_len earlier)."""
    out = [(u, end) for u, t in enumerate(train) for end in range(len(t), 1, -max_len)]
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def sasrec_batch(windows: np.ndarray, train: list[np.ndarray], max_len: int, log_q: np.ndarray,
                 full_softmax: bool = False, candidates: np.ndarray | None = None) -> Batch:
    """Windows (user, end) of sasrec_windows: inputs = the window but its last item, targets = shifted by one."""
    b = len(windows)
    inp = np.zeros((b, max_len), dtype=np.int64)
    tgt = np.zeros((b, max_len), dtype=np.int64)
    mask = np.zeros((b, max_len), dtype=np.int64)
    for i, (u, end) in enumerate(windows):
        seq = train[u][max(0, end - max_len - 1) : end]
        n = len(seq) - 1
        if n <= 0:
            continue
        inp[i, max_len - n:] = seq[:-1]
        tgt[i, max_len - n:] = seq[1:]
        mask[i, max_len - n:] = 1
    # left padding no window of the batch reaches is cut: SASRec counts positions from the newest
    # item, so the real positions' outputs do not change, and attention costs the square of the width
    width = int(mask.sum(1).max()) if b else 0
    inp, tgt, mask = inp[:, max_len - width:], tgt[:, max_len - width:], mask[:, max_len - width:]
    users = windows[:, 0] if b else np.zeros(0, dtype=np.int64)
    query_users = np.repeat(users, mask.sum(1))
    return _assemble(inp, mask, users, query_users, tgt[mask.astype(bool)], train, log_q, full_softmax, candidates)


def dssm_batch(pair_users: np.ndarray, pair_items: np.ndarray, train: list[np.ndarray], log_q: np.ndarray,
               full_softmax: bool = False, candidates: np.ndarray | None = None) -> Batch:
    empty = np.zeros((len(pair_users), 0), dtype=np.int64)
    return _assemble(empty, empty, pair_users, pair_users, np.asarray(pair_items, dtype=np.int64), train, log_q,
                     full_softmax, candidates)


def left_pad(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last max_len items of each history, left-padded: (rows [B, S], mask [B, S])."""
    rows = np.zeros((len(histories), max_len), dtype=np.int64)
    mask = np.zeros((len(histories), max_len), dtype=np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-max_len:]
        if len(h):
            rows[i, max_len - len(h):] = h
            mask[i, max_len - len(h):] = 1
    return rows, mask
