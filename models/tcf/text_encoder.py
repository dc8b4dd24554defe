"""The pretrained LM behind the text item tower, its tokenizer, and the "top N layers" split.

One tokenization function (`tokenize`) is used by pre-inference, training and the serving
bundle, so lower-casing and truncation can never differ between them (a pitfall of the
original code). The tokenizer is a `tokenizers` JSON file whose normalizer does the
lower-casing, so the server tokenizes exactly the same way.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer, normalizers

from common import assets, logs
from common.assets import AssetMissing
from models.training.capacity import blocks, keep_first_blocks

log = logs.get(__name__)

Pooling = Literal["mean", "cls"]


@dataclass
class TextEncoderConfig:
    # "minilm" (all-MiniLM-L6-v2), "smollm2" (SmolLM2-135M, GGUF converted once to an fp32 HF folder)
    # or the path of any local Hugging Face folder with config.json, weights and tokenizer.json.
    encoder: str = "minilm"
    pooling: Pooling = "mean"  # mean over real tokens (decoder LMs, sentence encoders) or the first token
    max_length: int = 32  # tokenized item text length (truncate, pad right)
    lowercase: bool = False  # added to the tokenizer's normalizer, so serving lower-cases the same way


def smollm2_hf_dir() -> Path:
    """SmolLM2-135M as a plain fp32 HF folder: the same de-quantized cache CLLM4Rec's backbone uses.

    GGUF loading de-quantizes for ~30 s each time; models.cllm4rec.backbone converts it once to
    work/cache/backbones/<name-size-mtime>/ and we share that folder rather than keep a second copy.
    """
    from models.cllm4rec.backbone import plain_hf_folder

    return plain_hf_folder(assets.smollm2_dir(), assets.SMOLLM2_GGUF)


def resolve_encoder_dir(encoder: str) -> Path:
    if encoder == "minilm":
        return assets.minilm_dir()
    if encoder == "smollm2":
        return smollm2_hf_dir()
    path = Path(encoder)
    if not (path / "config.json").is_file():
        raise AssetMissing(
            f"text encoder {encoder!r}: accepted are 'minilm', 'smollm2' or a local Hugging Face folder "
            f"with config.json and tokenizer.json ({path / 'config.json'} is missing)"
        )
    return path


def load_tokenizer(folder: Path, max_length: int, lowercase: bool) -> Tokenizer:
    """The folder's tokenizer.json, truncating to max_length and padding right, lower-casing if asked."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise AssetMissing(f"{path} is missing: the text encoder needs a `tokenizers` JSON file")
    tok = Tokenizer.from_file(str(path))
    if lowercase:
        parts = [normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer is not None else [])
        tok.normalizer = normalizers.Sequence(parts)
    tok.enable_truncation(max_length)
    tok.enable_padding(direction="right", pad_id=pad_token_id(folder, tok))
    return tok


def pad_token_id(folder: Path, tok: Tokenizer) -> int:
    cfg = json.loads((folder / "config.json").read_text())
    pad = cfg.get("pad_token_id")
    if isinstance(pad, int):
        return pad
    for name in ("[PAD]", "<pad>", "<|endoftext|>"):
        tid = tok.token_to_id(name)
        if tid is not None:
            return tid
    return 0


def tokenize(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask int64 [len(texts), longest]; the one tokenization every path uses."""
    enc = tok.encode_batch(texts)
    ids = torch.tensor(np.array([e.ids for e in enc], dtype=np.int64))
    mask = torch.tensor(np.array([e.attention_mask for e in enc], dtype=np.int64))
    return ids, mask


def texts_hash(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def load_lm(folder: Path, depth: int = 0) -> torch.nn.Module:
    """The base model (no LM head) in fp32, eval mode, frozen; only its first `depth` blocks when > 0
    (features from a middle layer of a decoder LM)."""
    from transformers import AutoModel

    lm = AutoModel.from_pretrained(folder, dtype=torch.float32)
    lm.eval()
    lm.requires_grad_(False)
    if depth:
        keep_first_blocks(lm, depth)
    return lm


class _PassThrough(torch.nn.Module):
    """Stands in for the embedding module: the top part reads cached hidden states as inputs_embeds."""

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **_: object) -> torch.Tensor:
        assert inputs_embeds is not None
        return inputs_embeds


def top_layers(lm: torch.nn.Module, n: int) -> torch.nn.Module:
    """A model running only the last n layers (+ final norm) of `lm`, SHARING their modules.

    Sharing means training the returned module trains `lm`'s own top layers, so the full
    model used for serving needs only the checkpoint's weights loaded into this view; the
    pretrained layers are never re-initialised (a pitfall of the original fine-tune path).
    Input: the hidden states entering layer L-n (`hidden_states[L-n]` of the full model).
    """
    layers = blocks(lm)
    if not 0 < n <= len(layers):
        raise ValueError(f"unfreeze_top must be in 1..{len(layers)} for this model, got {n}")
    top = copy.copy(lm)
    top._modules = dict(lm._modules)
    kept = torch.nn.ModuleList(list(layers)[len(layers) - n :])
    if hasattr(lm, "layers"):
        top.layers = kept
        top.embed_tokens = None
    else:
        enc = copy.copy(lm.encoder)
        enc._modules = dict(lm.encoder._modules)
        enc.layer = kept
        top.encoder = enc
        top.embeddings = _PassThrough()
        if "pooler" in top._modules:
            top.pooler = None
    return top


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown pooling {pooling!r}; accepted: mean, cls")
