"""Which data to load: one typed config shared by every trainer and evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DatasetFormat = Literal["ml-100k", "interactions", "atomic", "tcf", "amazon"]


@dataclass
class DataConfig:
    # "ml-100k": MovieLens-100K from the installed recbole package (the default).
    # "interactions": .csv (commas), .tsv/.tab/.txt (tabs), optionally .gz, or .parquet, with a header naming
    # user (user, user_id, userid, reviewerid), item (item, item_id, itemid, movieid, movie_id, asin) and
    # optionally timestamp (timestamp, time, ts, unixreviewtime: a number or an ISO date) and rating (rating,
    # overall, score) columns; item text from --data.items-path.
    # "atomic": RecBole atomic files (<path>/<name>.inter [+ .item]).
    # "tcf": TCF's behaviors.tsv (user \t items in time order) + items tsv (item \t text).
    # "amazon": review JSON lines (reviewerID, asin, reviewText, unixReviewTime).
    dataset: DatasetFormat = "ml-100k"
    path: Path | None = None  # file or folder; None with ml-100k means recbole's copy
    # item text, what a text item tower reads (and CLLM4Rec's item rows start from). For "interactions": a
    # table as above with an item id column and either a `text` column, used as it is, or other columns
    # joined: the title (title, movie_title, name) first, then "column: value" for every other non-empty
    # column, e.g. item,title,year,genres -> "Toy Story, year: 1995, genres: Animation". For "tcf": item \t
    # text; for "amazon": metadata JSON lines (asin, title, categories, description). Items in it without
    # interactions are left out (logged); without it every item's text is its id (a text tower refuses).
    items_path: Path | None = None
    # build each item's text from the items data's fields instead, e.g. "{title} ({year}), genres: {genres}":
    # placeholders are column names (ml-100k also has title, year, genres); ml-100k, interactions and atomic
    item_template: str | None = None
    min_rating: float | None = None  # keep interactions with rating >= this (None: every rating counts)
    # users with fewer distinct items are dropped, after loading, together with items below
    # min_item_interactions, repeated until both hold (k-core style); one name in every command
    min_user_interactions: int = 0
    min_item_interactions: int = 0  # items with fewer distinct users are dropped (see above)
    split_seed: int = 0  # seed of the random 80/10/10 split (leave-one-out by time does not use it)
