"""`llmrec eval baselines` at scale: EASE refused in one line when it cannot fit, its in-place fit exact and
within the memory the refusal assumes, the search bounded (user sample, budget, the config's point first,
no refit of the best point) and the report written after every model."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from common.config import parse
from common.errors import ConfigError
from models.baselines import cli, runner
from models.baselines.bpr import BPR, BPRConfig, BPRGrid
from models.baselines.ease import EASE, EASE_COPIES, EASEConfig, EASEGrid, check_memory, ease_bytes
from models.baselines.matrix import rows_matrix
from models.baselines.runner import Tuning, expand, run_baseline, search_cost
from models.data.formats import memory
from models.data.splits import Split
from models.metrics import top_k
from models.tiny import write_ml100k


def random_split(users: int, items: int, per_user: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(items, size=per_user, replace=False)) for _ in range(users)]
    return Split("random_80_10_10", 0, items, [r[2:] for r in rows], [r[:1] for r in rows], [r[1:2] for r in rows], 0)


def test_ease_is_refused_in_one_line_with_the_memory_it_needs() -> None:
    with pytest.raises(ConfigError) as err:
        check_memory(20_000, available=2 * 2**30)
    msg = str(err.value)
    assert "\n" not in msg
    assert "EASE over 20000 items" in msg and f"{ease_bytes(20_000) / 2**30:.1f} GiB" in msg
    assert "2.0 GiB is available" in msg and "--models" in msg
    check_memory(1_000, available=2 * 2**30)  # 1000^2 x 8 x copies: a few tens of MB, fits


def test_ease_in_place_fit_matches_the_closed_form() -> None:
    split = random_split(300, 120, 20)
    got = EASE(EASEConfig(l2=50.0)).fit(split).weights
    x = rows_matrix(split.train, split.num_items).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 50.0 * np.eye(split.num_items))
    want = -p / np.diag(p)
    np.fill_diagonal(want, 0.0)
    assert got is not None
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-6)


def test_ease_float32_fit_ranks_as_a_float64_fit_on_popular_items() -> None:
    # Zipf popularity: the Gram's diagonal spans three orders of magnitude, as on real logs
    rng = np.random.default_rng(1)
    items, pop = 400, 1.0 / np.arange(1, 401) ** 1.1
    rows = [np.sort(rng.choice(items, size=30, replace=False, p=pop / pop.sum())) for _ in range(4000)]
    split = Split("random_80_10_10", 0, items, rows, [r[:0] for r in rows], [r[:0] for r in rows], 0)
    got = EASE(EASEConfig(l2=100.0)).fit(split).weights
    x = rows_matrix(rows, items).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 100.0 * np.eye(items))
    want = -p / np.diag(p)
    np.fill_diagonal(want, 0.0)
    assert got is not None
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    hist = x[:1000]
    a, b = hist @ got, hist @ want
    a[hist > 0] = b[hist > 0] = -np.inf
    assert (np.sort(top_k(a, 20), axis=1) == np.sort(top_k(b, 20), axis=1)).all(axis=1).mean() >= 0.99


def test_ease_fit_peak_memory_is_within_the_copies_the_refusal_assumes() -> None:
    split = random_split(2000, 1500, 40)
    tracemalloc.start()
    EASE().fit(split)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    copies = peak / (split.num_items**2 * 4)  # float32 items x items copies
    # the refusal adds one for the weights a search keeps; a float64 general inverse (np.linalg.inv + -p / diag)
    # peaked at 8 of these
    assert copies <= EASE_COPIES - 1, copies


def test_search_tries_the_configs_point_first_and_stops_at_its_budget() -> None:
    points = expand(EASEConfig(l2=500.0), EASEGrid())
    assert points[0] == EASEConfig(l2=500.0) and len(points) == 5
    split = random_split(60, 40, 8)
    cut = run_baseline("ease", split, ["recall@5"], EASEConfig(l2=500.0), EASEGrid(), tuning=Tuning(budget_min=1e-9))
    assert len(cut.grid) == 1 and cut.grid_size == 5 and cut.params == {"l2": 500.0}


def test_a_model_that_states_its_cost_is_searched_cheapest_first_with_its_config_first_among_equals() -> None:
    base = BPRConfig()  # 100 epochs
    points = expand(base, BPRGrid(), search_cost("bpr"))
    costs = [BPR.search_cost(p) for p in points]
    assert costs == sorted(costs) and len(points) == 16
    assert points[0].iterations == 30
    assert next(p for p in points if BPR.search_cost(p) == BPR.search_cost(base)) == base
    # a model without a cost keeps its config first and the grid's order
    assert expand(EASEConfig(l2=500.0), EASEGrid(), search_cost("ease"))[0] == EASEConfig(l2=500.0)
    split = random_split(60, 40, 8)
    cut = run_baseline("bpr", split, ["recall@5"], base, BPRGrid(), tuning=Tuning(budget_min=1e-9))
    assert len(cut.grid) == 1 and cut.grid[0]["iterations"] == 30 and cut.grid_size == 16


def test_search_and_valid_figures_score_a_user_sample_and_the_test_every_user() -> None:
    split = random_split(60, 40, 8)
    r = run_baseline("ease", split, ["recall@5"], None, EASEGrid(l2=(10.0, 100.0)), tuning=Tuning(users=7))
    assert r.tune_users == r.valid_users == 7
    assert r.valid["users"] == 7 and r.test["users"] == 60
    # the chosen point's valid figure is the one the search saw on that sample
    assert r.valid["recall@5"] == pytest.approx(max(g["recall@5"] for g in r.grid))


def _cfg(tmp_path: Path, *args: str) -> cli.BaselinesEvalConfig:
    data = write_ml100k(tmp_path / "ml", users=40, items=25, per_user=8)
    return parse(cli.BaselinesEvalConfig, ["--data.dataset", "atomic", "--data.path", str(data), "--models",
                                           "most_popular", "ease", "--no-tune", "--results-dir",
                                           str(tmp_path / "out"), *args])


def test_protocols_in_parallel_processes_give_the_report_of_one_process(tmp_path: Path) -> None:
    one, _, _ = cli.run(_cfg(tmp_path, "--jobs", "1", "--output", "one"))
    two, md, _ = cli.run(_cfg(tmp_path, "--jobs", "2", "--output", "two"))
    assert one["environment"]["processes"] == 1 and two["environment"]["processes"] == 2
    assert two["complete"] and list(two["protocols"]) == ["random_80_10_10", "leave_one_out"]  # the order asked for
    for proto, entry in one["protocols"].items():
        for name, m in entry["models"].items():
            assert two["protocols"][proto]["models"][name]["test"] == m["test"], (proto, name)
    assert "## leave_one_out" in md and "Incomplete" not in md


def test_a_failing_protocol_process_stops_the_run_with_its_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "--jobs", "2", "--configs.ease.l2", "-1e9")  # X^T X + l2 I not positive definite
    with pytest.raises(ValueError, match="not positive definite"):
        cli.run(cfg)
    (report,) = (tmp_path / "out").glob("*.json")
    assert json.loads(report.read_text())["complete"] is False


def test_jobs_auto_are_bounded_by_cores_protocols_and_eases_memory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path)
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(cli, "available_bytes", lambda: 8 * 2**30)
    assert cli._jobs(cfg, 20_000) == 1  # one EASE fit at 20k items (~4.5 GiB) fits, two do not
    assert cli._jobs(cfg, 5_000) == 2  # both protocols, not the 4 cores
    assert cli._jobs(dataclasses.replace(cfg, models=("most_popular",)), 20_000) == 2
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda _pid: {0})
    assert cli._jobs(cfg, 5_000) == 1
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    with pytest.raises(ConfigError, match=r"2 EASE fits over 20000 items side by side .* \(--jobs 1\)"):
        cli._jobs(dataclasses.replace(cfg, jobs=2), 20_000)


def test_search_keeps_the_best_points_model_instead_of_fitting_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = runner.fit

    def counting(name, split, cfg=None):
        calls.append(cfg.l2)
        return real(name, split, cfg)

    monkeypatch.setattr(runner, "fit", counting)
    run_baseline("ease", random_split(40, 30, 8), ["recall@5"], None, EASEGrid(l2=(10.0, 100.0)))
    assert sorted(calls) == [10.0, 100.0]  # one fit per grid point, none after


def test_report_is_written_after_each_model_and_marked_incomplete_when_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_ml100k(tmp_path / "ml", users=30, items=20, per_user=8)
    real = runner.run_baseline

    def dying(name, *args, **kwargs):
        if name == "ease":
            raise KeyboardInterrupt("killed")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runner, "run_baseline", dying)
    cfg = parse(cli.BaselinesEvalConfig, ["--data.dataset", "atomic", "--data.path", str(data), "--models",
                                          "most_popular", "ease", "--protocols", "leave_one_out", "--no-tune",
                                          "--results-dir", str(tmp_path / "out")])
    with pytest.raises(KeyboardInterrupt):
        cli.run(cfg)
    (report,) = (tmp_path / "out").glob("*.json")
    payload = json.loads(report.read_text())
    assert payload["complete"] is False
    assert list(payload["protocols"]["leave_one_out"]["models"]) == ["most_popular"]
    assert "**Incomplete**" in report.with_suffix(".md").read_text()
    monkeypatch.setattr(runner, "run_baseline", real)
    payload, md, _ = cli.run(dataclasses.replace(cfg))
    assert payload["complete"] is True and "Incomplete" not in md


def test_eval_baselines_refuses_ease_before_any_model_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.data.config import DataConfig
    from models.data.formats import memory
    from models.data.loaders import load_data

    data = write_ml100k(tmp_path / "ml", users=30, items=20, per_user=8)
    loaded = load_data(DataConfig(dataset="atomic", path=data))
    monkeypatch.setattr(cli, "load_data", lambda _cfg: loaded)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)  # 1000 bytes: EASE over 20 items needs 4.7 kB
    monkeypatch.setattr(runner, "run_baseline", lambda *a, **k: pytest.fail("a model ran before the refusal"))
    cfg = parse(cli.BaselinesEvalConfig, ["--data.dataset", "atomic", "--data.path", str(data),
                                          "--results-dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match=r"EASE over 20 items .* needs about 4.7 kB of memory but 1.0 kB is available"):
        cli.run(cfg)
