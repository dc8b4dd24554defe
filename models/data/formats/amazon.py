"""`amazon`: Amazon review JSON lines, with the metadata JSON lines as item text; the reviews
themselves are kept, since CLLM4Rec's content LM trains on them."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import DataError
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.formats.shared import Builder, lines, no_rating_error, parse_float, required_path


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON lines, plain or gzipped. Lines that are Python dict literals (the 2014 Amazon
    metadata dumps are written that way) are accepted too."""
    for lineno, line in enumerate(lines(path), start=1):
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
    """Metadata fields nest lists (categories are lists of paths): one flat list of clean strings."""
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
    builder = Builder(path.name.split(".")[0], path)
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
        time = parse_float(str(raw_time), path, lineno, "timestamp") if raw_time is not None else None
        summary = " ".join(str(obj.get("summary") or "").split())
        body = " ".join(str(obj.get("reviewText") or "").split())
        review = f"{summary}. {body}" if summary and body else (summary or body)
        builder.add(str(user).strip(), str(item).strip(), time, review)
    if min_rating is not None and not saw_rating:
        raise no_rating_error(path, ("overall",))
    text, title = load_amazon_meta(Path(items_path)) if items_path else ({}, {})
    return builder.build(text, title)


def from_config(cfg: DataConfig) -> InteractionData:
    return load_amazon(required_path(cfg), cfg.items_path, cfg.min_rating)
