"""The hand-off from a trained checkpoint to the exporter.

Each model package turns its checkpoint into a ServingBundle: plain torch modules for the
encoders (with real sample inputs for the parity check), the item and known-user vectors, and
the kind-specific facts the server needs (e.g. CLLM4Rec's prompt template as token ids). The
exporter knows nothing else about the models; see docs/model-repository.md for what it writes.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

# checkpoint config.json "kind" -> module with `load_bundle(checkpoint_dir) -> ServingBundle`
BUNDLE_LOADERS = {
    "cllm4rec": "models.cllm4rec.bundle",
    "tcf": "models.tcf.bundle",
    "student": "models.student.bundle",
}


@dataclass
class EncoderExport:
    """A torch module whose forward(*inputs) returns one float32 tensor [batch, dim]."""

    module: torch.nn.Module
    input_names: list[str]
    output_name: str
    # ONNX dynamic axes, e.g. {"input_ids": {0: "batch", 1: "length"}, "user_vector": {0: "batch"}}
    dynamic_axes: dict[str, dict[int, str]]
    # Real inputs for the parity check: several batch sizes (1 and >1) and lengths.
    sample_inputs: list[tuple[torch.Tensor, ...]]


@dataclass
class QualityProbe:
    """Validation users with their valid items, to measure what quantization or an approximate index costs.

    `encoder_inputs[i]` is one batch for `user_encoder`; its rows are the probed users, in the order of
    `exclude` and `targets`.
    """

    encoder_inputs: list[tuple[torch.Tensor, ...]]
    exclude: list[np.ndarray]  # per probed user: item rows to mask (their observed items)
    targets: list[np.ndarray]  # per probed user: its validation item rows (never test: the gate must not see it)
    metric: str  # e.g. "recall@20" or "hr@10"
    # the probed users' known-user rows, when they are known users whose served vector is what the encoder
    # computes from these inputs: the exporter then measures float16 known-user vectors on them too
    users: np.ndarray | None = None


class KnownUserInputs(Protocol):
    """Known users' user-encoder inputs, built a batch at a time and never all at once: the exporter runs
    them through the exported fp32 graph in resumable shards (export/user_vectors.py), so the vectors
    served for a known user are the graph's own output for that user's prompt."""

    count: int  # known users (rows 0..count-1, the order of ServingBundle.user_ids)

    def key(self) -> str:
        """What the inputs depend on besides the checkpoint and the graph (part of the shard-cache key)."""
        ...

    def batches(self, users: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(positions in `users`, feeds by graph input name) per batch of at most `batch_size` users."""
        ...


@dataclass
class ServingBundle:
    kind: str  # a model kind of repository.kinds.KINDS: "cllm4rec" | "tcf"
    user_tower: str  # "lm" | "sasrec" | "dssm"
    item_tower: str  # "id" | "text" | "hybrid" (text vector + trained ID part)
    dim: int
    item_ids: list[str]
    item_vectors: np.ndarray  # float32 [num_items, dim]
    item_titles: list[str]
    user_ids: list[str]
    # float32 [num_users, dim], the vector each known user is served with; None: computed by the exporter
    # from `known_user_inputs` through the exported graph
    user_vectors: np.ndarray | None
    user_histories: list[np.ndarray]  # per known user: item rows they have seen (excluded from their recommendations)
    encoders: dict[str, EncoderExport]  # "user_encoder" and/or "item_encoder"
    model_config: dict[str, Any]  # kind-specific manifest section (repository.manifest.SECTIONS: "cllm4rec", "tcf")
    assets: dict[str, Path] = field(default_factory=dict)  # extra files copied as-is, e.g. tokenizer.json
    probe: QualityProbe | None = None
    known_user_inputs: KnownUserInputs | None = None
    # CLLM4Rec: float32 [num_users + 1, hidden], each known user's collaborative row then the anonymous
    # row, fed to the user encoder beside the prompt (a data file, never inside the graph)
    user_rows: np.ndarray | None = None


def checkpoint_kind(checkpoint_dir: Path) -> str:
    cfg_path = Path(checkpoint_dir) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a checkpoint: config.json is missing")
    kind = json.loads(cfg_path.read_text()).get("kind")
    if kind not in BUNDLE_LOADERS:
        raise ValueError(f"{cfg_path}: unknown model kind {kind!r}; accepted: {', '.join(BUNDLE_LOADERS)}")
    return kind


def load_bundle(checkpoint_dir: Path, known_users: bool = True) -> ServingBundle:
    """known_users=False leaves `user_vectors` empty: benchmarks need only the encoders and item
    vectors, and precomputing every known user costs minutes for an LM user encoder."""
    module = importlib.import_module(BUNDLE_LOADERS[checkpoint_kind(checkpoint_dir)])
    return module.load_bundle(Path(checkpoint_dir), known_users=known_users)
