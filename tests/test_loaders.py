"""Every loader on small files written here, including malformed input (file:line in the error)."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
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
    from common.errors import ConfigError
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


# ---------------------------------------------------------------- the registry and its dispatch


def _sample_ml100k(tmp_path: Path) -> DataConfig:
    from models.tiny import write_ml100k

    return DataConfig(dataset="ml-100k", path=write_ml100k(tmp_path / "ml", users=4, items=6, per_user=2))


def _sample_interactions(tmp_path: Path) -> DataConfig:
    return DataConfig(dataset="interactions", path=write(tmp_path / "log.csv", "user,item\na,x\nb,y\n"))


def _sample_atomic(tmp_path: Path) -> DataConfig:
    return DataConfig(dataset="atomic", path=write(tmp_path / "shop.inter", "user_id:token\titem_id:token\na\tx\n"))


def _sample_tcf(tmp_path: Path) -> DataConfig:
    return DataConfig(dataset="tcf", path=write(tmp_path / "behaviors.tsv", "a\tx y\n"))


def _sample_amazon(tmp_path: Path) -> DataConfig:
    return DataConfig(dataset="amazon", path=write(tmp_path / "r.json", json.dumps({"reviewerID": "a", "asin": "x"})))


# One small data set per registered format: a format added to the registry without one here fails below.
SAMPLES = {"ml-100k": _sample_ml100k, "interactions": _sample_interactions, "atomic": _sample_atomic,
           "tcf": _sample_tcf, "amazon": _sample_amazon}


def test_registry_lists_every_format_the_config_offers():
    from typing import get_args

    from models.data.config import DatasetFormat
    from models.data.loaders import FORMATS

    assert list(FORMATS) == list(get_args(DatasetFormat)) == list(SAMPLES)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_dispatch_reaches_each_format(tmp_path, monkeypatch, name):
    from models.data import loaders

    cfg = SAMPLES[name](tmp_path)
    entry = loaders.FORMATS[name]
    reached: list[DataConfig] = []

    def spy(c: DataConfig):
        reached.append(c)
        return entry.load(c)

    monkeypatch.setitem(loaders.FORMATS, name, loaders.DataFormat(spy, entry.item_template))
    data = load_data(cfg)
    assert reached == [cfg] and data.num_interactions > 0


@pytest.mark.parametrize("path", [None, "log.csv"])
def test_unknown_format_lists_the_accepted_ones(tmp_path, path):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown dataset format 'movielens'; accepted: ml-100k, interactions, "
                                          r"atomic, tcf, amazon$"):
        load_data(DataConfig(dataset="movielens", path=path and write(tmp_path / path, "user,item\na,x\n")))


def test_item_template_is_refused_by_the_formats_that_give_text_as_it_is(tmp_path):
    from common.errors import ConfigError

    cfg = _sample_tcf(tmp_path)
    cfg.item_template = "{title}"
    with pytest.raises(ConfigError, match=r"^--data.item-template works with the ml-100k, interactions and atomic "
                                          r"formats, not 'tcf' \(its item text is given as it is\)$"):
        load_data(cfg)


def test_a_format_without_default_data_needs_a_path():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^dataset 'interactions' needs a path \(--data.path\)$"):
        load_data(DataConfig(dataset="interactions"))


# ---------------------------------------------------------------- ml-100k files that cannot be read


def _truncate(path: Path, cut: int) -> None:
    """The file as a copy interrupted `cut` bytes before its end would leave it."""
    path.write_bytes(path.read_bytes()[:-cut])


def _cut_last_field(path: Path) -> None:
    """Interrupted right after the last tab: the last row's last field is empty."""
    _truncate(path, len(path.read_text().splitlines()[-1].split("\t")[-1]) + 1)


def _cut_mid_row(path: Path) -> None:
    """Interrupted one byte into the last row."""
    _truncate(path, len(path.read_text().splitlines()[-1]))


def _last_line(path: Path) -> int:
    return len(path.read_text().splitlines())


def _replace(old: bytes, new: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(path.read_bytes().replace(old, new, 1))


# damage -> (file, how it is damaged, the message after the file's path; {last}: its last line's number)
ML100K_DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated after a tab": ("ml-100k.inter", _cut_last_field,
                              r":{last}: bad timestamp ''; expected a number or an ISO date/time$"),
    "truncated mid-row": ("ml-100k.inter", _cut_mid_row, r":{last}: expected 4 tab-separated fields, got 1$"),
    "bad rating": ("ml-100k.inter", _replace(b"\t4\t1000\n", b"\tfour\t1000\n"), r":2: bad rating 'four'; expected a number$"),
    "not UTF-8": ("ml-100k.item", _replace(b"\t1995\t", b"\t\xe9\t"),
                  r":\d+: not UTF-8 text \(.*\); expected a UTF-8 file$"),
    "no title column": ("ml-100k.item", _replace(b"movie_title:", b"name:"),
                        r":1: no title column in header \[.*\]; expected one of: movie_title$"),
    "no rating column": ("ml-100k.inter", _replace(b"rating:float", b"stars:float"),
                         r": min_rating is set but the file has no rating column; expected one of: rating, "),
    "header only": ("ml-100k.inter", lambda path: path.write_text(path.read_text().splitlines()[0] + "\n"),
                    r": no interactions \(an empty file or a header line only\); expected one interaction per line$"),
}


@pytest.mark.parametrize("damage", list(ML100K_DAMAGE))
def test_ml100k_damaged_file_is_one_data_error(tmp_path, damage):
    from common.errors import DataError
    from models.data.loaders import load_ml100k
    from models.tiny import write_ml100k

    name, spoil, pattern = ML100K_DAMAGE[damage]
    folder = write_ml100k(tmp_path / "ml")
    spoil(folder / name)
    with pytest.raises(DataError) as caught:
        load_ml100k(folder, min_rating=4 if damage == "no rating column" else None)
    message = str(caught.value)
    assert "\n" not in message, message
    if "{last}" in pattern:
        pattern = pattern.format(last=_last_line(folder / name))
    assert re.match(re.escape(str(folder / name)) + pattern, message), message


def test_ml100k_missing_files_are_one_line(tmp_path):
    from common.errors import DataFileNotFound
    from models.tiny import write_ml100k

    with pytest.raises(DataFileNotFound, match=r"^data file not found: .*nowhere/ml-100k\.inter$"):
        load_data(DataConfig(path=tmp_path / "nowhere"))
    folder = write_ml100k(tmp_path / "ml")
    (folder / "ml-100k.item").unlink()
    with pytest.raises(DataFileNotFound, match=r"^data file not found: .*ml/ml-100k\.item$"):
        load_data(DataConfig(path=folder))


def test_ml100k_truncated_file_is_one_line_from_the_command(tmp_path, monkeypatch, capsys):
    from llmrec import cli
    from models.tiny import write_ml100k

    folder = write_ml100k(tmp_path / "ml")
    _cut_last_field(folder / "ml-100k.inter")
    monkeypatch.chdir(tmp_path)  # nothing a failed run might write lands in the repository
    assert cli.main(["eval", "baselines", "--data.path", str(folder)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llmrec ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0] == (f"llmrec eval baselines: {folder / 'ml-100k.inter'}:{_last_line(folder / 'ml-100k.inter')}: "
                        "bad timestamp ''; expected a number or an ISO date/time"), err
