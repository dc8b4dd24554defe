"""Known-user vectors computed in fixed-size shards that survive a kill, then assembled into the version.

At 100k+ users the known-user pass is the longest part of an export (one LM pass per prompt), so it
is done in shards of `shard_size` users written to a work folder beside the versions
(`<repository>/<name>/.export-work/<key>/`). The key hashes everything the vectors depend on (the
checkpoint, the exported graph, the prompts, the shard size), so a changed config never reuses a
stale shard, and a re-run after a kill computes only the shards that are missing.

The engine-independent part is `ShardStore` + a `BatchFn` (user rows -> vectors). `compute_shards`
is the single-process engine; another engine (e.g. Ray Data `map_batches` with one `OrtBatchFn` per
actor) only has to call `store.write(shard, batch_fn(store.rows(shard)))` for the shards it owns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common import logs
from common.cpu import BF16_FLAGS
from common.openvino import compile_onnx
from export.flops import feed_tokens
from models.bundle import KnownUserInputs
from models.onnx_trace import session
from repository import files as F

log = logs.get(__name__)

BatchFn = Callable[[np.ndarray], np.ndarray]  # user rows int64 [n] -> float32 [n, dim]
SHARD_FORMAT = 1  # bump when a shard's content changes meaning: old shards are then never read


def work_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({**parts, "shard_format": SHARD_FORMAT}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:24]


@dataclass
class ShardStore:
    """Shard i holds the vectors of users [i * shard_size, min((i + 1) * shard_size, count))."""

    folder: Path
    count: int
    dim: int
    shard_size: int

    @classmethod
    def open(cls, model_dir: Path, parts: dict[str, Any], count: int, dim: int, shard_size: int) -> ShardStore:
        if shard_size <= 0:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        key = work_key({**parts, "count": count, "dim": dim, "shard_size": shard_size})
        folder = Path(model_dir) / F.EXPORT_WORK / key
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "key.json"
        if not meta.is_file():
            meta.write_text(json.dumps({**parts, "count": count, "dim": dim, "shard_size": shard_size},
                                       indent=2, default=str) + "\n")
        return cls(folder, count, dim, shard_size)

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def rows(self, shard: int) -> np.ndarray:
        return np.arange(shard * self.shard_size, min((shard + 1) * self.shard_size, self.count), dtype=np.int64)

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.npy"

    def done(self, shard: int) -> bool:
        return self.path(shard).is_file()

    def pending(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.done(i)]

    def write(self, shard: int, vectors: np.ndarray) -> None:
        """Atomic: a shard file exists only complete (a kill mid-write leaves a .tmp, ignored and redone)."""
        want = (len(self.rows(shard)), self.dim)
        if vectors.shape != want or not np.isfinite(vectors).all():
            raise ValueError(f"shard {shard}: vectors of shape {vectors.shape} (or non-finite); expected {want}")
        tmp = self.folder / f".shard-{shard:06d}.{os.getpid()}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32))
        os.replace(tmp, self.path(shard))

    def read(self, shard: int) -> np.ndarray:
        return np.load(self.path(shard), mmap_mode="r")

    def assemble(self, out: Path, dtype: type = np.float32) -> np.ndarray:
        """The version's user-vectors file written shard by shard (never all in memory); returns it mapped."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{len(missing)} of {self.num_shards} known-user shards are not computed "
                               f"(first: {missing[0]}): run the engine on them first")
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(self.count, self.dim))
        for i in range(self.num_shards):
            r = self.rows(i)
            if len(r):
                arr[r[0]:r[-1] + 1] = self.read(i)
        arr.flush()
        del arr
        return np.load(out, mmap_mode="r")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def compute_shards(store: ShardStore, shard_ids: Iterable[int], batch_fn: BatchFn, progress: bool = True) -> int:
    """The single-process engine: computes the given shards that are not done yet, in order, with a
    progress bar over users; returns how many shards it computed."""
    todo = [i for i in shard_ids if not store.done(i)]
    skipped = store.num_shards - len(todo)
    if skipped:
        log.info("known-user shards reused", done=skipped, todo=len(todo), folder=str(store.folder))
    with tqdm(total=int(sum(len(store.rows(i)) for i in todo)), desc="known users", unit="user",
              disable=not progress) as bar:
        for i in todo:
            rows = store.rows(i)
            store.write(i, np.asarray(batch_fn(rows), dtype=np.float32))
            bar.update(len(rows))
    return len(todo)


