"""TCF checkpoints: a folder of JSON + safetensors, loaded strictly and never unpickled.

    config.json          kind "tcf", towers, model/training/text-encoder config, split info, the
                         sha256 of weights.safetensors (checked on load)
    weights.safetensors  trainable weights only: MLP, unfrozen top LM layers, SASRec/DSSM, ID table
    users.json/items.json  IdMap.save
    item_texts.json/item_titles.json
    split.json           per-user train/valid/test item rows (leave-one-out, after preparation)

The frozen LM is referenced (name or path + identity), not copied; its pre-inferred table is
re-derived from the cache on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llmrec import logs
from llmrec.config import from_dict
from models.data.dataset import IdMap
from models.data.splits import Split
from models.tcf import text_encoder as te
from models.tcf.model import ModelConfig, TCFModel, build_model
from models.tcf.preinfer import preinfer

log = logs.get(__name__)
FILES = ("config.json", "weights.safetensors", "users.json", "items.json", "item_texts.json", "item_titles.json",
         "split.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(out: Path, model: TCFModel, text: te.TextEncoderConfig, users: IdMap, items: IdMap,
                    item_texts: list[str], item_titles: list[str], split: Split, extra: dict[str, Any]) -> None:
    """Writes into out/.tmp then renames file by file, so a crash never leaves a half-written weights file."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp_w = out / "weights.safetensors.tmp"
    save_file(state, str(tmp_w))
    text_ref = None
    if model.cfg.item_tower == "text":
        folder = te.resolve_encoder_dir(text.encoder)
        text_ref = {**_text_dict(text), "resolved_path": str(folder), "identity": te.model_identity(folder)}
    cfg = {
        "kind": "tcf",
        "format_version": 1,
        "user_tower": model.cfg.user_tower,
        "item_tower": model.cfg.item_tower,
        "model": {k: getattr(model.cfg, k) for k in ModelConfig.__dataclass_fields__},
        "text_encoder": text_ref,
        "split": {"protocol": split.protocol, "seed": split.seed, **split.counts()},
        "weights_sha256": _sha256(tmp_w),
        **extra,
    }
    users.save(out / "users.json")
    items.save(out / "items.json")
    (out / "item_texts.json").write_text(json.dumps(item_texts, ensure_ascii=False))
    (out / "item_titles.json").write_text(json.dumps(item_titles, ensure_ascii=False))
    (out / "split.json").write_text(json.dumps({
        "protocol": split.protocol, "seed": split.seed, "too_short": split.too_short,
        "train": [t.tolist() for t in split.train], "valid": [t.tolist() for t in split.valid],
        "test": [t.tolist() for t in split.test]}))
    tmp_w.replace(out / "weights.safetensors")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))


def _text_dict(text: te.TextEncoderConfig) -> dict[str, Any]:
    return {k: getattr(text, k) for k in te.TextEncoderConfig.__dataclass_fields__}


@dataclass
class LoadedCheckpoint:
    config: dict[str, Any]
    model: TCFModel
    text: te.TextEncoderConfig | None
    lm: torch.nn.Module | None  # the full LM (top layers = the trained ones) for text towers with N > 0
    users: IdMap
    items: IdMap
    item_texts: list[str]
    item_titles: list[str]
    split: Split


def load_split(path: Path, num_items: int) -> Split:
    s = json.loads(path.read_text())

    def arrs(key: str) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.int64) for x in s[key]]

    return Split(s["protocol"], s["seed"], num_items, arrs("train"), arrs("valid"), arrs("test"), s["too_short"])


def load_checkpoint(folder: Path, need_full_lm: bool = False, preinfer_cache: Path | None = None) -> LoadedCheckpoint:
    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a TCF checkpoint: missing {', '.join(missing)}")
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("kind") != "tcf":
        raise ValueError(f"{folder}/config.json: kind is {cfg.get('kind')!r}, expected 'tcf'")
    if _sha256(folder / "weights.safetensors") != cfg.get("weights_sha256"):
        raise ValueError(f"{folder}/weights.safetensors does not match the sha256 in config.json (modified?)")
    mcfg = from_dict(ModelConfig, cfg["model"])
    users, items = IdMap.load(folder / "users.json"), IdMap.load(folder / "items.json")
    texts = json.loads((folder / "item_texts.json").read_text())
    titles = json.loads((folder / "item_titles.json").read_text())
    split = load_split(folder / "split.json", len(items))
    text = pre = lm = None
    if mcfg.item_tower == "text":
        ref = dict(cfg["text_encoder"])
        saved_identity = ref.pop("identity")
        ref.pop("resolved_path")
        text = from_dict(te.TextEncoderConfig, ref)
        lm_folder = te.resolve_encoder_dir(text.encoder)
        if te.model_identity(lm_folder)["files"] != saved_identity["files"]:
            log.warning("text encoder files differ from those the checkpoint was trained with", path=str(lm_folder))
        if text.unfreeze_last > 0 or need_full_lm:
            lm = te.load_lm(lm_folder)
        pre = preinfer(text, texts, preinfer_cache, progress=False, lm=lm)
    model = build_model(mcfg, text or te.TextEncoderConfig(), len(users), len(items), pre, lm)
    state = load_file(str(folder / "weights.safetensors"))
    model.load_state_dict(state, strict=True)
    model.eval()
    return LoadedCheckpoint(cfg, model, text, lm, users, items, texts, titles, split)
