"""`atomic`: RecBole atomic files, `<name>.inter` with an optional `<name>.item` beside it.

The interactions reader is also MovieLens-100K's (`ml100k`), since RecBole ships it in this format.
"""

from __future__ import annotations

import csv
from pathlib import Path

from common.errors import DataError, DataFileNotFound
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.formats.shared import (
    ITEM_COLUMNS,
    RATING_COLUMNS,
    TIME_COLUMNS,
    TITLE_COLUMNS,
    USER_COLUMNS,
    Builder,
    find_column,
    lines,
    no_rating_error,
    parse_float,
    require_column,
    required_path,
    templated,
)

AtomicRows = list[tuple[int, list[str]]]


def read_atomic(path: Path) -> tuple[list[str], list[str], AtomicRows]:
    """Names, types and (line number, row) of a tab-separated file with a `name:type` header.

    Read through `shared.lines`, so a line that is not UTF-8 is a DataError naming it, like in
    every other format."""
    reader = csv.reader(lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}:1: empty file; expected a header of name:type fields")
    for h in header:
        if ":" not in h:
            raise DataError(f"{path}:1: header field {h!r} is not name:type (e.g. user_id:token)")
    names = [h.split(":", 1)[0] for h in header]
    types = [h.split(":", 1)[1] for h in header]
    rows = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(names):
            raise DataError(f"{path}:{reader.line_num}: expected {len(names)} tab-separated fields, got {len(row)}")
        rows.append((reader.line_num, row))
    return names, types, rows


def read_interactions(name: str, path: Path, min_rating: float | None) -> Builder:
    """The interactions of a `.inter` file, collected but not yet indexed: the caller adds item text."""
    names, _types, rows = read_atomic(path)
    ucol = require_column(names, ("user_id", *USER_COLUMNS), "user", path)
    icol = require_column(names, ("item_id", *ITEM_COLUMNS), "item", path)
    tcol = find_column(names, TIME_COLUMNS)
    rcol = find_column(names, RATING_COLUMNS)
    if min_rating is not None and rcol is None:
        raise no_rating_error(path, RATING_COLUMNS)
    builder = Builder(name, path)
    for lineno, row in rows:
        rating = parse_float(row[rcol], path, lineno, "rating") if rcol is not None else None
        if not builder.keep(rating, min_rating):
            continue
        user, item = row[ucol].strip(), row[icol].strip()
        if not user or not item:
            raise DataError(f"{path}:{lineno}: empty user or item id; expected both")
        time = parse_float(row[tcol], path, lineno, "timestamp") if tcol is not None else None
        builder.add(user, item, time)
    return builder


def _atomic_paths(path: Path) -> tuple[str, Path, Path]:
    if path.is_file() and path.suffix == ".inter":
        return path.stem, path, path.with_suffix(".item")
    if path.is_dir():
        named = path / f"{path.name}.inter"
        found = [named] if named.is_file() else sorted(path.glob("*.inter"))
        if len(found) == 1:
            return found[0].stem, found[0], found[0].with_suffix(".item")
        if len(found) > 1:
            raise DataError(
                f"{path}: several .inter files ({[p.name for p in found]}); pass the one to load"
            )
    raise DataFileNotFound(
        f"{path}: expected a folder holding <name>.inter (RecBole atomic files) or a .inter file"
    )


def _item_text(path: Path, template: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Item id -> text, item id -> title from a `.item` file; only token/token_seq fields become text,
    numeric ones (a price, a count) are left out."""
    names, types, rows = read_atomic(path)
    iid = require_column(names, ("item_id", *ITEM_COLUMNS), "item", path)
    fields = [j for j, t in enumerate(types) if j != iid and t in ("token", "token_seq")]
    title_col = find_column(names, TITLE_COLUMNS)
    if title_col is None:
        title_col = next((j for j in fields if types[j] == "token_seq"), None)
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    for _lineno, row in rows:
        key = row[iid].strip()
        parts = []
        if title_col is not None and row[title_col].strip():
            title[key] = row[title_col].strip()
            parts.append(title[key])
        for j in fields:
            if j != title_col and row[j].strip():
                parts.append(f"{names[j]}: {' '.join(row[j].split())}")
        text[key] = (templated(template, {n: v.strip() for n, v in zip(names, row, strict=True)}, path)
                     if template else ", ".join(parts))
    return text, title


def load_atomic(path: Path, min_rating: float | None = None, template: str | None = None) -> InteractionData:
    """RecBole atomic files. Item text joins the `.item` file's token_seq/token fields.

    The field that looks like a title (named *title* or *name*, else the first token_seq
    field) becomes the display title and leads the text; other fields follow as "field: value".
    """
    name, inter_path, item_path = _atomic_paths(Path(path))
    builder = read_interactions(name, inter_path, min_rating)
    text, title = _item_text(item_path, template) if item_path.is_file() else ({}, {})
    return builder.build(text, title)


def from_config(cfg: DataConfig) -> InteractionData:
    return load_atomic(required_path(cfg), cfg.min_rating, cfg.item_template)
