"""TCF's checkpoint folder (the shared layout is in models.training.checkpoint):

    config.json          kind "tcf", towers, model config, text encoder (name, resolved path,
                         content sha256) and the LM levers (depth, unfrozen top blocks), split info
    weights.safetensors  trainable weights only: MLP, unfrozen top LM blocks, SASRec/DSSM, ID table
    users.json/items.json  IdMap of the external ids
    item_texts.json/item_titles.json
    catalogue_only.json  [id, text, title] of items without interactions (served by a text tower)
    split.json           per-user train/valid/test item rows (leave-one-out, after preparation; its sha256
                         in config.json, checked at load), and per user the held-out items it watched
                         (cold start: out of its history, still masked at eval)

The frozen LM is referenced, not copied; its pre-inferred table is re-derived from the cache on
load. A text encoder whose content hash differs from the recorded one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import from_dict, to_dict
from models.data.dataset import IdMap
from models.data.splits import Split
from models.tcf import text_encoder as te
from models.tcf.model import ModelConfig, TCFModel, build_model, uses_text
from models.tcf.preinfer import preinfer
from models.training import checkpoint as ckpt
from models.training.capacity import CapacityConfig

KIND = "tcf"


def save_checkpoint(out: Path, model: TCFModel, text: te.TextEncoderConfig, lm_cfg: CapacityConfig, users: IdMap,
                    items: IdMap, item_texts: list[str], item_titles: list[str], split: Split,
                    extra: dict[str, Any], catalogue_only: dict[str, tuple[str, str]] | None = None,
                    held_seen: list[np.ndarray] | None = None) -> None:
    """`held_seen`: per user, the held-out items (cold-start protocol) it interacted with before its test
    item; they are out of the split's train/valid but the user watched them, so eval masks them."""
    text_ref = None
    if uses_text(model.cfg.item_tower):
        text_ref = {**to_dict(text), **ckpt.lm_identity(te.resolve_encoder_dir(text.encoder))}
    config = {
        "user_tower": model.cfg.user_tower,
        "item_tower": model.cfg.item_tower,
        "model": to_dict(model.cfg),
        "text_encoder": text_ref,
        "lm": to_dict(lm_cfg),
        "split": ckpt.split_record(split),  # its sha256 is checked against split.json at load
        **extra,
    }
    files = {
        "users.json": users.ids, "items.json": items.ids, "item_texts.json": item_texts,
        "item_titles.json": item_titles,
        "catalogue_only.json": [[i, t, ti] for i, (t, ti) in (catalogue_only or {}).items()],
        "split.json": {"protocol": split.protocol, "seed": split.seed, "too_short": split.too_short,
                       "train": [t.tolist() for t in split.train], "valid": [t.tolist() for t in split.valid],
                       "test": [t.tolist() for t in split.test],
                       "held_seen": [t.tolist() for t in held_seen] if held_seen is not None else None},
    }
    ckpt.write_checkpoint(Path(out), KIND, config, model.state_dict(), files)


@dataclass
class LoadedCheckpoint:
    config: dict[str, Any]
    model: TCFModel
    text: te.TextEncoderConfig | None
    lm_cfg: CapacityConfig
    lm: torch.nn.Module | None  # the LM (top blocks = the trained ones) for text towers with N > 0 or export
    users: IdMap
    items: IdMap
    item_texts: list[str]
    item_titles: list[str]
    split: Split
    catalogue_only: list[tuple[str, str, str]]  # (id, text, title) of items without training interactions
    # per user: held-out items it interacted with before its test item (masked at eval); None: not recorded
    # (a checkpoint from before they were), empty lists: no items held out
    held_seen: list[np.ndarray] | None = None


def load_split(s: dict[str, Any], num_items: int) -> Split:
    def arrs(key: str) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.int64) for x in s[key]]

    return Split(s["protocol"], s["seed"], num_items, arrs("train"), arrs("valid"), arrs("test"), s["too_short"])


def load_checkpoint(folder: Path, need_full_lm: bool = False, preinfer_cache: Path | None = None) -> LoadedCheckpoint:
    folder = Path(folder)
    cfg = ckpt.read_config(folder, KIND)
    weights = ckpt.read_weights(folder, cfg)
    mcfg = from_dict(ModelConfig, cfg["model"])
    lm_cfg = from_dict(CapacityConfig, cfg["lm"])
    users, items = IdMap.load(folder / "users.json"), IdMap.load(folder / "items.json")
    texts = ckpt.read_json(folder, "item_texts.json")
    titles = ckpt.read_json(folder, "item_titles.json")
    split_json = ckpt.read_json(folder, "split.json")
    split = load_split(split_json, len(items))
    ckpt.check_split(cfg.get("split") or {}, split, folder)
    held_seen = None if split_json.get("held_seen") is None else \
        [np.asarray(x, dtype=np.int64) for x in split_json["held_seen"]]
    text = pre = lm = None
    if uses_text(mcfg.item_tower):
        ref = dict(cfg["text_encoder"])
        identity = {"path": ref.pop("path"), "sha256": ref.pop("sha256")}
        text = from_dict(te.TextEncoderConfig, ref)
        lm_folder = te.resolve_encoder_dir(text.encoder)
        ckpt.check_lm_identity(identity, lm_folder)
        if lm_cfg.unfreeze_top > 0 or need_full_lm:
            lm = te.load_lm(lm_folder, lm_cfg.depth)
        pre = preinfer(text, lm_cfg, texts, preinfer_cache, progress=False, lm=lm)
    model = build_model(mcfg, text or te.TextEncoderConfig(), lm_cfg.unfreeze_top, len(users), len(items), pre, lm)
    model.load_state_dict(weights, strict=True)
    model.eval()
    extra_items = [tuple(x) for x in ckpt.read_json(folder, "catalogue_only.json")] \
        if (folder / "catalogue_only.json").is_file() else []
    return LoadedCheckpoint(cfg, model, text, lm_cfg, lm, users, items, texts, titles, split, extra_items, held_seen)
