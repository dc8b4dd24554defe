"""Cold-start protocol: a seeded share of the items is held out of training with all of its interactions.

A held-out item never appears in a training sequence, a validation target or a history; it stays a
test target, so the test users whose last item is held out measure how well the model ranks an item
it has never trained on (scored through its text, as the server scores an item added by UpsertItems).
The other test users measure the usual, warm, next-item quality on the same model.

Every item the user interacted with is masked from its ranking, held out or not (`held_seen`): a
held-out item leaves the model's history, not the user's. Beside the TCF towers the report puts what
a practitioner would use for new items: content kNN over the same MiniLM embeddings, popularity by
text neighbours, and random among the unwatched new items (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from models.data.splits import Split


def held_out_of(config: dict[str, Any]) -> np.ndarray:
    """The held-out item rows a checkpoint's config records (`llmrec train tcf` writes them); empty: none."""
    return np.asarray((config.get("holdout") or {}).get("items", []), dtype=np.int64)


def held_out_items(split: Split, share: float, seed: int) -> np.ndarray:
    """Sorted item rows: round(share x the items that have interactions), drawn with `seed`."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share of items must be in [0, 1), got {share}")
    parts = [np.concatenate(p) for p in (split.train, split.valid, split.test) if len(p)]
    used = np.unique(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, dtype=np.int64)
    n = round(share * len(used))
    return np.sort(np.random.default_rng(seed).choice(used, size=n, replace=False)) if n else used[:0]


def hold_out(split: Split, held: np.ndarray) -> Split:
    """The split without `held` items in train and valid (a held-out validation target leaves its user
    without one); test targets are kept, whichever they are."""
    if not len(held):
        return split

    def drop(items: np.ndarray) -> np.ndarray:
        return items[~np.isin(items, held)]

    return replace(split, train=[drop(t) for t in split.train], valid=[drop(v) for v in split.valid])


def held_seen(split: Split, held: np.ndarray) -> list[np.ndarray]:
    """Per user of the split before `hold_out`: the held-out items it interacted with before its test
    item. `hold_out` takes them out of its history (the model never trains on them), but the user has
    watched them: eval must mask them, or the ranking offers every user ~20 items it already saw."""
    seen = split.seen("test")
    return [np.sort(s[np.isin(s, held)]).astype(np.int64) for s in seen]


def cold_targets(split: Split, held: np.ndarray) -> np.ndarray:
    """Mask over split.eval_users("test"): the test item is a held-out (new) item."""
    return np.array([bool(np.isin(split.test[u], held).any()) for u in split.eval_users("test")], dtype=bool)


# ---- what a practitioner would use for new items: the baselines the text towers must beat -----------------

def text_embeddings(text: Any, texts: list[str]) -> np.ndarray:
    """Unit-norm sentence embeddings of the item texts: the frozen LM's pooled output (for MiniLM the
    all-MiniLM-L6-v2 sentence embedding), the same features the text tower's MLP reads. Cached."""
    from models.tcf.preinfer import preinfer
    from models.training.capacity import CapacityConfig

    pooled = preinfer(text, CapacityConfig(), texts, progress=False).pooled
    assert pooled is not None
    emb = pooled.float().numpy()
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def content_knn(emb: np.ndarray, recent: int) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    """Content kNN: every item scored by its mean cosine to the user's last `recent` history items
    (the window SASRec reads). A new item needs nothing but its text, so this is the first thing to
    try for cold start, and what a text tower has to beat."""

    def scorer(users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(users), len(emb)), dtype=np.float32)
        for i, h in enumerate(history):
            h = np.asarray(h, dtype=np.int64)[-recent:]
            if len(h):
                out[i] = emb @ emb[h].mean(0)
        return out

    return scorer


def text_popularity(emb: np.ndarray, train: list[np.ndarray], held: np.ndarray,
                    k: int = 10) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    """Popularity by text neighbours: a known item scores its training count, a new item the mean
    count of its `k` nearest known items by text (how popular items like it were). Not personalised."""
    counts = np.bincount(np.concatenate([*train, np.zeros(0, np.int64)]).astype(np.int64),
                         minlength=len(emb)).astype(np.float32)
    known = np.setdiff1d(np.arange(len(emb)), held)
    scores = counts.copy()
    if len(held) and len(known):
        sims = emb[held] @ emb[known].T
        near = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, len(known))]
        scores[held] = counts[known][near].mean(1)

    def scorer(users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(scores, (len(users), len(scores))).copy()

    return scorer


def random_new_expected(split: Split, held: np.ndarray, watched: list[np.ndarray] | None,
                        k: int = 10) -> dict[str, np.ndarray]:
    """HR@k and NDCG@k, per test user (split.eval_users("test") order), of ranking the new items the
    user has not interacted with in a uniformly random order, as expectations (no draw, no noise of
    its own): with n such items and the target among them, E[HR@k] = min(k, n) / n and
    E[NDCG@k] = (1/n) sum_{r <= min(k, n)} 1 / log2(r + 1). A user whose target is not new scores 0.
    It is told that the next item is new, which no other row is: the floor the new-item column has
    to clear, not a competitor."""
    users = split.eval_users("test")
    seen = split.seen("test")
    hr, ndcg = np.zeros(len(users)), np.zeros(len(users))
    held_set = np.asarray(held, dtype=np.int64)
    for i, u in enumerate(users):
        if not np.isin(split.test[u], held_set).any():
            continue
        masked = np.concatenate([seen[u], watched[u] if watched is not None else np.zeros(0, np.int64)])
        n = int((~np.isin(held_set, masked)).sum())
        top = min(k, n)
        hr[i] = top / n
        ndcg[i] = float((1.0 / np.log2(np.arange(2, top + 2))).sum()) / n
    return {f"hr@{k}": hr, f"ndcg@{k}": ndcg}
