"""`llmrec data synth` on tiny sizes: the loader reads it back, it is labelled synthetic, a seed gives
the same bytes, and the properties it promises (popularity skew, log-normal lengths, taste clusters
in the interactions and in the item text, time order) are there to measure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from llmrec.cli import main as llmrec_main
from models.data import synth
from models.data.config import DataConfig
from models.data.loaders import load_data

SMALL = {"users": 150, "items": 400, "interactions": 3000, "clusters": 6, "min_history": 5}


def make(folder: Path, **over: object) -> dict:
    return synth.generate(synth.SynthConfig(out=folder, **{**SMALL, **over}))  # type: ignore[arg-type]


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("synth") / "data"
    return folder, make(folder)


def test_the_interactions_loader_reads_it_back_and_it_is_labelled(made: tuple[Path, dict]) -> None:
    folder, label = made
    data = load_data(DataConfig(dataset="interactions", path=folder / synth.INTERACTIONS,
                                items_path=folder / synth.ITEMS))
    assert data.name.startswith("synthetic")
    assert data.num_users == SMALL["users"] and data.num_interactions == label["counts"]["interactions"]
    assert data.num_items == label["counts"]["items_with_interactions"] <= SMALL["items"]
    assert abs(label["counts"]["interactions"] - SMALL["interactions"]) <= SMALL["interactions"] * 0.01
    assert data.timestamp is not None and all(", genres: " in t for t in data.item_text)
    saved = json.loads((folder / synth.LABEL).read_text())
    assert saved["synthetic"] is True and saved["config"]["seed"] == 0 and saved["config"]["users"] == SMALL["users"]
    assert "SYNTHETIC" in (folder / "README.md").read_text()


def test_a_seed_gives_the_same_files_and_another_seed_other_ones(made: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = made
    make(tmp_path / "again")
    make(tmp_path / "other", seed=1)
    for name in (synth.INTERACTIONS, synth.ITEMS, synth.TRUTH_USERS, synth.TRUTH_ITEMS):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name
    assert (tmp_path / "other" / synth.INTERACTIONS).read_bytes() != (folder / synth.INTERACTIONS).read_bytes()


def test_popularity_is_skewed_lengths_are_long_tailed_and_time_runs_forward(made: tuple[Path, dict]) -> None:
    folder, _ = made
    rows = read(folder / synth.INTERACTIONS)
    users = np.array([int(r["user_id"]) for r in rows])
    items = np.array([int(r["item_id"]) for r in rows])
    times = np.array([int(r["timestamp"]) for r in rows])
    counts = np.sort(np.bincount(items))[::-1]
    top = SMALL["items"] // 10
    assert counts[:top].sum() / counts.sum() > 0.2  # uniform popularity would give the top 10% of items 10%
    lengths = np.bincount(users)[1:]
    assert lengths.min() >= SMALL["min_history"] and lengths.mean() > np.median(lengths)  # right-skewed
    assert len(set(zip(users.tolist(), items.tolist(), strict=True))) == len(rows)  # no item twice per user
    same_user = users[1:] == users[:-1]
    assert (np.diff(times)[same_user] >= 0).all()  # each user's lines in time order


def test_taste_clusters_show_in_the_interactions_and_in_the_item_text(made: tuple[Path, dict]) -> None:
    folder, label = made
    truth_users = {int(r["user_id"]): (int(r["primary_cluster"]), int(r["secondary_cluster"]))
                   for r in read(folder / synth.TRUTH_USERS)}
    cluster = {int(r["item_id"]): int(r["cluster"]) for r in read(folder / synth.TRUTH_ITEMS)}
    rows = read(folder / synth.INTERACTIONS)
    inside = np.mean([cluster[int(r["item_id"])] in truth_users[int(r["user_id"])] for r in rows])
    assert inside > 0.5 > 2 / SMALL["clusters"] + 0.1  # far above what random picks would give
    assert abs(inside - label["taste"]["share_in_user_clusters"]) < 1e-3
    words = {int(r["item_id"]): set(r["title"].lower().split()) - {"of", "the", "and", "in", "beyond", "under"}
             for r in read(folder / synth.ITEMS)}
    ids = sorted(words)
    same, other = [], []
    for a in ids[:60]:
        for b in ids[:60]:
            if a < b:
                overlap = len(words[a] & words[b]) / len(words[a] | words[b])
                (same if cluster[a] == cluster[b] else other).append(overlap)
    assert np.mean(same) > 3 * np.mean(other)


def test_small_chunks_give_a_complete_file(tmp_path: Path) -> None:
    label = make(tmp_path / "chunks", chunk_users=7)
    rows = read(tmp_path / "chunks" / synth.INTERACTIONS)
    assert len(rows) == label["counts"]["interactions"]
    assert {int(r["user_id"]) for r in rows} == set(range(1, SMALL["users"] + 1))


def test_impossible_sizes_and_an_existing_output_are_one_line_errors(made: tuple[Path, dict], capsys) -> None:
    folder, _ = made
    assert llmrec_main(["data", "synth", "--out", str(folder / "x"), "--users", "10", "--interactions", "5"]) == 2
    assert "--interactions 5 is below" in capsys.readouterr().err
    same = [arg for k, v in SMALL.items() for arg in (f"--{k.replace('_', '-')}", str(v))]
    assert llmrec_main(["data", "synth", "--out", str(folder), *same]) == 2
    assert "--overwrite" in capsys.readouterr().err
