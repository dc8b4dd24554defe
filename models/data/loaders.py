"""Loaders from files to InteractionData, one per supported format, chosen by `DataConfig.dataset`.

Conventions shared by every loader (so a model trained on one format behaves like on another):
- Ids are strings exactly as the file spells them (whitespace stripped); users and items are
  indexed in natural sorted order (numerically when every id is an integer), so the same file
  always gives the same indices whatever the line order.
- Only items that somebody interacted with are kept: an item that appears in an item-text file
  but never in the interactions has no collaborative signal, no ID embedding could be trained
  for it, and keeping it would put untrainable rows into every ranking. (A text-only item can
  still be served later by TCF's item tower; that goes through the exporter, not the loader.)
- An interacted item missing from the item-text file gets its id as text, and the loader logs
  how many did.
- Malformed input raises DataError("<file>:<line>: <what was wrong>; expected <what>").
- `min_rating` keeps interactions with rating >= it; asking for it on a file without ratings
  is an error rather than a silent no-op.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from llmrec import logs
from llmrec.assets import ml100k_dir
from llmrec.errors import ConfigError, DataError, DataFileNotFound
from models.data.config import DataConfig
from models.data.dataset import IdMap, InteractionData
from models.data.filters import filter_min_interactions

log = logs.get(__name__)

USER_COLUMNS = ("user", "user_id", "userid", "reviewerid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movieid", "movie_id", "asin")
TIME_COLUMNS = ("timestamp", "time", "ts", "unixreviewtime")
RATING_COLUMNS = ("rating", "overall", "score")
TEXT_COLUMNS = ("text",)
TITLE_COLUMNS = ("title", "movie_title", "name")


# --------------------------------------------------------------------------- shared helpers


def _natural_sorted(ids: set[str]) -> list[str]:
    if ids and all(s.lstrip("-").isdigit() for s in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def _find_column(names: list[str], accepted: tuple[str, ...]) -> int | None:
    lowered = [n.strip().lower() for n in names]
    for want in accepted:
        if want in lowered:
            return lowered.index(want)
    return None


def _require_column(names: list[str], accepted: tuple[str, ...], what: str, path: Path) -> int:
    idx = _find_column(names, accepted)
    if idx is None:
        raise DataError(
            f"{path}:1: no {what} column in header {names}; expected one of: {', '.join(accepted)}"
        )
    return idx


def _parse_float(value: str, path: Path, lineno: int, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    if what == "timestamp":
        try:
            return datetime.fromisoformat(value.strip()).timestamp()
        except ValueError:
            pass
    accepted = "a number or an ISO date/time" if what == "timestamp" else "a number"
    raise DataError(f"{path}:{lineno}: bad {what} {value!r}; expected {accepted}") from None


# Extension -> field separator of the text tables (each may also end in .gz).
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
TABLE_TYPES = ".csv, .tsv, .tab, .txt (each optionally .gz), .parquet"


def _delimiter(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    found = next((SEPARATORS[s] for s in suffixes if s in SEPARATORS), None)
    if found is not None:
        return found
    hint = "; review JSON lines load with --data.dataset amazon" if {".json", ".jsonl"} & set(suffixes) else ""
    raise DataError(
        f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'!r}; accepted: {TABLE_TYPES}{hint}"
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataFileNotFound(f"data file not found: {path}")
    if not path.is_file():
        raise DataFileNotFound(f"{path} is a folder; expected a data file")


def _lines(path: Path) -> Iterator[str]:
    """The lines of a text file, plain or gzipped, decoded one at a time so that a line that is not
    UTF-8 is reported with its number (a text stream decodes in blocks and cannot say which line);
    a leading byte-order mark, which spreadsheet exports write, is dropped."""
    _check_file(path)
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason}); expected a UTF-8 file") from None


def _read_parquet(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_file(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = list(table.column_names)
    cols = [table.column(n).to_pylist() for n in names]

    def parquet_rows() -> Iterator[tuple[int, list[str]]]:
        for i, row in enumerate(zip(*cols, strict=True)):
            yield i + 2, ["" if v is None else str(v) for v in row]

    return names, parquet_rows()


def _check_separator(path: Path, names: list[str], delimiter: str) -> None:
    """A one-column header holding another separator means the file type (extension) is wrong:
    say so, instead of a missing-column error about a header like 'user;item;rating'."""
    other = next((d for d in (",", "\t", ";", "|") if d != delimiter and len(names) == 1 and d in names[0]), None)
    if other is None:
        return
    kind = "comma-separated (.csv)" if delimiter == "," else "tab-separated (.tsv/.tab/.txt)"
    raise DataError(
        f"{path}:1: header {names[0]!r} looks separated by {other!r}, but the extension says {kind}; "
        f"expected {delimiter!r} between fields (save tab-separated files as .tsv, comma-separated ones as .csv)"
    )


def _read_table(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header + (line number, row) for a CSV/TSV (optionally gzipped) or Parquet file.

    Rows of the wrong width raise with the file and line; Parquet rows are numbered from 2 as
    if the file had a header line, so messages read the same for every format.
    """
    if ".parquet" in [s.lower() for s in path.suffixes]:
        return _read_parquet(path)
    delimiter = _delimiter(path)
    reader = csv.reader(_lines(path), delimiter=delimiter)
    names = next(reader, None)
    if names is None:
        raise DataError(f"{path}:1: empty file; expected a header line naming the columns")
    _check_separator(path, names, delimiter)

    def rows() -> Iterator[tuple[int, list[str]]]:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(names):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(names)} fields separated by "
                    f"{delimiter!r} (header {names}), got {len(row)}"
                )
            yield reader.line_num, row

    return names, rows()


