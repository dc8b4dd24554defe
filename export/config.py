"""The exporter's settings (`llmrec export` flags); torch-free so tooling can read them cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from export.index import IndexParams


@dataclass
class ExportConfig:
    checkpoint: Path | None = None  # checkpoint folder (config.json + weights), read with models.bundle.load_bundle
    repository: Path | None = None  # model repository root; the version goes to <repository>/<name>/<n>/
    name: str = ""  # model name in the repository
    index: Literal["flat", "ivf", "hnsw", "ivfpq"] = "flat"
    nlist: int = 0  # IVF cells; 0 = sqrt(num_items) capped at num_items/39
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 200
    pq_m: int = 8
    pq_nbits: int = 8
    recall_k: int = 100  # recall@K of approximate indexes vs exact search (clamped to num_items)
    recall_users: int = 1000  # real user vectors sampled for that measurement
    # An approximate index below this recall@recall_k vs exact search is refused (the export fails and
    # nothing is written): HNSW over inner products degrades badly when item norms vary. 0 accepts any.
    min_index_recall: float = 0.9
    quantize: Literal["none", "int8"] = "none"
    quantize_min_overlap: float = 0.95  # refuse int8 below this top-20 overlap with fp32
    quantize_max_metric_drop: float = 0.01  # ... or when the probe metric drops more than this (relative)
    parity_atol: float = 1e-4  # ONNX Runtime vs PyTorch (fp32): max abs error <= atol + rtol * max |output|
    parity_rtol: float = 1e-5
    parity_k: int = 20  # top-K lists that must be identical
    ort_optimize: Literal["none", "basic", "extended"] = "basic"  # offline ORT graph optimization, kept if parity holds
    opset: int = 17
    threads: int = 1  # torch / ORT threads while exporting
    seed: int = 0
    # Probe users whose encoder inputs and PyTorch fp32 outputs are stored with the version, so that a
    # server can check each inference engine (e.g. OpenVINO bf16) on real users before it serves.
    reference_users: int = 64
    # Fold the model's item journal (<repository>/<name>/items.journal: items added while serving) into
    # this version's catalogue, encoded by the new item tower; servers then replay only newer records.
    fold_journal: bool = False
    report: bool = True  # also write ./llmrec-results/export-<name>.json/.md

    def index_params(self) -> IndexParams:
        return IndexParams(type=self.index, nlist=self.nlist, nprobe=self.nprobe, hnsw_m=self.hnsw_m,
                           ef_search=self.ef_search, ef_construction=self.ef_construction,
                           pq_m=self.pq_m, pq_nbits=self.pq_nbits)
