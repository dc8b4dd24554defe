"""CLLM4Rec's checkpoint folder (the shared layout is in models.training.checkpoint):

    config.json          kind "cllm4rec", model config, backbone reference (source path + content
                         sha256) and the capacity levers it was trained with, token layout, prompt
                         template ids, data config and split (protocol, seed, counts, sha256 of
                         the assignment: eval rebuilds the split from the data and checks it)
    weights.safetensors  ID tables, feature scale, temperature, item bias, and the LM weights that
                         trained (LoRA adapters / unfrozen blocks) under their `backbone.` names
    users.json/items.json  IdMap of the external ids
    item_text.json       {"text": [...], "title": [...]}

Loading rebuilds the backbone from its reference with the same levers and loads the weights
strictly; a backbone whose content hash differs from the recorded one is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import logs
from common.assets import AssetMissing
from common.config import from_dict, to_dict
from models.cllm4rec.backbone import BackboneConfig, load_backbone, resolve
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template
from models.cllm4rec.tokens import IdTokenizer
from models.data.config import DataConfig
from models.data.dataset import IdMap, InteractionData
from models.data.loaders import load_data
from models.data.splits import Split, make_split
from models.training import checkpoint as ckpt
from models.training.capacity import CapacityConfig

KIND = "cllm4rec"
ITEM_TEXT = "item_text.json"


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
    folder: Path = Path(".")

    @property
    def max_history(self) -> int:
        return self.model.cfg.max_history

    def training_data(self) -> tuple[InteractionData, Split]:
        """Reloads the data and split the checkpoint was trained on, refusing data whose ids differ and a
        rebuilt split whose sha256 is not the recorded one (one-line CheckpointError)."""
        data = load_data(from_dict(DataConfig, self.config["data"]))
        if data.users.ids != self.users.ids or data.items.ids != self.items.ids:
            raise ValueError("the data set's user/item ids differ from the checkpoint's id maps: not the training data")
        split = make_split(data, self.config["split"]["protocol"], self.config["split"]["seed"])
        ckpt.check_split(self.config["split"], split, self.folder)  # the split is rebuilt, never stored: check it
        return data, split


def save_checkpoint(out: Path, model: CLLM4Rec, tok: IdTokenizer, tmpl: Template, data: InteractionData,
                    backbone_ref: dict[str, Any], capacity: CapacityConfig, extra: dict[str, Any]) -> None:
    v = tok.vocab
    config = {
        "model": to_dict(model.cfg),
        "backbone": backbone_ref,
        "lm": to_dict(capacity),
        "tokens": {
            "vocab_size": v.vocab_size,
            "num_users": v.num_users,
            "num_items": v.num_items,
            "user_offset": v.user_offset,
            "item_offset": v.item_offset,
            "anon_token": v.anon_token,
            "total": v.total,
            "pad_token_id": tok.pad_token_id,
        },
        "template": tmpl.manifest(),
        "template_pieces": dataclasses.asdict(tmpl),
        **extra,
    }
    files = {"users.json": data.users.ids, "items.json": data.items.ids,
             ITEM_TEXT: {"text": data.item_text, "title": data.item_title}}
    ckpt.write_checkpoint(Path(out), KIND, config, model.trained_state(), files)


def backbone_folder(ref: dict[str, Any], override: Path | None = None) -> Path:
    """Where the checkpoint's backbone is now: the override, the folder it was trained from, or, when
    that is gone (another virtualenv, another machine), the installed default LM if it is the same file
    - the content hash checked after this decides, never the path."""
    if override is not None:
        return Path(override)
    recorded = Path(ref["folder"])
    if recorded.is_dir():
        return recorded
    installed, gguf = resolve(BackboneConfig())
    if ref.get("gguf_file") == gguf:
        logs.get(__name__).info("backbone folder moved; trying the installed copy", recorded=str(recorded),
                                installed=str(installed))
        return installed
    raise AssetMissing(f"the checkpoint's backbone folder {recorded} no longer exists; put the LM it was "
                       "trained on back there (its content hash is checked)")


def load_checkpoint(folder: Path, backbone_path: Path | None = None) -> Loaded:
    """Rebuilds the model; `backbone_path` overrides a moved backbone folder (its hash must still match)."""
    folder = Path(folder)
    config = ckpt.read_config(folder, KIND)
    weights = ckpt.read_weights(folder, config)
    ref = config["backbone"]
    bcfg = BackboneConfig(path=backbone_folder(ref, backbone_path), gguf_file=ref["gguf_file"])
    ckpt.check_lm_identity(ref, bcfg.path / bcfg.gguf_file if bcfg.gguf_file else bcfg.path)
    backbone, hf_tok = load_backbone(bcfg, from_dict(CapacityConfig, config["lm"]))
    tokens = config["tokens"]
    tok = IdTokenizer(hf_tok, tokens["num_users"], tokens["num_items"], config["model"].get("user_tokens", True))
    if tok.vocab.vocab_size != tokens["vocab_size"]:
        raise ValueError(f"tokenizer has {tok.vocab.vocab_size} tokens, checkpoint expects {tokens['vocab_size']}")
    model = CLLM4Rec(from_dict(ModelConfig, config["model"]), backbone, tok.vocab)
    model.load_trained_state(weights)
    model.eval()
    users, items = IdMap.load(folder / "users.json"), IdMap.load(folder / "items.json")
    if len(users) != tok.vocab.num_users or len(items) != tok.vocab.num_items:
        raise ValueError(f"{folder}: id maps ({len(users)} users, {len(items)} items) do not match the token layout")
    texts = ckpt.read_json(folder, ITEM_TEXT)
    tmpl = Template(**config["template_pieces"])
    return Loaded(model, tok, tmpl, config, users, items, texts["text"], texts["title"], folder)
