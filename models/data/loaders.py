"""Loaders from files to InteractionData. (MovieLens-100K first; other formats follow.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from llmrec.assets import ml100k_dir
from models.data.config import DataConfig
from models.data.dataset import IdMap, InteractionData


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """RecBole atomic file: tab-separated with a `name:type` header."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        names = [h.split(":", 1)[0] for h in header]
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(names):
                raise ValueError(f"{path}:{lineno}: expected {len(names)} tab-separated fields, got {len(row)}")
            rows.append(row)
    return names, rows


def load_ml100k(path: Path | None = None, min_rating: float | None = None) -> InteractionData:
    """MovieLens-100K; item text = "<title> (<year>), genres: <genres>"."""
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
    titles, texts = [], []
    for iid in item_ids:
        r = meta.get(iid)
        title = r[icol["movie_title"]].strip() if r else f"item {iid}"
        year = r[icol["release_year"]].strip() if r else ""
        genres = ", ".join(r[icol["class"]].split()) if r else ""
        titles.append(title)
        texts.append(f"{title} ({year}), genres: {genres}" if year else f"{title}, genres: {genres}")
    return InteractionData(
        name="ml-100k",
        users=users,
        items=items,
        user=users.indices([r[col["user_id"]] for r in rows]),
        item=items.indices([r[col["item_id"]] for r in rows]),
        timestamp=np.array([float(r[col["timestamp"]]) for r in rows], dtype=np.float64),
        item_text=texts,
        item_title=titles,
    )


def load_data(cfg: DataConfig) -> InteractionData:
    if cfg.dataset == "ml-100k":
        return load_ml100k(cfg.path, cfg.min_rating)
    raise NotImplementedError(f"dataset format {cfg.dataset!r} is not implemented yet")
