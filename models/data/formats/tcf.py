"""`tcf`: the layout of the TCF paper's data, behaviors.tsv (user \\t items in time order) + an items
tsv (item \\t text)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from common.errors import ConfigError, DataError
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.formats.shared import Builder, lines, required_path


def _tab_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated fields of each non-blank line, with 1-based line numbers for error messages."""
    for lineno, line in enumerate(lines(path), start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield lineno, line.split("\t")


def load_tcf(path: Path, items_path: Path | None = None) -> InteractionData:
    """TCF's behaviors.tsv (user \\t items in time order) + items tsv (item \\t text...).

    The position in the line is the time (0, 1, 2, ...); a user on several lines continues
    counting, so later lines are later. Items-file columns after the id are joined with " ".
    """
    path = Path(path)
    builder = Builder(path.parent.name or path.stem, path)
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


def from_config(cfg: DataConfig) -> InteractionData:
    path = required_path(cfg)
    if cfg.min_rating is not None:
        raise ConfigError("min_rating does not apply to the tcf format (behaviors.tsv has no ratings)")
    return load_tcf(path, cfg.items_path)
