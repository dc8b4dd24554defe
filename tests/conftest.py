"""Shared fixtures: tiny data sets that the tests build themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `pytest tests/...` works without installing the package
    sys.path.insert(0, str(ROOT))

from models.data.dataset import IdMap, InteractionData  # noqa: E402


def make_data(user: list[int], item: list[int], timestamp: list[float] | None = None) -> InteractionData:
    """InteractionData from index lists; ids are "u<i>" / "i<j>"."""
    n_users, n_items = max(user) + 1, max(item) + 1
    return InteractionData(
        name="tiny",
        users=IdMap([f"u{i}" for i in range(n_users)]),
        items=IdMap([f"i{j}" for j in range(n_items)]),
        user=np.asarray(user, dtype=np.int64),
        item=np.asarray(item, dtype=np.int64),
        timestamp=None if timestamp is None else np.asarray(timestamp, dtype=np.float64),
    )


@pytest.fixture
def two_groups() -> InteractionData:
    """Two user groups liking two disjoint item groups; group A is twice as large, so raw
    popularity favours A's items and is wrong for every B user. A model that learns the groups
    (ALS, EASE) ranks B's items first for B users."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    n_items_per_group, per_user = 20, 10
    for u in range(60):
        group = 0 if u < 40 else 1
        chosen = rng.choice(n_items_per_group, size=per_user, replace=False) + group * n_items_per_group
        users += [u] * per_user
        items += chosen.tolist()
        times += list(range(per_user))
    return make_data(users, items, times)


@pytest.fixture(scope="session")
def tcf_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny BERT text encoder, tiny MovieLens-100K-shaped data folder), shared read-only by the TCF tests."""
    from models.tiny import write_encoder, write_ml100k

    base = tmp_path_factory.mktemp("tcf")
    return write_encoder(base / "enc", "bert", layers=2), write_ml100k(base / "data")


@pytest.fixture
def one_torch_thread() -> None:
    """Tiny models train fastest, and identically on every machine, on one thread."""
    import torch

    torch.set_num_threads(1)