@dataclass
class _Builder:
    """Collects interactions in file order, then indexes them the same way for every format."""

    name: str
    source: Path  # the interactions file, for messages
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    reviews: list[str] = field(default_factory=list)
    has_time: bool = True
    below_min_rating: int = 0

    def keep(self, rating: float | None, min_rating: float | None) -> bool:
        """Whether an interaction with `rating` passes `min_rating`; counts the ones that do not."""
        kept = min_rating is None or (rating is not None and rating >= min_rating)
        self.below_min_rating += not kept
        return kept

    def add(self, user: str, item: str, time: float | None = None, review: str | None = None) -> None:
        self.users.append(user)
        self.items.append(item)
        if time is None:
            self.has_time = False
        else:
            self.times.append(time)
        if review is not None:
            self.reviews.append(review)

    def _check_not_empty(self) -> None:
        if self.users:
            return
        if self.below_min_rating:
            raise DataError(f"{self.source}: every one of the {self.below_min_rating} interactions is rated below "
                            "min_rating; expected some at or above it (lower --data.min-rating)")
        raise DataError(f"{self.source}: no interactions (an empty file or a header line only); "
                        "expected one interaction per line")

    def build(
        self, text: dict[str, str] | None = None, title: dict[str, str] | None = None
    ) -> InteractionData:
        """Indexes the interactions. Items of the item-text file that nobody interacted with are left
        out (see the module docstring) and counted in a warning; without any item text, every item's
        text is its id, and the warning says so: a text model would learn from "1", "2", ..."""
        self._check_not_empty()
        text = text or {}
        title = title or {}
        users = IdMap(_natural_sorted(set(self.users)))
        items = IdMap(_natural_sorted(set(self.items)))
        if self.below_min_rating:
            log.info("interactions below min_rating left out", data=self.name, interactions=self.below_min_rating)
        if not text:
            log.warning("no item text: each item's text is its id (give an items file with --data.items-path; "
                        "a text item tower refuses to train on ids)", data=self.name, items=len(items))
        missing = sum(1 for i in items.ids if i not in text)
        if text and missing:
            log.warning("items without text; using their id", data=self.name, items=missing, of=len(items))
        kept = set(items.ids)
        unused = {i: (text[i], title.get(i) or text[i]) for i in _natural_sorted(text.keys() - kept)}
        if unused:
            log.warning("items in the items file without (kept) interactions: not trained on (nothing to learn "
                        "from); a text item tower serves them by their text after export, an ID tower cannot",
                        data=self.name, items=len(unused), of=len(text))
        item_text = [text.get(i) or i for i in items.ids]
        item_title = [title.get(i) or text.get(i) or i for i in items.ids]
        return InteractionData(
            name=self.name,
            users=users,
            items=items,
            user=users.indices(self.users),
            item=items.indices(self.items),
            timestamp=np.asarray(self.times, dtype=np.float64) if self.has_time else None,
            item_text=item_text,
            item_title=item_title,
            review=list(self.reviews) if self.reviews else None,
            catalogue_only=unused,
        )


