"""`ml-100k`: MovieLens-100K, by default RecBole's installed copy, read in place.

The files are RecBole atomic files, so the interactions go through the `atomic` reader; only the
item text differs: "<title> (<year>), genres: <genres>", the text the shipped results were trained
on, instead of the generic "title, release_year: ..., class: ..." join.
"""

from __future__ import annotations

from pathlib import Path

from common.assets import ml100k_dir
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.formats.atomic import read_atomic, read_interactions
from models.data.formats.shared import require_column, templated

INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
# .item columns the text is made of -> how a message names them
MOVIE_COLUMNS = {"item_id": "item id", "movie_title": "title", "release_year": "year", "class": "genres"}


def _describe(iid: str, row: list[str] | None, names: list[str], col: dict[str, int], template: str | None,
              where: Path) -> tuple[str, str]:
    """(text, title) of one movie; a rated movie missing from the .item file is still named ("item 7")."""
    title = row[col["movie_title"]].strip() if row else f"item {iid}"
    year = row[col["release_year"]].strip() if row else ""
    genres = ", ".join(row[col["class"]].split()) if row else ""
    if template:
        raw = {n: v.strip() for n, v in zip(names, row, strict=True)} if row else {}
        return templated(template, {**raw, "title": title, "year": year, "genres": genres}, where), title
    return (f"{title} ({year}), genres: {genres}" if year else f"{title}, genres: {genres}"), title


def load_ml100k(path: Path | None = None, min_rating: float | None = None,
                template: str | None = None) -> InteractionData:
    """MovieLens-100K; item text = "<title> (<year>), genres: <genres>", or `template` over the fields
    title, year, genres (and the .item file's own columns)."""
    folder = Path(path) if path else ml100k_dir()
    builder = read_interactions("ml-100k", folder / INTER_FILE, min_rating)
    item_path = folder / ITEM_FILE
    names, _types, rows = read_atomic(item_path)
    col = {name: require_column(names, (name,), what, item_path) for name, what in MOVIE_COLUMNS.items()}
    movies = {row[col["item_id"]].strip(): row for _lineno, row in rows}
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    for iid in movies.keys() | set(builder.items):
        text[iid], title[iid] = _describe(iid, movies.get(iid), names, col, template, item_path)
    return builder.build(text, title)


def from_config(cfg: DataConfig) -> InteractionData:
    return load_ml100k(cfg.path, cfg.min_rating, cfg.item_template)
