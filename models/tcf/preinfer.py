"""Pre-inference: run the frozen part of the item LM once over every item text, cache it on disk.

With N trainable top layers, everything below them never changes during training, so its
output is computed once (as the paper does) and training runs only the top N layers + MLP.
The cache key covers everything the result depends on: the LM's content hash, the item texts
(hash, in item-row order, so a re-ordered catalogue gets its own table and rows can never be
misaligned), max length, depth, N, pooling and lower-casing. Stored as safetensors (never pickled).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from common import assets, logs
from models.tcf import text_encoder as te
from models.training.capacity import CapacityConfig, blocks
from models.training.checkpoint import content_sha256

log = logs.get(__name__)


@dataclass
class PreInferred:
    """N = 0: `pooled` [I, H]. N > 0: `hidden` [I, T, H] entering layer L-N and `mask` [I, T]."""

    pooled: torch.Tensor | None
    hidden: torch.Tensor | None
    mask: torch.Tensor | None
    from_cache: bool
    key: str


def cache_key(cfg: te.TextEncoderConfig, lm_cfg: CapacityConfig, folder: Path, texts: list[str]) -> str:
    parts = {
        "model": content_sha256(folder),
        "texts": te.texts_hash(texts),
        "max_length": cfg.max_length,
        "depth": lm_cfg.depth,
        "unfreeze_top": lm_cfg.unfreeze_top,
        "pooling": cfg.pooling,
        "lowercase": cfg.lowercase,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def run_frozen_part(lm: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, cfg: te.TextEncoderConfig,
                    top: int, batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    """The expensive pass (tests count its calls): pooled outputs, or with `top` > 0 the hidden
    states entering the top `top` blocks."""
    n_layers = len(blocks(lm))
    outs: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(ids), batch_size), desc="pre-inference", disable=not progress):
            b_ids, b_mask = ids[start : start + batch_size], mask[start : start + batch_size]
            out = lm(input_ids=b_ids, attention_mask=b_mask, output_hidden_states=top > 0)
            if top:
                outs.append(out.hidden_states[n_layers - top].float())
            else:
                outs.append(te.pool(out.last_hidden_state.float(), b_mask, cfg.pooling))
    table = torch.cat(outs).contiguous()
    if top:
        return {"hidden": table, "mask": mask.contiguous()}
    return {"pooled": table}


def preinfer(cfg: te.TextEncoderConfig, lm_cfg: CapacityConfig, texts: list[str], cache_dir: Path | None = None,
             batch_size: int = 64, progress: bool = True, lm: torch.nn.Module | None = None) -> PreInferred:
    """The frozen part's output for every item text; `lm` (already cut to `lm_cfg.depth`) saves a load."""
    folder = te.resolve_encoder_dir(cfg.encoder)
    key = cache_key(cfg, lm_cfg, folder, texts)
    cache_dir = Path(cache_dir or assets.work_dir() / "cache" / "tcf-preinfer")
    path = cache_dir / f"{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        log.info("pre-inference cache hit", path=str(path))
        return PreInferred(t.get("pooled"), t.get("hidden"), t.get("mask"), True, key)
    tok = te.load_tokenizer(folder, cfg.max_length, cfg.lowercase)
    ids, mask = te.tokenize(tok, texts)
    lm = lm if lm is not None else te.load_lm(folder, lm_cfg.depth)
    t = run_frozen_part(lm, ids, mask, cfg, lm_cfg.unfreeze_top, batch_size, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(t, str(tmp), metadata={"encoder": str(folder), "items": str(len(texts))})
    tmp.rename(path)
    log.info("pre-inference cached", path=str(path), items=len(texts))
    return PreInferred(t.get("pooled"), t.get("hidden"), t.get("mask"), False, key)
