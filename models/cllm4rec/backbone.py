"""The frozen causal LM under CLLM4Rec: any local HF folder, or the default SmolLM2 GGUF.

GGUF loading de-quantizes every tensor (tens of seconds) and a GGUF-loaded model cannot
`save_pretrained` in this transformers version, so the first load rebuilds a plain fp32 model
from its config, copies the state dict and saves it as an ordinary HF folder in a cache keyed
by the GGUF file's size and mtime; later loads read that folder in about a second.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llmrec import logs
from llmrec.assets import SMOLLM2_GGUF, smollm2_dir, work_dir

log = logs.get(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class BackboneConfig:
    # A local HF causal-LM folder, or a folder holding `gguf_file`. None: the installed SmolLM2-135M GGUF.
    path: Path | None = None
    gguf_file: str | None = None  # file name inside `path` (None with path=None means SMOLLM2_GGUF)
    dtype: Literal["float32", "bfloat16"] = "float32"  # bf16 only pays on CPUs with AMX / avx512_bf16
    threads: int = 1  # torch intra-op threads; 1 is fastest when other processes share the cores
    cache_dir: Path | None = None  # where de-quantized GGUF models are cached (None: work/cache/backbones)


def resolve(cfg: BackboneConfig) -> tuple[Path, str | None]:
    if cfg.path is None:
        return smollm2_dir(), cfg.gguf_file or SMOLLM2_GGUF
    path = Path(cfg.path)
    if not path.is_dir():
        raise FileNotFoundError(f"backbone path {path} is not a folder; give a local HF causal-LM folder")
    if cfg.gguf_file and not (path / cfg.gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file {cfg.gguf_file!r} not found in {path}")
    return path, cfg.gguf_file


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(path: Path, gguf_file: str | None) -> str:
    """sha256 over the weight file(s), so a checkpoint can refuse a different backbone."""
    if gguf_file:
        return file_sha256(path / gguf_file)
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {path}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def reference(cfg: BackboneConfig) -> dict[str, Any]:
    """What a checkpoint records about its backbone."""
    path, gguf = resolve(cfg)
    return {"path": str(path), "gguf_file": gguf, "sha256": weights_fingerprint(path, gguf), "dtype": cfg.dtype}


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
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg_json, indent=2))
    tmp.rename(target)


def plain_hf_folder(path: Path, gguf_file: str, cache_dir: Path | None = None) -> Path:
    """A GGUF model as a plain fp32 HF folder, converted once and cached: GGUF loading de-quantizes
    for ~30 s on every load, the cached folder reloads in under a second. Shared with TCF's item tower."""
    folder = _gguf_cache_folder(path, gguf_file, cache_dir)
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(path, gguf_file, folder)
    return folder


def load_backbone(cfg: BackboneConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The backbone in eval mode with every parameter frozen, and its tokenizer."""
    torch.set_num_threads(max(1, cfg.threads))
    path, gguf = resolve(cfg)
    if gguf:
        path = plain_hf_folder(path, gguf, cfg.cache_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if cfg.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer
