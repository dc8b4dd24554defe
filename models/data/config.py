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
    # users with fewer distinct items are dropped, after loading, together with items below
    # min_item_interactions, repeated until both hold (k-core style); one name in every command
    min_user_interactions: int = 0
    min_item_interactions: int = 0  # items with fewer distinct users are dropped (see above)
    split_seed: int = 0  # seed of the random 80/10/10 split (leave-one-out by time does not use it)
