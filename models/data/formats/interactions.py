"""`interactions`: the user's own table of user, item[, timestamp][, rating] (any table type that
`tables` reads), with item text from an items table of the same kinds."""

from __future__ import annotations

from pathlib import Path

from common.errors import DataError
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.formats.shared import (
    ITEM_COLUMNS,
    RATING_COLUMNS,
    TEXT_COLUMNS,
    TIME_COLUMNS,
    TITLE_COLUMNS,
    USER_COLUMNS,
    Builder,
    find_column,
    no_rating_error,
    parse_float,
    require_column,
    required_path,
    templated,
)
from models.data.formats.tables import read_table


def load_item_text(path: Path, template: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Item id -> text, item id -> title, from a CSV/TSV/Parquet file with a header.

    Text: `template` over the row's columns when given (e.g. "{title} ({year}), genres: {genres}");
    else the `text` column when there is one; else every non-id column joined, the title first and the
    others as "column: value", so an LM sees what each field is.
    """
    names, rows = read_table(path)
    iid = require_column(names, ITEM_COLUMNS, "item id", path)
    text_col = find_column(names, TEXT_COLUMNS)
    title_col = find_column(names, TITLE_COLUMNS)
    others = [j for j in range(len(names)) if j not in (iid, title_col)]
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    for lineno, row in rows:
        key = row[iid].strip()
        if not key:
            raise DataError(f"{path}:{lineno}: empty item id; expected an id in column {names[iid]!r}")
        if title_col is not None:
            title[key] = row[title_col].strip()
        if template:
            text[key] = templated(template, {n.strip(): v.strip() for n, v in zip(names, row, strict=True)}, path)
        elif text_col is not None:
            text[key] = row[text_col].strip()
        else:
            parts = [title[key]] if title.get(key) else []
            parts += [f"{names[j].strip()}: {row[j].strip()}" for j in others if row[j].strip()]
            text[key] = ", ".join(parts)
    return text, title


def load_interactions(
    path: Path, items_path: Path | None = None, min_rating: float | None = None, template: str | None = None
) -> InteractionData:
    """CSV / TSV (optionally .gz) / Parquet with user, item[, timestamp][, rating] columns."""
    path = Path(path)
    names, rows = read_table(path)
    ucol = require_column(names, USER_COLUMNS, "user", path)
    icol = require_column(names, ITEM_COLUMNS, "item", path)
    tcol = find_column(names, TIME_COLUMNS)
    rcol = find_column(names, RATING_COLUMNS)
    if min_rating is not None and rcol is None:
        raise no_rating_error(path, RATING_COLUMNS)
    builder = Builder(path.name.split(".")[0], path)
    for lineno, row in rows:
        user, item = row[ucol].strip(), row[icol].strip()
        if not user or not item:
            raise DataError(
                f"{path}:{lineno}: empty user or item id; expected values in columns {names[ucol]!r}, {names[icol]!r}"
            )
        rating = parse_float(row[rcol], path, lineno, "rating") if rcol is not None else None
        if not builder.keep(rating, min_rating):
            continue
        time = parse_float(row[tcol], path, lineno, "timestamp") if tcol is not None else None
        builder.add(user, item, time)
    text, title = load_item_text(Path(items_path), template) if items_path else ({}, {})
    return builder.build(text, title)


def from_config(cfg: DataConfig) -> InteractionData:
    return load_interactions(required_path(cfg), cfg.items_path, cfg.min_rating, cfg.item_template)
