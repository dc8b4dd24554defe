"""A new user's own data, end to end on tiny models: what is left out is logged with counts, a text
tower refuses ids as text, every exported known user has a history, and reports and caches land in
the working directory, named after the user's data, with the shipped MovieLens results untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from llmrec import cli
from models import tiny
from models.bundle import load_bundle
from models.data.config import DataConfig
from models.data.loaders import load_data
from models.reports import SHIPPED_RESULTS_DIR

torch.set_num_threads(1)
SPARSE_USERS = ("u11", "u12")  # two positives each once --data.min-rating 4 leaves out their 2-star ratings


@pytest.fixture
def user_data(tmp_path: Path) -> tuple[Path, Path]:
    """mine.csv: u1..u10 with 6 five-star items each, u11/u12 with 2 five-star and 4 two-star items;
    items.csv: 13 items with title/year/genres, 3 of which nobody interacted with."""
    lines = ["user,item,rating,timestamp"]
    for u in range(1, 11):
        lines += [f"u{u},{(u + k) % 10 + 1},5,{k}" for k in range(6)]
    for u in SPARSE_USERS:
        lines += [f"{u},{k + 1},{5 if k < 2 else 2},{k}" for k in range(6)]
    data = tmp_path / "mine.csv"
    data.write_text("\n".join(lines) + "\n")
    titles = tiny.tiny_texts(13)
    items = tmp_path / "items.csv"
    items.write_text("item,title,year,genres\n" + "".join(
        f'{j},"{titles[j - 1].split(" ( ")[0]}",199{j % 3 + 5},drama\n' for j in range(1, 14)))
    return data, items


def _flags(data: Path, items: Path | None) -> list[str]:
    return ["--data.dataset", "interactions", "--data.path", str(data), "--data.min-rating", "4",
            *(["--data.items-path", str(items)] if items else [])]


def _shipped() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(SHIPPED_RESULTS_DIR.iterdir())}


def test_left_out_users_and_items_are_logged_with_counts(user_data, capsys):
    data, items = user_data
    loaded = load_data(DataConfig(dataset="interactions", path=data, items_path=items, min_rating=4,
                                  min_user_interactions=5))
    err = capsys.readouterr().err
    assert loaded.num_users == 10 and not set(SPARSE_USERS) & set(loaded.users.ids)
    assert "[warning  ] items in the items file without (kept) interactions: not trained on" in err
    assert "items=3 of=13" in err
    assert "[warning  ] dropped users/items below the minimum interactions" in err
    assert "dropped_users=2" in err and "dropped_interactions=4" in err and "min_user_interactions=5" in err
    load_data(DataConfig(dataset="interactions", path=data))
    err = capsys.readouterr().err
    assert "[warning  ] no item text: each item's text is its id (give an items file with --data.items-path" in err


def test_text_tower_refuses_to_train_on_item_ids(user_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "tcf", *_flags(user_data[0], None)]) == 2  # the default tower: hybrid
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "llmrec train tcf: --model.item-tower hybrid needs item text, but every item's text is its id: give an "
        "items file (--data.items-path; see --help) or train the ID tower (--model.item-tower id)")
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_tcf_on_user_data_writes_to_the_working_directory(user_data, tmp_path, monkeypatch, capsys):
    shipped = _shipped()
    enc = tiny.write_encoder(tmp_path / "enc")
    monkeypatch.chdir(tmp_path)
    argv = tiny.tcf_argv(enc, user_data[0], Path("unused"))[2:]  # without --out; the data flags below win
    assert cli.main(["train", "tcf", *argv, *_flags(*user_data)]) == 0
    checkpoint = tmp_path / "work" / "checkpoints" / "tcf"  # the default --out, under the working directory
    assert (checkpoint / "config.json").is_file()
    bundle = load_bundle(checkpoint)
    assert len(bundle.user_ids) == 10 and not set(SPARSE_USERS) & set(bundle.user_ids)
    assert all(len(h) for h in bundle.user_histories), "a known user exported with an empty history"

    assert cli.main(["eval", "tcf", "--checkpoint", str(checkpoint), "--no-baselines"]) == 0
    md = (tmp_path / "llmrec-results" / "quality_tcf_mine.md").read_text()
    assert md.startswith("# TCF on mine: variants and baselines") and "**Data**: mine, users with fewer than 5" in md
    assert "MovieLens" not in md and "Reference points" not in md
    assert json.loads((tmp_path / "llmrec-results" / "quality_tcf_mine.json").read_text())["dataset"] == "mine"
    assert _shipped() == shipped
    capsys.readouterr()


def test_cllm4rec_exports_sparse_users_with_their_history(user_data, tmp_path, monkeypatch):
    shipped = _shipped()
    lm = tiny.write_causal_lm(tmp_path / "lm")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ck"
    argv = tiny.cllm4rec_argv(lm, user_data[0], out)  # the data flags below win
    assert cli.main(["train", "cllm4rec", *argv, "--train.epochs", "1", *_flags(*user_data)]) == 0
    bundle = load_bundle(out)
    assert set(SPARSE_USERS) <= set(bundle.user_ids) and len(bundle.user_ids) == 12
    assert all(len(h) for h in bundle.user_histories), "a known user exported with an empty history"
    assert sorted(len(bundle.user_histories[bundle.user_ids.index(u)]) for u in SPARSE_USERS) == [2, 2]

    assert cli.main(["eval", "cllm4rec", "--checkpoint", str(out), "--no-baselines"]) == 0
    md = (tmp_path / "llmrec-results" / "quality_cllm4rec_mine.md").read_text()
    assert md.startswith("# CLLM4Rec on mine: variants and baselines") and "MovieLens" not in md
    assert _shipped() == shipped


def test_eval_baselines_on_movielens_leaves_the_shipped_results_alone(tmp_path, monkeypatch, capsys):
    shipped = _shipped()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "baselines", "--no-tune", "--models", "most_popular", "--protocols",
                     "leave_one_out"]) == 0
    report = json.loads((tmp_path / "llmrec-results" / "quality_baselines_ml100k.json").read_text())
    assert report["data"]["name"] == "ml-100k"
    assert (tmp_path / "llmrec-results" / "quality_baselines_ml100k.md").read_text().startswith(
        "# Baselines on MovieLens-100K")
    assert _shipped() == shipped
    assert "wrote llmrec-results/quality_baselines_ml100k.json" in capsys.readouterr().out
