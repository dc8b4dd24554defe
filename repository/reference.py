"""Reference inputs and fp32 outputs of an encoder, stored in the version folder
(`reference_<encoder>.npz`) so that a server can check any inference engine against them at load
(server/gate.py): cosine of the outputs, overlap of the resulting top-20 recommendations, and, for
the user encoder, the probe metric on real users with held-out items.

Format (numpy npz, no pickles): `case{i}.{input}` and `case{i}.output` for the parity sample inputs;
`probe{j}.{input}` and `probe{j}.output` for batches of probe users, with their held-out items and
already-seen items as CSR arrays `probe.targets_indptr/indices`, `probe.exclude_indptr/indices`.
The torch-free reader is used by the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repository.manifest import EncoderSpec


@dataclass
class ReferenceData:
    cases: list[dict[str, np.ndarray]]
    outputs: list[np.ndarray]
    probe_cases: list[dict[str, np.ndarray]] = field(default_factory=list)
    probe_outputs: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    exclude: list[np.ndarray] = field(default_factory=list)
    metric: str | None = None  # e.g. "recall@20", "hr@10"


def _csr(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    return indptr, indices


def _rows(indptr: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
    return [indices[indptr[i]:indptr[i + 1]] for i in range(len(indptr) - 1)]


def write_reference(path: Path, data: ReferenceData) -> dict[str, object]:
    """Writes the npz; returns the manifest entry describing it."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, cases, outputs in (("case", data.cases, data.outputs), ("probe", data.probe_cases, data.probe_outputs)):
        for i, (feeds, out) in enumerate(zip(cases, outputs, strict=True)):
            arrays.update({f"{prefix}{i}.{k}": np.asarray(v) for k, v in feeds.items()})
            arrays[f"{prefix}{i}.output"] = np.asarray(out, dtype=np.float32)
    if data.probe_cases:
        arrays["probe.targets_indptr"], arrays["probe.targets_indices"] = _csr(data.targets)
        arrays["probe.exclude_indptr"], arrays["probe.exclude_indices"] = _csr(data.exclude)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return {"file": Path(path).name, "cases": len(data.cases), "probe_batches": len(data.probe_cases),
            "probe_users": len(data.targets), "metric": data.metric, "source": "pytorch fp32"}


def encoder_reference(version_dir: Path, spec: EncoderSpec) -> ReferenceData | None:
    """An encoder's reference data as its manifest entry names it; None for a version exported without."""
    return (read_reference(Path(version_dir) / spec.reference_file, (spec.reference or {}).get("metric"))
            if spec.reference_file else None)


def read_reference(path: Path, metric: str | None = None) -> ReferenceData:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def group(prefix: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
        cases, outputs = [], []
        i = 0
        while f"{prefix}{i}.output" in arrays:
            head = f"{prefix}{i}."
            cases.append({k[len(head):]: v for k, v in arrays.items() if k.startswith(head) and k != head + "output"})
            outputs.append(arrays[head + "output"])
            i += 1
        return cases, outputs

    cases, outputs = group("case")
    probe_cases, probe_outputs = group("probe")
    data = ReferenceData(cases, outputs, probe_cases, probe_outputs, metric=metric)
    if probe_cases:
        data.targets = _rows(arrays["probe.targets_indptr"], arrays["probe.targets_indices"])
        data.exclude = _rows(arrays["probe.exclude_indptr"], arrays["probe.exclude_indices"])
    return data
