"""Bayesian Personalised Ranking (Rendle et al. 2009) through the `implicit` package, on CPU.

One thread and a fixed `random_state` make the SGD deterministic. BPR has no closed-form
fold-in: a user is scored with the factors learnt on the rows it was fitted on, so the history
passed at scoring time cannot reach the scores. To see at test time what every other model sees
(train + valid: the CLLM4Rec prompt, ALS's fold-in, EASE's input, SASRec's sequence), the runner
refits it on those rows before the test part (`FITS_USER_HISTORY`, models.baselines.runner);
tuning fits on train and scores valid, the same relation one step earlier. Scored with train-only
factors, BPR lost every valid interaction at test time: Recall@20 0.3265 instead of about 0.34
on MovieLens-100K. implicit appends an item-bias column to the item factors and a matching
constant 1 to the user factors, so the dot product includes the bias.

The refit continues from the factors fitted on train for `refit_iterations` epochs over train + valid
instead of starting again from random factors for `iterations` (100): the fits are BPR's whole cost
at scale (one epoch is one pass over every interaction: ~5 min per fit at 5M interactions on one core),
and on MovieLens-100K 10 warm epochs score the test part as a full refit does (Recall@20 +0.0008 ±
0.0035, leave-one-out HR@10 +0.0032 ± 0.0057, paired over the test users; `llmrec bench bpr-refit`).
`refit_iterations 0` refits from scratch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from models.baselines.matrix import rows_matrix
from models.data.splits import Split


@dataclass
class BPRConfig:
    factors: int = 64
    learning_rate: float = 0.005
    regularization: float = 0.001
    iterations: int = 100  # on ML-100K, 300 epochs at these rates overfit down to popularity level
    seed: int = 0
    refit_iterations: int = 10  # epochs of the warm refit on the test part's history; 0: refit from scratch


@dataclass
class BPRGrid:
    """Values tried on the validation part; an empty tuple keeps the config's value."""

    factors: tuple[int, ...] = ()
    learning_rate: tuple[float, ...] = (0.005, 0.01)
    regularization: tuple[float, ...] = (0.001, 0.01)
    # 30: at 100k users / 5M interactions the best point had the fewest epochs (valid Recall@20 0.23 at 30
    # epochs, 0.14 at 100, lr 0.01 reg 0.01; benchmarks/results/quality_baselines_synthetic100k_bpr-grid.md)
    iterations: tuple[int, ...] = (30, 60, 100, 150)


class BPR:
    # user factors come from fitting, not from the history given at scoring time: score a part only
    # after fitting on the rows the other models see as history for it (runner.history_split)
    FITS_USER_HISTORY = True

    def __init__(self, cfg: BPRConfig | None = None) -> None:
        self.cfg = cfg or BPRConfig()
        self.model: BayesianPersonalizedRanking | None = None

    @staticmethod
    def search_cost(cfg: BPRConfig) -> float:
        """Relative cost of a fit (the tuning search tries cheap points first): SGD epochs x factors."""
        return float(cfg.iterations * cfg.factors)

    def fit(self, split: Split) -> BPR:
        cfg = self.cfg
        self.model = BayesianPersonalizedRanking(
            factors=cfg.factors,
            learning_rate=cfg.learning_rate,
            regularization=cfg.regularization,
            iterations=cfg.iterations,
            num_threads=1,
            random_state=cfg.seed,
        )
        self._train(split)
        return self

    def refit(self, split: Split) -> BPR:
        """A new scorer fitted on `split` (the same users and items, more rows per user), continuing from
        this one's factors; this one is left as it is (it still scores the valid part)."""
        if self.model is None:
            raise RuntimeError("BPR.fit(split) must run before refit")
        if not self.cfg.refit_iterations:
            return BPR(self.cfg).fit(split)
        warm = BPR(self.cfg)
        warm.model = copy.deepcopy(self.model)
        warm.model.iterations = self.cfg.refit_iterations
        warm._train(split)  # implicit keeps factors of the same shape and trains on from them
        return warm

    def _train(self, split: Split) -> None:
        assert self.model is not None
        with threadpool_limits(limits=1, user_api="blas"):
            self.model.fit(rows_matrix(split.train, split.num_items), show_progress=False)

    def __call__(self, users: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("BPR.fit(split) must run before scoring")
        user_factors = np.asarray(self.model.user_factors)[users]
        return user_factors @ np.asarray(self.model.item_factors).T
