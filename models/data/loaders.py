"""The public entry to the data: `load_data(cfg)` picks the format named by `DataConfig.dataset` from
`FORMATS` and applies the min-interactions filter.

Each format lives in its own module under `models/data/formats/` (the conventions they all follow are
in `formats/shared.py`); adding one is that module plus one line in `FORMATS` (and its name in
`config.DatasetFormat`, which the CLI offers). The names below the registry are re-exported so that
the paths callers import from (`models.data.loaders.load_ml100k`, `.USER_COLUMNS`, ...) keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common import logs
from common.errors import ConfigError
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.filters import filter_min_interactions
from models.data.formats import amazon, atomic, interactions, ml100k, tcf
from models.data.formats.amazon import load_amazon, load_amazon_meta
from models.data.formats.atomic import load_atomic
from models.data.formats.interactions import load_interactions, load_item_text
from models.data.formats.ml100k import load_ml100k
from models.data.formats.shared import (
    ITEM_COLUMNS,
    RATING_COLUMNS,
    TEXT_COLUMNS,
    TIME_COLUMNS,
    TITLE_COLUMNS,
    USER_COLUMNS,
    template_fields,
    templated,
)
from models.data.formats.tables import SEPARATORS, TABLE_TYPES
from models.data.formats.tcf import load_tcf

__all__ = [
    "FORMATS",
    "ITEM_COLUMNS",
    "RATING_COLUMNS",
    "SEPARATORS",
    "TABLE_TYPES",
    "TEXT_COLUMNS",
    "TIME_COLUMNS",
    "TITLE_COLUMNS",
    "USER_COLUMNS",
    "DataFormat",
    "load_amazon",
    "load_amazon_meta",
    "load_atomic",
    "load_data",
    "load_interactions",
    "load_item_text",
    "load_ml100k",
    "load_tcf",
    "template_fields",
    "templated",
]

log = logs.get(__name__)


@dataclass(frozen=True)
class DataFormat:
    """A registry entry. `item_template` is here, not in the loader, so that a template given to a
    format that cannot use it is refused with the list of formats that can."""

    load: Callable[[DataConfig], InteractionData]
    item_template: bool = False  # whether --data.item-template can build this format's item text


FORMATS: dict[str, DataFormat] = {
    "ml-100k": DataFormat(ml100k.from_config, item_template=True),
    "interactions": DataFormat(interactions.from_config, item_template=True),
    "atomic": DataFormat(atomic.from_config, item_template=True),
    "tcf": DataFormat(tcf.from_config),
    "amazon": DataFormat(amazon.from_config),
}


def _spoken_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _load_unfiltered(cfg: DataConfig) -> InteractionData:
    fmt = FORMATS.get(cfg.dataset)
    if fmt is None:
        raise ConfigError(f"unknown dataset format {cfg.dataset!r}; accepted: {', '.join(FORMATS)}")
    if cfg.item_template and not fmt.item_template:
        templated_formats = _spoken_list([name for name, f in FORMATS.items() if f.item_template])
        raise ConfigError(f"--data.item-template works with the {templated_formats} formats, "
                          f"not {cfg.dataset!r} (its item text is given as it is)")
    return fmt.load(cfg)


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
