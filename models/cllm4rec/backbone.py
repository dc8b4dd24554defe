"""The causal LM under CLLM4Rec: any local HF folder, or the default SmolLM2 GGUF.

GGUF loading de-quantizes every tensor (tens of seconds) and a GGUF-loaded model cannot
`save_pretrained` in this transformers version, so the first load rebuilds a plain fp32 model
from its config, copies the state dict and saves it as an ordinary HF folder in a cache keyed
by the GGUF file's size and mtime; later loads read that folder in about a second.

The LM is loaded frozen in fp32; `models.training.capacity` then applies the levers (depth,
unfrozen top blocks, LoRA) the run asks for. Mixed precision is the training engine's autocast,
never a cast of the stored weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from common import logs
from common.assets import SMOLLM2_GGUF, AssetMissing, smollm2_dir, work_dir
from models.training.capacity import CapacityConfig, apply_capacity
from models.training.checkpoint import lm_identity

log = logs.get(__name__)


@dataclass
class BackboneConfig:
    # A local HF causal-LM folder, or a folder holding `gguf_file`. None: the installed SmolLM2-135M GGUF.
    path: Path | None = None
    gguf_file: str | None = None  # file name inside `path` (None with path=None means SMOLLM2_GGUF)
    cache_dir: Path | None = None  # where de-quantized GGUF models are cached (None: work/cache/backbones)


def resolve(cfg: BackboneConfig) -> tuple[Path, str | None]:
    if cfg.path is None:
        return smollm2_dir(), cfg.gguf_file or SMOLLM2_GGUF
    path = Path(cfg.path)
    if not path.is_dir():
        raise AssetMissing(f"backbone path {path} is not a folder; give a local HF causal-LM folder")
    if cfg.gguf_file and not (path / cfg.gguf_file).is_file():
        raise AssetMissing(f"GGUF file {cfg.gguf_file!r} not found in {path}")
    return path, cfg.gguf_file


def reference(cfg: BackboneConfig) -> dict[str, Any]:
    """What a checkpoint records about its backbone: the source (GGUF file or folder) and its content hash."""
    path, gguf = resolve(cfg)
    return {**lm_identity(path / gguf if gguf else path), "folder": str(path), "gguf_file": gguf}


def _gguf_cache_folder(path: Path, gguf_file: str, cache_dir: Path | None) -> Path:
    st = (path / gguf_file).stat()
    key = f"{Path(gguf_file).stem}-{st.st_size}-{st.st_mtime_ns}"
    return Path(cache_dir or work_dir() / "cache" / "backbones") / key


def _convert_gguf(path: Path, gguf_file: str, target: Path) -> None:
    log.info("de-quantizing GGUF backbone (first load only)", file=str(path / gguf_file), cache=str(target))
    loaded = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may be absent from one side; anything else is a real mismatch.
    bad = [k for k in [*missing, *unexpected] if k != "lm_head.weight"]
    if bad:
        raise RuntimeError(f"GGUF -> HF conversion mismatch: {bad[:5]}")
    # A folder of this process's own: two trainings started together both convert, and a shared ".tmp"
    # name let one delete or rename the other's half-written files.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg_json = json.loads(cfg_path.read_text())
        cfg_json.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg_json, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written folder left in the cache
        raise
    publish_folder(tmp, target)


def publish_folder(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; where another process got there first, keep theirs (same
    content: both converted the same file) and drop ours."""
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def plain_hf_folder(path: Path, gguf_file: str, cache_dir: Path | None = None) -> Path:
    """A GGUF model as a plain fp32 HF folder, converted once and cached: GGUF loading de-quantizes
    for ~30 s on every load, the cached folder reloads in under a second. Shared with TCF's item tower."""
    folder = _gguf_cache_folder(path, gguf_file, cache_dir)
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(path, gguf_file, folder)
    return folder


def load_backbone(cfg: BackboneConfig, capacity: CapacityConfig | None = None
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The backbone frozen in fp32 with `capacity`'s levers applied (eval mode), and its tokenizer."""
    path, gguf = resolve(cfg)
    if gguf:
        path = plain_hf_folder(path, gguf, cfg.cache_dir)
    if not (path / "config.json").is_file():
        raise AssetMissing(f"{path} has no config.json: not a Hugging Face model folder; give a local HF "
                           "causal-LM folder (--backbone.path)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    model.requires_grad_(False)
    return apply_capacity(model, capacity or CapacityConfig()), tokenizer