def _no_rating_error(path: Path, accepted: tuple[str, ...]) -> DataError:
    return DataError(
        f"{path}: min_rating is set but the file has no rating column; expected one of: {', '.join(accepted)} "
        f"(or leave min_rating unset)"
    )


# --------------------------------------------------------------------------- RecBole atomic files


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """RecBole atomic file: tab-separated with a `name:type` header."""
    names, _types, rows = _read_atomic_typed(path)
    return names, rows


def _read_atomic_typed(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    _check_file(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}:1: empty file; expected a header of name:type fields") from None
        for h in header:
            if ":" not in h:
                raise DataError(f"{path}:1: header field {h!r} is not name:type (e.g. user_id:token)")
        names = [h.split(":", 1)[0] for h in header]
        types = [h.split(":", 1)[1] for h in header]
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise DataError(
                    f"{path}:{lineno}: expected {len(names)} tab-separated fields, got {len(row)}"
                )
            rows.append(row)
    return names, types, rows


def load_ml100k(path: Path | None = None, min_rating: float | None = None,
                template: str | None = None) -> InteractionData:
    """MovieLens-100K; item text = "<title> (<year>), genres: <genres>", or `template` over the fields
    title, year, genres (and the .item file's own columns)."""
    folder = Path(path) if path else ml100k_dir()
    names, rows = _read_atomic(folder / "ml-100k.inter")
    col = {n: i for i, n in enumerate(names)}
    if min_rating is not None:
        rows = [r for r in rows if float(r[col["rating"]]) >= min_rating]
    inames, irows = _read_atomic(folder / "ml-100k.item")
    icol = {n: i for i, n in enumerate(inames)}
    meta = {r[icol["item_id"]]: r for r in irows}
    item_ids = sorted({r[col["item_id"]] for r in rows}, key=int)
    user_ids = sorted({r[col["user_id"]] for r in rows}, key=int)
    users, items = IdMap(user_ids), IdMap(item_ids)

    def describe(iid: str) -> tuple[str, str]:
        r = meta.get(iid)
        title = r[icol["movie_title"]].strip() if r else f"item {iid}"
        year = r[icol["release_year"]].strip() if r else ""
        genres = ", ".join(r[icol["class"]].split()) if r else ""
        if template:
            raw = {n: r[j].strip() for n, j in icol.items()} if r else {}
            return templated(template, {**raw, "title": title, "year": year, "genres": genres},
                             folder / "ml-100k.item"), title
        return (f"{title} ({year}), genres: {genres}" if year else f"{title}, genres: {genres}"), title

    texts, titles = zip(*(describe(i) for i in item_ids), strict=True) if item_ids else ((), ())
    kept = set(item_ids)
    unused = {i: describe(i) for i in sorted(meta.keys() - kept, key=int)}
    if unused:  # e.g. every rating of a movie below --data.min-rating
        log.warning("items in the items file without (kept) interactions: not trained on (nothing to learn "
                    "from); a text item tower serves them by their text after export, an ID tower cannot",
                    data="ml-100k", items=len(unused), of=len(meta))
    return InteractionData(
        name="ml-100k",
        users=users,
        items=items,
        user=users.indices([r[col["user_id"]] for r in rows]),
        item=items.indices([r[col["item_id"]] for r in rows]),
        timestamp=np.array([float(r[col["timestamp"]]) for r in rows], dtype=np.float64),
        item_text=list(texts),
        item_title=list(titles),
        catalogue_only=unused,
    )


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


def load_atomic(path: Path, min_rating: float | None = None, template: str | None = None) -> InteractionData:
    """RecBole atomic files. Item text joins the `.item` file's token_seq/token fields.

    The field that looks like a title (named *title* or *name*, else the first token_seq
    field) becomes the display title and leads the text; other fields follow as "field: value".
    """
    name, inter_path, item_path = _atomic_paths(Path(path))
    names, _types, rows = _read_atomic_typed(inter_path)
    ucol = _require_column(names, ("user_id", *USER_COLUMNS), "user", inter_path)
    icol = _require_column(names, ("item_id", *ITEM_COLUMNS), "item", inter_path)
    tcol = _find_column(names, TIME_COLUMNS)
    rcol = _find_column(names, RATING_COLUMNS)
    if min_rating is not None and rcol is None:
        raise _no_rating_error(inter_path, RATING_COLUMNS)
    builder = _Builder(name, inter_path)
    for lineno, row in enumerate(rows, start=2):
        rating = _parse_float(row[rcol], inter_path, lineno, "rating") if rcol is not None else None
        if not builder.keep(rating, min_rating):
            continue
        user, item = row[ucol].strip(), row[icol].strip()
        if not user or not item:
            raise DataError(f"{inter_path}:{lineno}: empty user or item id; expected both")
        time = _parse_float(row[tcol], inter_path, lineno, "timestamp") if tcol is not None else None
        builder.add(user, item, time)
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    if item_path.is_file():
        inames, itypes, irows = _read_atomic_typed(item_path)
        iid = _require_column(inames, ("item_id", *ITEM_COLUMNS), "item", item_path)
        fields = [j for j, t in enumerate(itypes) if j != iid and t in ("token", "token_seq")]
        title_col = _find_column(inames, TITLE_COLUMNS)
        if title_col is None:
            title_col = next((j for j in fields if itypes[j] == "token_seq"), None)
        for row in irows:
            key = row[iid].strip()
            parts = []
            if title_col is not None and row[title_col].strip():
                title[key] = row[title_col].strip()
                parts.append(title[key])
            for j in fields:
                if j != title_col and row[j].strip():
                    parts.append(f"{inames[j]}: {' '.join(row[j].split())}")
            text[key] = (templated(template, {n: v.strip() for n, v in zip(inames, row, strict=True)}, item_path)
                         if template else ", ".join(parts))
    return builder.build(text, title)


# --------------------------------------------------------------------------- item text templates


def template_fields(template: str) -> list[str]:
    """The placeholders of an item-text template ("{title} ({year})" -> ["title", "year"])."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def templated(template: str, fields: dict[str, str], where: Path) -> str:
    """The item text from `template` over one item's fields; a placeholder that is not a field is one error
    naming the fields there are (values missing for one item render as empty)."""
    unknown = [f for f in template_fields(template) if f not in fields]
    if unknown:
        raise ConfigError(f"{where}: item template field(s) {', '.join(map(repr, unknown))} not in the items "
                          f"data; fields: {', '.join(sorted(fields))} (--data.item-template)")
    return " ".join(template.format_map(fields).split())


# --------------------------------------------------------------------------- generic tables


def load_item_text(path: Path, template: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Item id -> text, item id -> title, from a CSV/TSV/Parquet file with a header.

    Text: `template` over the row's columns when given (e.g. "{title} ({year}), genres: {genres}");
    else the `text` column when there is one; else every non-id column joined, the title first and the
    others as "column: value", so an LM sees what each field is.
    """
    names, rows = _read_table(path)
    iid = _require_column(names, ITEM_COLUMNS, "item id", path)
    text_col = _find_column(names, TEXT_COLUMNS)
    title_col = _find_column(names, TITLE_COLUMNS)
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
    names, rows = _read_table(path)
    ucol = _require_column(names, USER_COLUMNS, "user", path)
    icol = _require_column(names, ITEM_COLUMNS, "item", path)
    tcol = _find_column(names, TIME_COLUMNS)
    rcol = _find_column(names, RATING_COLUMNS)
    if min_rating is not None and rcol is None:
        raise _no_rating_error(path, RATING_COLUMNS)
    builder = _Builder(path.name.split(".")[0], path)
    for lineno, row in rows:
        user, item = row[ucol].strip(), row[icol].strip()
        if not user or not item:
            raise DataError(
                f"{path}:{lineno}: empty user or item id; expected values in columns {names[ucol]!r}, {names[icol]!r}"
            )
        rating = _parse_float(row[rcol], path, lineno, "rating") if rcol is not None else None
        if not builder.keep(rating, min_rating):
            continue
        time = _parse_float(row[tcol], path, lineno, "timestamp") if tcol is not None else None
        builder.add(user, item, time)
    text, title = load_item_text(Path(items_path), template) if items_path else ({}, {})
    return builder.build(text, title)


# --------------------------------------------------------------------------- TCF layout


def load_tcf(path: Path, items_path: Path | None = None) -> InteractionData:
    """TCF's behaviors.tsv (user \\t items in time order) + items tsv (item \\t text...).

    The position in the line is the time (0, 1, 2, ...); a user on several lines continues
    counting, so later lines are later. Items-file columns after the id are joined with " ".
    """
    path = Path(path)
    builder = _Builder(path.parent.name or path.stem, path)
    position: dict[str, int] = {}
    for lineno, fields in _tab_lines(path):
        if len(fields) != 2 or not fields[0].strip() or not fields[1].split():
            raise DataError(
                f"{path}:{lineno}: expected 'user<TAB>item item ...' (a user id, one tab, "
                f"space-separated item ids), got {len(fields)} tab-separated field(s)"
            )
        user = fields[0].strip()
        start = position.get(user, 0)
        items = fields[1].split()
        for k, item in enumerate(items):
            builder.add(user, item, float(start + k))
        position[user] = start + len(items)
    text: dict[str, str] = {}
    if items_path:
        items_path = Path(items_path)
        for lineno, fields in _tab_lines(items_path):
            if len(fields) < 2 or not fields[0].strip():
                raise DataError(
                    f"{items_path}:{lineno}: expected 'item<TAB>text', got {len(fields)} field(s)"
                )
            text[fields[0].strip()] = " ".join(" ".join(fields[1:]).split())
    return builder.build(text)


# --------------------------------------------------------------------------- Amazon reviews


def _tab_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated fields of each non-blank line, with 1-based line numbers for error messages."""
    for lineno, line in enumerate(_lines(path), start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield lineno, line.split("\t")


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON lines, plain or gzipped. Lines that are Python dict literals (the 2014 Amazon
    metadata dumps are written that way) are accepted too."""
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            try:
                obj = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError):
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); expected one JSON object per line"
                ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}"
            )
        yield lineno, obj


