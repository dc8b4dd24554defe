"""Every loader on small files written here, including malformed input (file:line in the error)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.data.config import DataConfig
from models.data.filters import filter_min_interactions
from models.data.loaders import load_data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def pairs(data) -> list[tuple[str, str]]:
    return [(data.users.ids[u], data.items.ids[i]) for u, i in zip(data.user, data.item, strict=True)]


# ---------------------------------------------------------------- ml-100k (recbole's installed copy)


def test_ml100k_default_and_min_rating():
    full = load_data(DataConfig())
    assert full.summary() == {"name": "ml-100k", "users": 943, "items": 1682, "interactions": 100000}
    assert full.item_text[0].startswith("Toy Story (1995), genres: Animation")
    liked = load_data(DataConfig(min_rating=4))
    assert liked.num_interactions == 55375


# ---------------------------------------------------------------- interactions (CSV / TSV / Parquet)


def test_interactions_csv_with_aliases_rating_and_item_text(tmp_path):
    inter = write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n10,2,5,100\n10,1,2,50\n7,2,4,30\n7,3,5,40\n",
    )
    items = write(
        tmp_path / "items.csv", "movieId,title,genres\n1,Alpha,Drama\n2,Beta,Comedy\n99,Never seen,X\n"
    )
    data = load_data(DataConfig(dataset="interactions", path=inter, items_path=items, min_rating=4))
    assert data.users.ids == ["7", "10"]  # numeric ids sorted numerically
    assert data.items.ids == ["2", "3"]  # item 1 filtered by rating; 99 never interacted: dropped
    assert sorted(pairs(data)) == [("10", "2"), ("7", "2"), ("7", "3")]
    assert data.item_text == ["Beta, genres: Comedy", "3"]  # missing text falls back to the id
    assert data.item_title == ["Beta", "3"]
    assert data.timestamp is not None and sorted(data.timestamp.tolist()) == [30.0, 40.0, 100.0]


def test_interactions_tsv_without_time_keeps_file_order(tmp_path):
    inter = write(tmp_path / "log.tsv", "user_id\titem_id\na\tx\na\tz\nb\ty\n")
    items = write(tmp_path / "items.tsv", "item_id\ttext\ttitle\nx\tX text\tX\ny\tY text\tY\nz\tZ text\tZ\n")
    data = load_data(DataConfig(dataset="interactions", path=inter, items_path=items))
    assert data.timestamp is None
    assert data.item_text == ["X text", "Y text", "Z text"]  # a `text` column wins over joining
    assert [data.items.ids[i] for i in data.sequences()[0]] == ["x", "z"]


def test_interactions_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": ["a", "b", "b"], "item": ["x", "x", "y"], "ts": [3.0, 1.0, 2.0]}).to_parquet(path)
    data = load_data(DataConfig(dataset="interactions", path=path))
    assert data.summary()["interactions"] == 3
    assert np.allclose(sorted(data.timestamp), [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("user,item\na,x\nb\n", r"log\.csv:3: expected 2 fields"),
        ("user,item,rating\na,x,five\n", r"log\.csv:2: bad rating 'five'; expected a number"),
        ("user,item,timestamp\na,x,yesterday\n", r"log\.csv:2: bad timestamp"),
        ("user,item\na,\n", r"log\.csv:2: empty user or item id"),
        ("uid,item\na,x\n", r"log\.csv:1: no user column .*expected one of: user, user_id"),
    ],
)
def test_interactions_malformed(tmp_path, text, match):
    path = write(tmp_path / "log.csv", text)
    with pytest.raises(ValueError, match=match):
        load_data(DataConfig(dataset="interactions", path=path))


def test_interactions_bad_extension_and_min_rating_without_ratings(tmp_path):
    with pytest.raises(ValueError, match=r"accepted: \.csv, \.tsv"):
        load_data(DataConfig(dataset="interactions", path=write(tmp_path / "log.xlsx", "user,item\n")))
    path = write(tmp_path / "log.csv", "user,item\na,x\n")
    with pytest.raises(ValueError, match="no rating column"):
        load_data(DataConfig(dataset="interactions", path=path, min_rating=4))


# ---------------------------------------------------------------- RecBole atomic


def test_atomic_folder_and_file(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    write(
        folder / "shop.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t2\n1\t11\t1\t1\n2\t10\t4\t3\n",
    )
    write(
        folder / "shop.item",
        "item_id:token\ttitle:token_seq\tbrand:token\tprice:float\n10\tRed Mug\tAcme\t3.5\n",
    )
    data = load_data(DataConfig(dataset="atomic", path=folder, min_rating=4))
    assert data.name == "shop" and data.items.ids == ["10"] and data.num_interactions == 2
    assert data.item_text == ["Red Mug, brand: Acme"]  # float fields are not text
    assert data.item_title == ["Red Mug"]
    same = load_data(DataConfig(dataset="atomic", path=folder / "shop.inter"))
    assert same.num_interactions == 3


def test_atomic_malformed(tmp_path):
    path = write(tmp_path / "x.inter", "user_id:token\titem_id:token\n1\t2\n3\n")
    with pytest.raises(ValueError, match=r"x\.inter:3: expected 2 tab-separated fields, got 1"):
        load_data(DataConfig(dataset="atomic", path=path))
    path = write(tmp_path / "y.inter", "user_id\titem_id\n1\t2\n")
    with pytest.raises(ValueError, match=r"y\.inter:1: header field 'user_id' is not name:type"):
        load_data(DataConfig(dataset="atomic", path=path))


# ---------------------------------------------------------------- TCF layout


def test_tcf_time_order_and_text(tmp_path):
    beh = write(tmp_path / "behaviors.tsv", "u1\tb a c\nu2\ta\nu1\td\n")
    items = write(tmp_path / "items.tsv", "a\tApple  pie\nb\tBanana\tbread\nc\tCherry\nd\tDate\nzz\tunused\n")
    data = load_data(DataConfig(dataset="tcf", path=beh, items_path=items))
    seq = [data.items.ids[i] for i in data.sequences()[data.users.index("u1")]]
    assert seq == ["b", "a", "c", "d"]  # line order is time order; a second line continues it
    assert data.items.ids == ["a", "b", "c", "d"]  # "zz" never interacted: dropped
    assert data.item_text[:2] == ["Apple pie", "Banana bread"]


def test_tcf_malformed(tmp_path):
    beh = write(tmp_path / "behaviors.tsv", "u1\ta b\nu2 a b\n")
    with pytest.raises(ValueError, match=r"behaviors\.tsv:2: expected 'user<TAB>item item \.\.\.'"):
        load_data(DataConfig(dataset="tcf", path=beh))
    beh = write(tmp_path / "behaviors.tsv", "u1\ta\n")
    items = write(tmp_path / "items.tsv", "a\tApple\nb-only-id\n")
    with pytest.raises(ValueError, match=r"items\.tsv:2: expected 'item<TAB>text'"):
        load_data(DataConfig(dataset="tcf", path=beh, items_path=items))


# ---------------------------------------------------------------- Amazon reviews


def _reviews() -> list[dict]:
    return [
        {
            "reviewerID": "R1",
            "asin": "B2",
            "reviewText": "great",
            "summary": "Five",
            "overall": 5.0,
            "unixReviewTime": 20,
        },
        {"reviewerID": "R1", "asin": "B1", "reviewText": "meh", "overall": 2.0, "unixReviewTime": 10},
        {"reviewerID": "R2", "asin": "B2", "reviewText": "good", "overall": 4.0, "unixReviewTime": 5},
    ]


def test_amazon_gzip_reviews_and_meta(tmp_path):
    path = tmp_path / "reviews_Beauty_5.json.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in _reviews())
    meta = write(
        tmp_path / "meta.json",
        "{'asin': 'B2', 'title': 'Lip balm', 'categories': [['Beauty', 'Lips']], 'description': 'Soft.'}\n"
        + json.dumps({"asin": "B1", "title": "Soap"})
        + "\n",
    )
    data = load_data(DataConfig(dataset="amazon", path=path, items_path=meta))
    assert data.name == "reviews_Beauty_5" and data.items.ids == ["B1", "B2"]
    assert data.item_text[1] == "Lip balm, categories: Beauty, Lips, description: Soft."
    assert data.item_title == ["Soap", "Lip balm"]
    assert data.review is not None
    by_pair = dict(zip(pairs(data), data.review, strict=True))
    assert by_pair[("R1", "B2")] == "Five. great" and by_pair[("R2", "B2")] == "good"
    liked = load_data(DataConfig(dataset="amazon", path=path, min_rating=4))
    assert liked.num_interactions == 2 and liked.item_text == ["B2"]  # no meta: the asin is the text


def test_amazon_malformed(tmp_path):
    path = write(tmp_path / "r.json", json.dumps(_reviews()[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"r\.json:2: not valid JSON"):
        load_data(DataConfig(dataset="amazon", path=path))
    path = write(tmp_path / "r.json", json.dumps({"asin": "B1"}) + "\n")
    with pytest.raises(ValueError, match=r"r\.json:1: missing 'reviewerID' or 'asin'"):
        load_data(DataConfig(dataset="amazon", path=path))


# ---------------------------------------------------------------- filter


def test_min_interactions_filter_is_iterative(tmp_path):
    # d has 1 item -> dropped; then item z (c and d) falls to 1 user -> dropped; that leaves
    # c with 1 item -> dropped too. Only the {a, b} x {x, y} core survives (b's repeat stays).
    rows = "user,item\na,x\na,y\nb,x\nb,y\nc,x\nc,z\nd,z\nb,x\n"
    path = write(tmp_path / "log.csv", rows)
    data = load_data(
        DataConfig(dataset="interactions", path=path, min_user_interactions=2, min_item_interactions=2)
    )
    assert data.users.ids == ["a", "b"] and data.items.ids == ["x", "y"]
    assert sorted(pairs(data)) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "x"), ("b", "y")]
    again = filter_min_interactions(data, 2, 2)
    assert again.num_interactions == data.num_interactions
    with pytest.raises(ValueError, match="no interactions left"):
        filter_min_interactions(data, 3, 0)


def test_item_text_from_a_template_over_the_items_columns(tmp_path):
    from llmrec.errors import ConfigError
    from models.tiny import write_ml100k

    inter = tmp_path / "i.csv"
    inter.write_text("user,item\nu1,a\nu1,b\nu2,a\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title,year,genres,price\na,Alpha,1999,Drama,3\nb,Beta,,Comedy,4\nc,Gamma,2001,Horror,5\n")
    cfg = DataConfig(dataset="interactions", path=inter, items_path=items,
                     item_template="{title} ({year}), genres: {genres}")
    data = load_data(cfg)
    assert data.item_text == ["Alpha (1999), genres: Drama", "Beta (), genres: Comedy"]
    assert data.catalogue_only == {"c": ("Gamma (2001), genres: Horror", "Gamma")}  # no interactions: catalogue only
    ml = load_data(DataConfig(path=write_ml100k(tmp_path / "ml"), item_template="{title} | {genres} | {year}"))
    assert all(t.count(" | ") == 2 for t in ml.item_text)
    with pytest.raises(ConfigError, match=r"field\(s\) 'plot' not in the items data; fields: .*genres"):
        load_data(DataConfig(dataset="interactions", path=inter, items_path=items, item_template="{plot}"))
