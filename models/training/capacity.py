"""How much of a pretrained LM trains: LoRA adapters, the top N blocks, and how many blocks are kept.

The default (every LM weight frozen, every block kept) is the paper-faithful CLLM4Rec / TCF
setting. The levers, applied in this order to a frozen LM:
- depth K: keep only the first K blocks. Cost per token is linear in depth, and middle layers of
  decoder LMs have served recommendation better than the last in earlier ML-100K measurements.
- LoRA (peft): rank-r adapters on the named linear modules of the chosen blocks; merged into the
  weights before export, so the served graph is the plain LM.
- unfreeze_top N: the top N of the kept blocks train in full (with LoRA too, their adapters train
  beside their own weights).
A checkpoint stores only the LM tensors that trained (adapters or unfrozen blocks), by their
parameter names; the frozen rest is rebuilt from the referenced LM with the same levers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn


@dataclass
class CapacityConfig:
    depth: int = 0  # keep only the first K transformer blocks; 0 keeps all (the paper's setting)
    unfreeze_top: int = 0  # the top N kept blocks train in full; 0 keeps the LM frozen
    lora_rank: int = 0  # >0 adds LoRA adapters of this rank (peft) to the frozen LM
    lora_alpha: float = 16.0  # LoRA scaling numerator (the update is scaled by alpha / rank)
    lora_dropout: float = 0.0  # dropout on the adapters' input while training
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # module names that get adapters (GPT-2: c_attn)
    lora_layers: tuple[int, ...] = ()  # indices of the kept blocks that get adapters; empty = all

    @property
    def frozen(self) -> bool:
        return self.unfreeze_top == 0 and self.lora_rank == 0


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of any HF LM: Llama-style, BERT-style or GPT-2-style."""
    base = getattr(model, "base_model", model)
    for path in ("layers", "encoder.layer", "h"):
        owner = base
        for attr in path.split("."):
            owner = getattr(owner, attr, None)
        if isinstance(owner, nn.ModuleList):
            return owner
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}: supported are "
                     "Llama-style (layers), BERT-style (encoder.layer) and GPT-2-style (h) models")


def keep_first_blocks(model: nn.Module, depth: int) -> None:
    """Drops every block after the first `depth` (in place), and says so in the model's config."""
    layers = blocks(model)
    if not 0 < depth <= len(layers):
        raise ValueError(f"depth must be in 1..{len(layers)} for this model, got {depth}")
    del layers[depth:]
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(model.config, name):
            setattr(model.config, name, depth)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:depth]


def apply_capacity(model: nn.Module, cfg: CapacityConfig) -> nn.Module:
    """Applies the levers to a frozen LM in place (see the module docstring); returns it."""
    if cfg.depth:
        keep_first_blocks(model, cfg.depth)
    layers = blocks(model)
    if not 0 <= cfg.unfreeze_top <= len(layers):
        raise ValueError(f"unfreeze_top must be in 0..{len(layers)} (the kept blocks), got {cfg.unfreeze_top}")
    if cfg.lora_rank > 0:
        from peft import LoraConfig, inject_adapter_in_model

        bad = [i for i in cfg.lora_layers if not 0 <= i < len(layers)]
        if bad:
            raise ValueError(f"lora_layers {bad} out of range 0..{len(layers) - 1}")
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), layers_to_transform=list(cfg.lora_layers) or None)
        inject_adapter_in_model(lora, model)  # (it also freezes everything but the adapters)
    for block in list(layers)[len(layers) - cfg.unfreeze_top :]:
        block.requires_grad_(True)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA adapter merged into its base weights and removed, so it is
    a plain HF model again (what ONNX export traces); the original keeps its adapters. A model
    without adapters is returned as it is (no copy of a large LM for nothing)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
    return plain


def trained_lm_names(model: nn.Module, prefix: str = "") -> list[str]:
    """Names of the LM parameters that train (adapters, unfrozen blocks), as the checkpoint keys them."""
    return [prefix + n for n, p in model.named_parameters() if p.requires_grad]
