"""The exporter's settings (`llmrec export` flags), grouped like the training configs: the index
(`--index.type hnsw --index.ef-search 256`), its recall check, int8 quantization, the parity check
and the ONNX graph. Torch-free, so tooling can read them cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from export.index import IndexParams


@dataclass
class RecallCheck:
    """An approximate index is measured against exact search on real user vectors before it is written."""

    k: int = 100  # recall@k (clamped to num_items)
    users: int = 1000  # real user vectors sampled for that measurement
    # Below this recall the export fails and nothing is written: HNSW over inner products degrades
    # badly when item norms vary. 0 accepts any.
    min_recall: float = 0.9


@dataclass
class QuantizeConfig:
    mode: Literal["none", "int8"] = "none"
    min_overlap: float = 0.95  # refuse int8 below this top-20 overlap with fp32
    max_metric_drop: float = 0.01  # ... or when the probe metric drops more than this (relative) and 2 paired SEs


@dataclass
class UserVectorsConfig:
    """Known users' vectors: how they are stored and how the exporter computes them.

    fp16 halves the file a replica maps; it is measured like int8 quantization (top-20 overlap with fp32
    on sampled known users, and the probe metric) and refused, keeping fp32, below these thresholds.
    Vectors an encoder computes (CLLM4Rec) run through the exported graph in shards of `shard_size`
    users under <repository>/<name>/.export-work/: a killed export re-run with the same checkpoint and
    settings computes only the missing shards. That pass is bound by matrix-multiply FLOPs, so on a CPU
    that multiplies bf16 natively it can run in bf16 (OpenVINO), measured against fp32 before the pass
    with the same thresholds on `check_users` sampled known users and the probe, else in fp32."""

    dtype: Literal["fp32", "fp16"] = "fp32"  # how the vectors are stored
    min_overlap: float = 0.95  # refuse fp16 storage / the bf16 pass below this top-20 overlap with fp32
    max_metric_drop: float = 0.01  # ... or when the probe metric drops more than this (relative) and 2 paired SEs
    # the known-user pass: fp32 (ONNX Runtime), bf16 (OpenVINO; needs amx_bf16 or avx512_bf16, else an
    # error), auto = bf16 where the CPU has one of those flags and OpenVINO is installed, else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    check_users: int = 256  # known users the bf16 gate compares with fp32 (plus the probe's users)
    shard_size: int = 4096  # users per shard (the unit of resume)
    batch_size: int = 32  # prompts per encoder run


@dataclass
class RayConfig:
    """`--engine ray`: the known-user shards computed by Ray Data (export/ray_engine.py)."""

    # "": start a local Ray instance for this export (and stop it after); "auto" or "ray://host:10001":
    # join a running cluster, whose workers run the same llmrec install and can read the repository
    address: str = ""
    workers: int = 2  # actors, each with its own ONNX Runtime session of --threads threads
    cpus_per_worker: float = 1.0  # Ray CPUs each actor reserves


@dataclass
class ParityConfig:
    """ONNX Runtime vs PyTorch (fp32): max abs error <= atol + rtol * max |output|, identical top-k."""

    atol: float = 1e-4
    rtol: float = 1e-5
    k: int = 20


@dataclass
class GraphConfig:
    ort_optimize: Literal["none", "basic", "extended"] = "basic"  # offline ORT graph optimization, kept if parity holds
    opset: int = 17


@dataclass
class ExportConfig:
    checkpoint: Path | None = None  # checkpoint folder (config.json + weights), read with models.bundle.load_bundle
    repository: Path | None = None  # model repository root; the version goes to <repository>/<name>/<n>/
    name: str = ""  # model name in the repository
    index: IndexParams = field(default_factory=IndexParams)
    recall: RecallCheck = field(default_factory=RecallCheck)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    user_vectors: UserVectorsConfig = field(default_factory=UserVectorsConfig)
    threads: int = 1  # torch / ORT threads while exporting
    # who computes the known users' vectors through the exported graph: "local" (this process) or
    # "ray" (Ray Data across a cluster; pip install 'llmrec[cluster]'); both write the same files
    engine: Literal["local", "ray"] = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    seed: int = 0  # seeds the sample of users whose queries check the index's recall against exact search
    # Probe users whose encoder inputs and PyTorch fp32 outputs are stored with the version, so that a
    # server can check each inference engine (e.g. OpenVINO bf16) on real users before it serves.
    reference_users: int = 64
    # Fold the model's item journal (<repository>/<name>/items.journal: items added while serving) into
    # this version's catalogue, encoded by the new item tower; servers then replay only newer records.
    fold_journal: bool = False
    # Where the servers keep the item journals (their --journal): "" = the file beside the versions, or
    # redis://HOST:PORT/DB for a Redis stream per model.
    journal: str = ""
    report: bool = True  # also write ./llmrec-results/export-<name>.json/.md
