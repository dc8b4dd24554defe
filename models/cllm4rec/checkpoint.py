"""Checkpoint folder: the trained ID tensors plus everything needed to rebuild the model.

    config.json          kind "cllm4rec", model config, backbone reference (path + sha256 of its
                         weights), token layout, prompt template ids, train/data configs, split
    weights.safetensors  trained tensors ONLY (ID tables, feature scale, temperature)
    users.json/items.json  IdMap of the external ids
    item_text.json       {"text": [...], "title": [...]}
    train_state.pt       optional, for resuming (tensors and plain containers; loaded weights_only)

Loading is strict: a missing, extra or mis-shaped tensor, or a backbone whose weights hash
differs from the recorded one, is an error. Nothing is unpickled beyond plain tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmrec.config import from_dict
from models.cllm4rec.backbone import BackboneConfig, load_backbone, weights_fingerprint
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template
from models.cllm4rec.tokens import IdTokenizer
from models.data.config import DataConfig
from models.data.dataset import IdMap, InteractionData
from models.data.loaders import load_data
from models.data.splits import Split, make_split

KIND = "cllm4rec"
FORMAT_VERSION = 1
TRAIN_STATE = "train_state.pt"


@dataclass
class Loaded:
    model: CLLM4Rec
    tokenizer: IdTokenizer
    template: Template
    config: dict[str, Any]
    users: IdMap
    items: IdMap
    item_text: list[str]
    item_title: list[str]

    @property
    def max_history(self) -> int:
        return int(self.config["max_history"])

    def training_data(self) -> tuple[InteractionData, Split]:
        """Reloads the data and split the checkpoint was trained on, refusing data whose ids differ."""
        data = load_data(from_dict(DataConfig, self.config["data"]))
        if data.users.ids != self.users.ids or data.items.ids != self.items.ids:
            raise ValueError("the data set's user/item ids differ from the checkpoint's id maps: not the training data")
        return data, make_split(data, self.config["split"]["protocol"], self.config["split"]["seed"])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    out: Path,
    model: CLLM4Rec,
    tok: IdTokenizer,
    tmpl: Template,
    data: InteractionData,
    backbone_ref: dict[str, Any],
    max_history: int,
    extra: dict[str, Any],
) -> None:
    """Writes weights first and config.json last, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "weights.safetensors.tmp"
    save_file(model.trained_state(), str(tmp))
    os.replace(tmp, out / "weights.safetensors")
    data.users.save(out / "users.json")
    data.items.save(out / "items.json")
    _atomic_write(out / "item_text.json", json.dumps({"text": data.item_text, "title": data.item_title}))
    v = tok.vocab
    config = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model": dataclasses.asdict(model.cfg),
        "backbone": backbone_ref,
        "tokens": {
            "vocab_size": v.vocab_size,
            "user_offset": v.user_offset,
            "item_offset": v.item_offset,
            "anon_token": v.anon_token,
            "total": v.total,
            "pad_token_id": tok.pad_token_id,
        },
        "template": tmpl.manifest(),
        "template_pieces": dataclasses.asdict(tmpl),
        "max_history": max_history,
        **extra,
    }
    _atomic_write(out / "config.json", json.dumps(config, indent=2, default=str))


def read_config(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a checkpoint: config.json is missing")
    config = json.loads(path.read_text())
    if config.get("kind") != KIND:
        raise ValueError(f"{path}: kind is {config.get('kind')!r}, expected {KIND!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    return config


def load_checkpoint(ckpt: Path, backbone_path: Path | None = None, threads: int = 1) -> Loaded:
    """Rebuilds the model; `backbone_path` overrides a moved backbone (its hash must still match)."""
    ckpt = Path(ckpt)
    config = read_config(ckpt)
    ref = config["backbone"]
    bcfg = BackboneConfig(
        path=Path(backbone_path or ref["path"]), gguf_file=ref.get("gguf_file"), dtype=ref.get("dtype", "float32"),
        threads=threads,
    )
    digest = weights_fingerprint(Path(bcfg.path), bcfg.gguf_file)  # type: ignore[arg-type]
    if digest != ref["sha256"]:
        raise ValueError(
            f"backbone at {bcfg.path} has weights sha256 {digest[:12]}..., the checkpoint was trained on "
            f"{ref['sha256'][:12]}...; pass the original backbone"
        )
    backbone, hf_tok = load_backbone(bcfg)
    mcfg = ModelConfig(**config["model"])
    tok = IdTokenizer(hf_tok, mcfg.num_users, mcfg.num_items)
    if tok.vocab.vocab_size != mcfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab.vocab_size} tokens, checkpoint expects {mcfg.vocab_size}")
    model = CLLM4Rec(mcfg, backbone)
    model.load_trained_state(load_file(str(ckpt / "weights.safetensors")))
    model.eval()
    users, items = IdMap.load(ckpt / "users.json"), IdMap.load(ckpt / "items.json")
    if len(users) != mcfg.num_users or len(items) != mcfg.num_items:
        raise ValueError(f"{ckpt}: id maps ({len(users)} users, {len(items)} items) do not match the model config")
    texts = json.loads((ckpt / "item_text.json").read_text())
    tmpl = Template(**config["template_pieces"])
    return Loaded(model, tok, tmpl, config, users, items, texts["text"], texts["title"])


def save_train_state(out: Path, state: dict[str, Any]) -> None:
    tmp = Path(out) / (TRAIN_STATE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, Path(out) / TRAIN_STATE)


def load_train_state(out: Path) -> dict[str, Any] | None:
    path = Path(out) / TRAIN_STATE
    if not path.is_file():
        return None
    return torch.load(path, weights_only=True)