class OrtBatchFn:
    """User rows -> vectors through ONNX Runtime on the exported fp32 graph, a batch of prompts per run.

    The session is opened on first use, so the object pickles cheaply (one per Ray actor)."""

    engine, precision = "onnxruntime-cpu", "fp32"

    def __init__(self, graph: Path, inputs: KnownUserInputs, output_name: str, batch_size: int = 32,
                 threads: int = 1) -> None:
        self.graph, self.inputs, self.output_name = Path(graph), inputs, output_name
        self.batch_size, self.threads = batch_size, threads
        self._session: Any = None
        self.positions = self.tokens = 0  # prompt positions computed (padding included) and real tokens

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    def _open(self) -> Any:
        return session(self.graph, self.threads)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run([self.output_name], feeds)[0]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = self._open()
        out: np.ndarray | None = None
        for idx, feeds in self.inputs.batches(rows, self.batch_size):
            got = self._run(feeds)
            positions, tokens = feed_tokens(feeds)
            self.positions += positions
            self.tokens += tokens
            if out is None:
                out = np.empty((len(rows), got.shape[1]), dtype=np.float32)
            out[idx] = got
        if out is None:
            raise ValueError("no known users in this shard")
        return out


class OvBf16BatchFn(OrtBatchFn):
    """The same batches through OpenVINO in bf16, on the same graph: the known-user pass is bound by
    matrix-multiply FLOPs, which a CPU with AMX or avx512_bf16 does natively in bf16 (OpenVINO bf16 ran
    2.5-4.9x ONNX Runtime fp32 on an AMX Xeon, docs/performance.md). Its vectors differ from fp32 by
    bf16 rounding, so the exporter adopts it only behind a measured gate (export/writer.py)."""

    engine, precision = "openvino-cpu", "bf16"

    def _open(self) -> Any:
        compiled = compile_onnx(self.graph, "bf16", self.threads)
        return compiled, compiled.create_infer_request()  # the request is used by this one caller only

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        compiled, request = self._session
        return np.array(request.infer(feeds)[compiled.outputs[0]], dtype=np.float32)


def pass_precision(asked: str, cpu_flags: frozenset[str], openvino: bool) -> tuple[str, str]:
    """(precision, why) of the known-user pass for `--user-vectors.precision` on this CPU. bf16 only
    where the CPU multiplies bf16 natively: elsewhere OpenVINO emulates it, 44-53x slower than fp32."""
    native = bool(cpu_flags & BF16_FLAGS)
    if asked == "fp32":
        return "fp32", "asked for fp32"
    if asked == "bf16":
        if not native:
            raise ValueError("--user-vectors.precision bf16: this CPU has no native bf16 (amx_bf16 or avx512_bf16 "
                             "flag), where OpenVINO emulates it 44-53x slower than fp32; use fp32 or auto")
        if not openvino:
            raise ValueError("--user-vectors.precision bf16 runs on OpenVINO, which is not installed "
                             "(pip install openvino); use fp32 or auto")
        return "bf16", "asked for bf16"
    if asked != "auto":
        raise ValueError(f"--user-vectors.precision {asked!r}; accepted: auto, fp32, bf16")
    if not native:
        return "fp32", "auto: no native bf16 on this CPU"
    if not openvino:
        return "fp32", "auto: native bf16 but OpenVINO is not installed"
    flag = sorted(cpu_flags & BF16_FLAGS)[0]
    return "bf16", f"auto: {flag} on this CPU and OpenVINO installed"
