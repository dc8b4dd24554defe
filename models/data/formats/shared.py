"""What every format shares, so that a model trained on one format behaves like on another.

Conventions kept here rather than in each format:
- Ids are strings exactly as the file spells them (whitespace stripped); users and items are
  indexed in natural sorted order (numerically when every id is an integer), so the same file
  always gives the same indices whatever the line order.
- Only items that somebody interacted with are kept: an item that appears in an item-text file
  but never in the interactions has no collaborative signal, no ID embedding could be trained
  for it, and keeping it would put untrainable rows into every ranking. (A text-only item can
  still be served later by TCF's item tower; that goes through the exporter, not the loader.)
- An interacted item missing from the item-text file gets its id as text, and the loader logs
  how many did.
- Malformed input raises DataError("<file>:<line>: <what was wrong>; expected <what>"); a missing
  file raises DataFileNotFound. Both are reported by the CLI as one line, exit code 2.
- `min_rating` keeps interactions with rating >= it; asking for it on a file without ratings
  is an error rather than a silent no-op.
"""

from __future__ import annotations

import gzip
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from common import logs
from common.errors import ConfigError, DataError, DataFileNotFound
from models.data.config import DataConfig
from models.data.dataset import IdMap, InteractionData
from models.data.formats.memory import check_loadable

log = logs.get(__name__)

# Column names accepted in any case by every format with a header (README's "Using your own data").
USER_COLUMNS = ("user", "user_id", "userid", "reviewerid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movieid", "movie_id", "asin")
TIME_COLUMNS = ("timestamp", "time", "ts", "unixreviewtime")
RATING_COLUMNS = ("rating", "overall", "score")
TEXT_COLUMNS = ("text",)
TITLE_COLUMNS = ("title", "movie_title", "name")


# --------------------------------------------------------------------------- ids, columns, values


def natural_sorted(ids: set[str]) -> list[str]:
    """Numeric order when every id is an integer, so "10" follows "9" as the user expects."""
    if ids and all(s.lstrip("-").isdigit() for s in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def find_column(names: list[str], accepted: tuple[str, ...]) -> int | None:
    """Index of the first accepted name present (case and surrounding spaces ignored)."""
    lowered = [n.strip().lower() for n in names]
    for want in accepted:
        if want in lowered:
            return lowered.index(want)
    return None


def require_column(names: list[str], accepted: tuple[str, ...], what: str, path: Path) -> int:
    """As find_column, but a missing column is the user's mistake, named with the accepted names."""
    idx = find_column(names, accepted)
    if idx is None:
        raise DataError(
            f"{path}:1: no {what} column in header {names}; expected one of: {', '.join(accepted)}"
        )
    return idx


def parse_float(value: str, path: Path, lineno: int, what: str) -> float:
    """A rating or a timestamp; timestamps may also be ISO dates, which exports often write."""
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


def no_rating_error(path: Path, accepted: tuple[str, ...]) -> DataError:
    """min_rating on a file without ratings would silently keep everything: refuse instead."""
    return DataError(
        f"{path}: min_rating is set but the file has no rating column; expected one of: {', '.join(accepted)} "
        f"(or leave min_rating unset)"
    )


def required_path(cfg: DataConfig) -> Path:
    """`cfg.path` for the formats that have no default data (every one but ml-100k)."""
    if cfg.path is None:
        raise ConfigError(f"dataset {cfg.dataset!r} needs a path (--data.path)")
    return Path(cfg.path)


# --------------------------------------------------------------------------- files


def check_file(path: Path) -> None:
    """A missing file or a folder is its own error, before any format-specific message about it."""
    if not path.exists():
        raise DataFileNotFound(f"data file not found: {path}")
    if not path.is_file():
        raise DataFileNotFound(f"{path} is a folder; expected a data file")


def lines(path: Path) -> Iterator[str]:
    """The lines of a text file, plain or gzipped, decoded one at a time so that a line that is not
    UTF-8 is reported with its number (a text stream decodes in blocks and cannot say which line);
    a leading byte-order mark, which spreadsheet exports write, is dropped."""
    check_file(path)
    check_loadable(path)
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason}); expected a UTF-8 file") from None


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


# --------------------------------------------------------------------------- the builder


@dataclass
class Builder:
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
        users = IdMap(natural_sorted(set(self.users)))
        items = IdMap(natural_sorted(set(self.items)))
        if self.below_min_rating:
            log.info("interactions below min_rating left out", data=self.name, interactions=self.below_min_rating)
        if not text:
            log.warning("no item text: each item's text is its id (give an items file with --data.items-path; "
                        "a text item tower refuses to train on ids)", data=self.name, items=len(items))
        missing = sum(1 for i in items.ids if i not in text)
        if text and missing:
            log.warning("items without text; using their id", data=self.name, items=missing, of=len(items))
        kept = set(items.ids)
        unused = {i: (text[i], title.get(i) or text[i]) for i in natural_sorted(text.keys() - kept)}
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