def _flatten(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [s for v in value for s in _flatten(v)]
    s = " ".join(str(value).split())
    return [s] if s else []


def load_amazon_meta(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """asin -> "title, categories: ..., description: ..." and asin -> title."""
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    for lineno, obj in _json_lines(path):
        asin = obj.get("asin")
        if not asin:
            raise DataError(f"{path}:{lineno}: missing 'asin'; expected item metadata with asin and title")
        asin = str(asin).strip()
        name = " ".join(str(obj.get("title") or "").split())
        cats = list(dict.fromkeys(_flatten(obj.get("categories", obj.get("category")))))
        desc = " ".join(_flatten(obj.get("description")))
        parts = [name] if name else []
        if cats:
            parts.append("categories: " + ", ".join(cats))
        if desc:
            parts.append("description: " + desc)
        title[asin] = name
        text[asin] = ", ".join(parts)
    return text, title


def load_amazon(
    path: Path, items_path: Path | None = None, min_rating: float | None = None
) -> InteractionData:
    """Amazon review JSON lines (reviewerID, asin[, reviewText][, unixReviewTime][, overall]).

    `review[k]` is the review's text (summary prepended when present); item text comes from the
    metadata file when given, else it is the asin.
    """
    path = Path(path)
    builder = _Builder(path.name.split(".")[0], path)
    has_time: bool | None = None
    saw_rating = False
    for lineno, obj in _json_lines(path):
        user, item = obj.get("reviewerID"), obj.get("asin")
        if not user or not item:
            raise DataError(
                f"{path}:{lineno}: missing 'reviewerID' or 'asin'; expected both in every review"
            )
        rating = obj.get("overall")
        if rating is not None:
            saw_rating = True
            try:
                rating = float(rating)
            except (TypeError, ValueError):
                raise DataError(f"{path}:{lineno}: bad 'overall' {rating!r}; expected a number") from None
        if min_rating is not None and rating is None:
            raise DataError(f"{path}:{lineno}: min_rating is set but the review has no 'overall' rating")
        if not builder.keep(rating, min_rating):
            continue
        raw_time = obj.get("unixReviewTime")
        if has_time is None:
            has_time = raw_time is not None
        if has_time != (raw_time is not None):
            raise DataError(
                f"{path}:{lineno}: 'unixReviewTime' present on some reviews only; expected all or none"
            )
        time = _parse_float(str(raw_time), path, lineno, "timestamp") if raw_time is not None else None
        summary = " ".join(str(obj.get("summary") or "").split())
        body = " ".join(str(obj.get("reviewText") or "").split())
        review = f"{summary}. {body}" if summary and body else (summary or body)
        builder.add(str(user).strip(), str(item).strip(), time, review)
    if min_rating is not None and not saw_rating:
        raise _no_rating_error(path, ("overall",))
    text, title = load_amazon_meta(Path(items_path)) if items_path else ({}, {})
    return builder.build(text, title)


# --------------------------------------------------------------------------- dispatch


def _load_unfiltered(cfg: DataConfig) -> InteractionData:
    if cfg.item_template and cfg.dataset not in ("ml-100k", "interactions", "atomic"):
        raise ConfigError(f"--data.item-template works with the ml-100k, interactions and atomic formats, "
                          f"not {cfg.dataset!r} (its item text is given as it is)")
    if cfg.dataset == "ml-100k":
        return load_ml100k(cfg.path, cfg.min_rating, cfg.item_template)
    if cfg.path is None:
        raise ConfigError(f"dataset {cfg.dataset!r} needs a path (--data.path)")
    if cfg.dataset == "interactions":
        return load_interactions(cfg.path, cfg.items_path, cfg.min_rating, cfg.item_template)
    if cfg.dataset == "atomic":
        return load_atomic(cfg.path, cfg.min_rating, cfg.item_template)
    if cfg.dataset == "tcf":
        if cfg.min_rating is not None:
            raise ConfigError("min_rating does not apply to the tcf format (behaviors.tsv has no ratings)")
        return load_tcf(cfg.path, cfg.items_path)
    if cfg.dataset == "amazon":
        return load_amazon(cfg.path, cfg.items_path, cfg.min_rating)
    raise ConfigError(
        f"unknown dataset format {cfg.dataset!r}; accepted: ml-100k, interactions, atomic, tcf, amazon"
    )


def load_data(cfg: DataConfig) -> InteractionData:
    """Loads `cfg.dataset`, then applies the min-interactions filter when the config asks for it."""
    data = _load_unfiltered(cfg)
    if cfg.min_user_interactions <= 0 and cfg.min_item_interactions <= 0:
        return data
    kept = filter_min_interactions(data, cfg.min_user_interactions, cfg.min_item_interactions)
    dropped = {f"dropped_{k}": data.summary()[k] - kept.summary()[k] for k in ("users", "items", "interactions")}
    if any(dropped.values()):
        log.warning("dropped users/items below the minimum interactions: not trained on, and the dropped users "
                    "are unknown to an exported model (send their history instead)",
                    data=data.name, min_user_interactions=cfg.min_user_interactions,
                    min_item_interactions=cfg.min_item_interactions, **dropped, kept_users=kept.num_users,
                    kept_items=kept.num_items)
    return kept
