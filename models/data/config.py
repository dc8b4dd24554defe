"""Which data to load: one typed config shared by every trainer and evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DatasetFormat = Literal["ml-100k", "interactions", "atomic", "tcf", "amazon"]


@dataclass
class DataConfig:
    # "ml-100k": MovieLens-100K from the installed recbole package (the default).
    # "interactions": CSV/TSV/Parquet with user, item[, timestamp][, rating] columns.
    # "atomic": RecBole atomic files (<path>/<name>.inter [+ .item]).
    # "tcf": TCF's behaviors.tsv (user \t items in time order) + items tsv (item \t text).
    # "amazon": review JSON lines (reviewerID, asin, reviewText, unixReviewTime).
    dataset: DatasetFormat = "ml-100k"
    path: Path | None = None  # file or folder; None with ml-100k means recbole's copy
    items_path: Path | None = None  # item text file for "interactions", "tcf" and "amazon"
    min_rating: float | None = None  # keep interactions with rating >= this (None: every rating counts)
    min_user_interactions: int = 0  # iterative filter (k-core style) applied after loading
    min_item_interactions: int = 0
    split_seed: int = 0
