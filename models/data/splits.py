"""The two evaluation protocols, deterministic for a seed.

- random_80_10_10 (CLLM4Rec): each user's items shuffled with the seed, then split 80/10/10
  into train/valid/test. A user needs 3 items to have one in each part.
- leave_one_out (TCF): items in time order; valid = second-to-last, test = last.

Users too short for a protocol keep all their items in train, are never evaluated, and are
counted in `too_short`, so reports can say how many were left out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from models.data.dataset import InteractionData

PROTOCOLS = ("random_80_10_10", "leave_one_out")
MIN_ITEMS = 3


@dataclass
class Split:
    protocol: str
    seed: int
    num_items: int
    train: list[np.ndarray]  # per user: item indices (time order for leave_one_out)
    valid: list[np.ndarray]
    test: list[np.ndarray]
    too_short: int  # users kept in train only

    @property
    def num_users(self) -> int:
        return len(self.train)

    def eval_users(self, part: str) -> np.ndarray:
        """Users that have at least one item in `part` ("valid" or "test")."""
        target = self.valid if part == "valid" else self.test
        return np.array([u for u, t in enumerate(target) if len(t)], dtype=np.int64)

    def seen(self, part: str) -> list[np.ndarray]:
        """Items to mask when ranking for `part`: train for valid; train + valid for test."""
        if part == "valid":
            return self.train
        return [np.concatenate([a, b]) for a, b in zip(self.train, self.valid, strict=True)]

    def fingerprint(self) -> str:
        """sha256 of the three parts' item rows: equal fingerprints, the same split (reports compare
        only runs that share one)."""
        h = hashlib.sha256(self.protocol.encode())
        for part in (self.train, self.valid, self.test):
            for items in part:
                h.update(np.asarray(items, dtype=np.int64).tobytes() + b"|")
        return h.hexdigest()

    def longer_than(self, window: int) -> dict[str, int] | None:
        """How many users' observed histories (train + valid, what a test-time query reads) exceed a model's
        window, for the one log line each trainer gives; None when none does."""
        lengths = np.array([len(t) + len(v) for t, v in zip(self.train, self.valid, strict=True)], dtype=np.int64)
        longer = int((lengths > window).sum())
        return {"users": longer, "of": len(lengths), "longest": int(lengths.max()), "window": window} if longer else None

    def counts(self) -> dict[str, int]:
        return {
            "users": self.num_users,
            "evaluated_users_valid": len(self.eval_users("valid")),
            "evaluated_users_test": len(self.eval_users("test")),
            "users_too_short": self.too_short,
            "train_interactions": int(sum(len(t) for t in self.train)),
            "valid_interactions": int(sum(len(t) for t in self.valid)),
            "test_interactions": int(sum(len(t) for t in self.test)),
        }


def _dedupe_keep_last(seq: np.ndarray) -> np.ndarray:
    """Drops repeated items, keeping each one's latest position (so a re-watch counts once)."""
    _, last_rev = np.unique(seq[::-1], return_index=True)
    keep = np.sort(len(seq) - 1 - last_rev)
    return seq[keep]


def random_split(data: InteractionData, seed: int = 0, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    too_short = 0
    empty = np.zeros(0, dtype=np.int64)
    for seq in data.sequences():
        items = _dedupe_keep_last(seq)
        n = len(items)
        if n < MIN_ITEMS:
            too_short += 1
            train.append(items)
            valid.append(empty)
            test.append(empty)
            continue
        perm = items[rng.permutation(n)]
        n_test = max(1, round(test_frac * n))
        n_valid = max(1, round(valid_frac * n))
        test.append(np.sort(perm[:n_test]))
        valid.append(np.sort(perm[n_test : n_test + n_valid]))
        train.append(np.sort(perm[n_test + n_valid :]))
    return Split("random_80_10_10", seed, data.num_items, train, valid, test, too_short)


def leave_one_out_split(data: InteractionData, seed: int = 0) -> Split:
    """`seed` is recorded only: the split depends on time order alone."""
    train, valid, test = [], [], []
    too_short = 0
    empty = np.zeros(0, dtype=np.int64)
    for seq in data.sequences():
        items = _dedupe_keep_last(seq)
        if len(items) < MIN_ITEMS:
            too_short += 1
            train.append(items)
            valid.append(empty)
            test.append(empty)
            continue
        train.append(items[:-2])
        valid.append(items[-2:-1])
        test.append(items[-1:])
    return Split("leave_one_out", seed, data.num_items, train, valid, test, too_short)


def make_split(data: InteractionData, protocol: str, seed: int = 0) -> Split:
    if protocol == "random_80_10_10":
        return random_split(data, seed)
    if protocol == "leave_one_out":
        return leave_one_out_split(data, seed)
    raise ConfigError(f"unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
