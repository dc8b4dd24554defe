"""Fit, tune and evaluate the baselines on one Split, so every model's report can put them on
exactly the same split beside its own numbers.

Hyper-parameters are chosen on the validation part only (first metric of the protocol, e.g.
Recall@20 or HR@10); the test part is evaluated once, with the chosen setting.

Every baseline sees at test time exactly what the models see: the user's train + valid items
(random split: both parts; leave-one-out: the whole sequence before the test item). ALS folds
them in and EASE reads them as input; BPR, whose user factors exist only for the rows it was
fitted on, is refitted on train + valid with the chosen setting before the test part is scored
(warm: on from the factors fitted on train, models.baselines.bpr).

At 100k users / 20k items the search is what costs (48 fits per protocol, each scored on every
validation user: the fits take most of it, the full rankings the rest), so it is bounded:
grid points are scored on a fixed, seeded sample of the validation users (`Tuning.users`; the chosen
setting's valid figures come from the same sample, its test figures from every test user: a full
ranking of 100k users costs 30-80 s per model and part, and valid only picks the setting), the model fitted at the best point is kept
instead of fitted again, the config's own setting is tried first (the cheapest points, for a model that
states what a fit costs: `expand`), and a model's search stops after
`Tuning.budget_min` (the points it did not reach are counted in the report, never silently dropped).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common import logs
from models.baselines.als import ALS, ALSConfig, ALSGrid
from models.baselines.bpr import BPR, BPRConfig, BPRGrid
from models.baselines.ease import EASE, EASEConfig, EASEGrid
from models.baselines.popularity import MostPopular, PopularityConfig
from models.data.dataset import InteractionData
from models.data.splits import Split
from models.metrics import PROTOCOL_METRICS, evaluate, evaluate_per_user
from models.training.validation import sample_users

log = logs.get(__name__)

# name -> (model class, config class); every model has fit(split) -> self and is a scorer.
BASELINES: dict[str, tuple[Callable[[Any], Any], type]] = {
    "most_popular": (MostPopular, PopularityConfig),
    "bpr": (BPR, BPRConfig),
    "als": (ALS, ALSConfig),
    "ease": (EASE, EASEConfig),
}
DEFAULT_NAMES = tuple(BASELINES)


@dataclass
class BaselineConfigs:
    """The starting hyper-parameters of each baseline (used as-is when not tuning)."""

    als: ALSConfig = field(default_factory=ALSConfig)
    bpr: BPRConfig = field(default_factory=BPRConfig)
    ease: EASEConfig = field(default_factory=EASEConfig)


@dataclass
class BaselineGrids:
    """Validation grids; the cross product of the non-empty tuples is tried."""

    als: ALSGrid = field(default_factory=ALSGrid)
    bpr: BPRGrid = field(default_factory=BPRGrid)
    ease: EASEGrid = field(default_factory=EASEGrid)


@dataclass
class Tuning:
    """How far the validation search may go (on ML-100K neither limit is reached: its 943 users are all
    scored, and no model's search takes a minute: benchmarks/results/quality_baselines_ml100k.json)."""

    users: int = 5000  # validation users the grid points and the chosen valid figures are scored on (a fixed sample); 0: all
    seed: int = 0  # of that sample
    budget_min: float = 3.0  # per model: no new grid point after this many minutes of search; 0: no limit


@dataclass
class BaselineResult:
    name: str
    params: dict[str, Any]
    valid: dict[str, float]
    test: dict[str, float]
    fit_seconds: float  # fitting the chosen setting
    tune_seconds: float  # the whole validation search, 0 when not tuning
    eval_seconds: float  # scoring valid + test with the chosen setting
    grid: list[dict[str, Any]] = field(default_factory=list)  # params + validation metric per point
    # test metric per evaluated user (split.eval_users("test") order), for paired comparisons
    test_per_user: dict[str, np.ndarray] = field(default_factory=dict)
    grid_size: int = 0  # points in the grid; more than len(grid) when the search budget cut it
    tune_users: int = 0  # validation users each grid point was scored on
    valid_users: int = 0  # validation users the chosen setting's valid figures come from (the same sample)


def expand(base: Any, grid: Any | None, cost: Callable[[Any], float] | None = None) -> list[Any]:
    """Every config of the grid's cross product, starting from `base` (empty tuples keep base); `base`
    itself first when it is a grid point, so a search cut short has tried it. With `cost` (the model's
    relative cost of fitting a point) the cheapest points come first instead, `base` first among equals, so
    a search cut short has tried as many points as it could: BPR's grid spans 30 to 150 epochs, and at 100k
    users its 100-epoch config (a 5-min fit) alone spent the whole budget."""
    if grid is None:
        return [base]
    axes = {f.name: getattr(grid, f.name) for f in dataclasses.fields(grid) if getattr(grid, f.name)}
    if not axes:
        return [base]
    points = [
        dataclasses.replace(base, **dict(zip(axes, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]
    # stable: the rest keep the grid's order
    return sorted(points, key=lambda p: (cost(p) if cost is not None else 0.0, p != base))


def history_split(split: Split, part: str) -> Split:
    """`split` with the history the models see when scoring `part` as its train rows (valid: train;
    test: train + valid), for a baseline that can score only the users' rows it was fitted on."""
    if part == "valid":
        return split
    empty = [np.zeros(0, dtype=np.int64) for _ in split.valid]
    return dataclasses.replace(split, train=split.seen("test"), valid=empty)


def fit_for(name: str, split: Split, part: str, cfg: Any | None = None, fitted: Any | None = None) -> Any:
    """A scorer for `part` that uses the user's whole history at that point: `fitted` (fitted on
    split.train) when the model reads the history given at scoring time, else a refit on it (warm, from
    `fitted`, where the model offers one)."""
    refits = getattr(BASELINES[name][0], "FITS_USER_HISTORY", False)
    if fitted is not None and (part == "valid" or not refits):
        return fitted
    if fitted is not None and hasattr(fitted, "refit"):
        return fitted.refit(history_split(split, part))
    return fit(name, history_split(split, part), cfg)


def search_cost(name: str) -> Callable[[Any], float] | None:
    """The model's relative cost of fitting a config (`search_cost`), where it declares one."""
    return getattr(BASELINES[name][0], "search_cost", None) if name in BASELINES else None


def fit(name: str, split: Split, cfg: Any | None = None) -> Any:
    """A fitted scorer `scorer(users, history) -> [B, num_items]` for baseline `name`."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; accepted: {', '.join(BASELINES)}")
    model_cls, cfg_cls = BASELINES[name]
    return model_cls(cfg if cfg is not None else cfg_cls()).fit(split)


def run_baseline(
    name: str,
    split: Split,
    metrics: Sequence[str],
    cfg: Any | None = None,
    grid: Any | None = None,
    select: str | None = None,
    test_mask: list[np.ndarray] | None = None,
    tuning: Tuning | None = None,
) -> BaselineResult:
    """Tunes `name` on split's valid part over `grid` (by `select`, default metrics[0]; on `tuning`'s
    user sample, within its budget), then evaluates the chosen setting on that sample and every test user.
    `test_mask`: per user, items masked at test time beyond the history (models.metrics.evaluate_per_user),
    e.g. held-out items the user watched."""
    select = select or metrics[0]
    tuning = tuning or Tuning()
    base = cfg if cfg is not None else BASELINES[name][1]()
    candidates = expand(base, grid, search_cost(name))
    tune_users = sample_users(split.eval_users("valid"), tuning.users, tuning.seed)
    points: list[dict[str, Any]] = []
    tune_start = time.perf_counter()
    best_cfg, best_score, best_model, best_fit_s = base, -np.inf, None, 0.0
    if len(candidates) > 1:
        for i, cand in enumerate(candidates):
            elapsed = time.perf_counter() - tune_start
            if i > 0 and tuning.budget_min > 0 and elapsed > 60 * tuning.budget_min:  # the first point always runs
                log.warning("search budget spent: grid cut", model=name, tried=i, of=len(candidates),
                            budget_min=tuning.budget_min)
                break
            t0 = time.perf_counter()
            model = fit(name, split, cand)
            fit_s = time.perf_counter() - t0
            score = evaluate(model, split, "valid", [select], users=tune_users)[select]
            points.append({**dataclasses.asdict(cand), select: score, "fit_seconds": round(fit_s, 3)})
            log.info("tune", model=name, point=f"{i + 1}/{len(candidates)}", params=dataclasses.asdict(cand),
                     **{select: round(score, 4)}, fit_s=round(fit_s, 2), users=len(tune_users))
            if score > best_score:
                best_cfg, best_score, best_model, best_fit_s = cand, score, model, fit_s
            del model
    tune_seconds = time.perf_counter() - tune_start if len(candidates) > 1 else 0.0
    start = time.perf_counter()
    scorer = best_model if best_model is not None else fit(name, split, best_cfg)
    test_scorer = fit_for(name, split, "test", best_cfg, fitted=scorer)
    fit_seconds = time.perf_counter() - start + best_fit_s
    log.info("fitted", model=name, params=dataclasses.asdict(best_cfg), fit_s=round(fit_seconds, 2))
    start = time.perf_counter()
    valid = evaluate(scorer, split, "valid", metrics, users=tune_users)
    users, per_user = evaluate_per_user(test_scorer, split, "test", metrics, mask=test_mask)
    test = {m: float(v.mean()) for m, v in per_user.items()} | {"users": float(len(users))}
    eval_seconds = time.perf_counter() - start
    return BaselineResult(
        name, dataclasses.asdict(best_cfg), valid, test, fit_seconds, tune_seconds, eval_seconds, points, per_user,
        grid_size=len(candidates) if len(candidates) > 1 else 0, tune_users=len(tune_users) if len(candidates) > 1 else 0,
        valid_users=len(tune_users),
    )


def run_baselines_detailed(
    split: Split,
    names: Sequence[str] = DEFAULT_NAMES,
    metrics: Sequence[str] | None = None,
    configs: BaselineConfigs | None = None,
    grids: BaselineGrids | None = None,
    tune: bool = True,
    test_mask: list[np.ndarray] | None = None,
    tuning: Tuning | None = None,
    on_result: Callable[[BaselineResult], None] | None = None,
) -> list[BaselineResult]:
    """Every model of `names` on `split`; `on_result` gets each result as soon as it is there (a report
    written from it keeps the models done when a later one is killed)."""
    metrics = list(metrics or PROTOCOL_METRICS[split.protocol])
    configs = configs or BaselineConfigs()
    grids = grids or BaselineGrids()
    results = []
    for n, name in enumerate(names):
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; accepted: {', '.join(BASELINES)}")
        cfg = getattr(configs, name, None)
        grid = getattr(grids, name, None) if tune else None
        log.info("baseline start", model=name, protocol=split.protocol, model_number=f"{n + 1}/{len(names)}",
                 grid_points=len(expand(cfg if cfg is not None else BASELINES[name][1](), grid)))
        results.append(run_baseline(name, split, metrics, cfg, grid, test_mask=test_mask, tuning=tuning))
        log.info("baseline", model=name, protocol=split.protocol, test=results[-1].test)
        if on_result is not None:
            on_result(results[-1])
    return results


def run_baselines(
    data: InteractionData,
    split: Split,
    names: Sequence[str] = DEFAULT_NAMES,
    metrics: Sequence[str] | None = None,
    tune: bool = True,
) -> dict[str, dict[str, float]]:
    """Test metrics per baseline on `split` (made from `data`), hyper-parameters tuned on valid.

    For the CLLM4Rec / TCF evaluations: `run_baselines(data, split)` ->
    {"most_popular": {"recall@20": ..., "users": ...}, "als": {...}, ...}.
    """
    if data.num_items != split.num_items:
        raise ValueError(
            f"split has {split.num_items} items but data has {data.num_items}: not the same data"
        )
    return {r.name: r.test for r in run_baselines_detailed(split, names, metrics, tune=tune)}
