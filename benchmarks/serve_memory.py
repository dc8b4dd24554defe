"""`llmrec bench serve-memory`: a replica's memory with N known users, memory-mapped (format 2) vs read whole
(format 1, every server before it), through the server's own loading code.

For each size it writes one synthetic version per format under --bench.work (random vectors and
histories, no training: only the known-user files matter here) and then, in a fresh process per
(size, format), loads it as a server does (`repository.reader.load_files` + `ModelVersion`) and serves
--bench.requests known-user lookups (id -> row, vector, seen items). It reports the process's resident
memory at each step, split into anonymous memory (the process's own, what grows with users when arrays
are read whole) and file-backed pages (the memory map: shared, clean, dropped by the kernel under
pressure, never more than the pages requests touched).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.reports import markdown_table
from repository import files as F

FORMATS = ("mmap", "whole")


@dataclass
class ServeMemoryConfig:
    users: list[int] = field(default_factory=lambda: [100_000, 1_000_000, 10_000_000])
    dim: int = 32  # known-user vector width (the bench's disk use is ~ users x (4 dim + 45) bytes per format)
    items: int = 1000
    history: int = 10  # mean items per user (uniform 1 .. 2 x history - 1)
    requests: int = 100_000  # known-user lookups after loading, random users
    dtype: Literal["float32", "float16"] = "float32"  # format 2's user vectors
    work: Path = Path("work/serve-memory")  # the synthetic versions (kept between runs of the same size)
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    keep: bool = False  # keep the synthetic versions afterwards
    seed: int = 0


def _rss() -> dict[str, float]:
    """MiB of resident memory: total, anonymous, file-backed (from /proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return {"rss": out.get("VmRSS", 0.0), "anon": out.get("RssAnon", 0.0), "file": out.get("RssFile", 0.0),
            "peak": out.get("VmHWM", 0.0)}


def user_id_strings(n: int, seed: int) -> np.ndarray:
    """Distinct ids in a random order (so that row order is not id order), as fixed-width bytes."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.char.add("user-", perm.astype(str)).astype("S")


def write_version(root: Path, n: int, cfg: ServeMemoryConfig, fmt: str) -> Path:
    """A DSSM-like version (known users only) with `n` users in format 2 ("mmap") or 1 ("whole")."""
    from export.index import IndexParams, build_index, save_index
    from repository.arrays import write_json, write_user_ids
    from repository.manifest import Capabilities, IndexSection, KnownUsers, Manifest
    from repository.versions import file_entries, publish, staging_folder

    model_dir = root / f"users{n}-{fmt}"
    if (model_dir / "1" / F.MANIFEST).is_file():
        return model_dir / "1"
    shutil.rmtree(model_dir, ignore_errors=True)
    rng = np.random.default_rng(cfg.seed)
    with staging_folder(model_dir) as tmp:
        items = rng.normal(size=(cfg.items, cfg.dim)).astype(np.float32)
        np.save(tmp / F.ITEM_VECTORS, items)
        write_json(tmp / F.ITEM_IDS, [f"i{j}" for j in range(cfg.items)])
        write_json(tmp / F.ITEM_TITLES, [""] * cfg.items)
        save_index(build_index(items, IndexParams())[0], tmp / F.ITEMS_INDEX)
        dtype = np.float16 if fmt == "mmap" and cfg.dtype == "float16" else np.float32
        vectors = np.lib.format.open_memmap(tmp / F.USER_VECTORS, mode="w+", dtype=dtype, shape=(n, cfg.dim))
        lengths = rng.integers(1, 2 * cfg.history, size=n)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        step = 1 << 20
        for s in range(0, n, step):
            vectors[s:s + step] = rng.normal(size=(min(step, n - s), cfg.dim))
        for s in range(0, len(indices), step):
            indices[s:s + step] = rng.integers(0, cfg.items, size=min(step, len(indices) - s))
        vectors.flush()
        del vectors
        ids = user_id_strings(n, cfg.seed)
        names = [F.ITEM_VECTORS, F.ITEM_IDS, F.ITEM_TITLES, F.ITEMS_INDEX, F.USER_VECTORS]
        if fmt == "mmap":
            names += write_user_ids(tmp, ids)
            np.save(tmp / F.USER_HISTORY_INDPTR, indptr)
            np.save(tmp / F.USER_HISTORY_INDICES, indices)
            names += [F.USER_HISTORY_INDPTR, F.USER_HISTORY_INDICES]
        else:
            with open(tmp / F.USER_IDS, "w") as f:
                json.dump([bytes(u).decode() for u in ids], f)
            with open(tmp / F.USER_HISTORY, "wb") as f:
                np.savez(f, indptr=indptr, indices=indices)
            names += [F.USER_IDS, F.USER_HISTORY]
        del ids, indices, indptr
        manifest = Manifest(
            name=model_dir.name, kind="tcf", user_tower="dssm", item_tower="id", dim=cfg.dim, num_items=cfg.items,
            num_users=n, capabilities=Capabilities(user_id=True), files=file_entries(tmp, names),
            index=IndexSection("flat", {}), encoders={}, format_version=2 if fmt == "mmap" else 1,
            known_users=KnownUsers(vectors_dtype=np.dtype(dtype).name) if fmt == "mmap" else None,
            source={"synthetic": "benchmarks/serve_memory.py: random vectors and histories"},
        )
        return publish(tmp, model_dir, manifest)


def asked_ids(n: int, requests: int, seed: int) -> list[str]:
    """The ids of `requests` random known users (the writer's ids: "user-" + a permutation of 0..n-1)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [f"user-{perm[r]}" for r in np.random.default_rng(seed + 1).integers(0, n, size=requests)]


def serve_child(version: Path, asked_file: Path) -> dict[str, Any]:
    """Runs in a fresh process: load the version as a server does, serve known-user lookups, measure."""
    from repository.reader import load_files
    from server.model_version import ModelVersion

    asked = json.loads(Path(asked_file).read_text())
    out: dict[str, Any] = {"after_import": _rss()}
    t0 = time.perf_counter()
    files = load_files(version)
    mv = ModelVersion(version.parent.name, files)
    out["load_s"] = time.perf_counter() - t0
    out["after_load"] = _rss()
    out["mapped"] = isinstance(files.user_vectors, np.memmap)
    t0 = time.perf_counter()
    seen = 0
    for user in asked:
        row = mv.user_rows.get(user)
        if row is None:
            raise RuntimeError(f"user {user} not found")
        vec = mv.user_vector(row)
        seen += len(mv.user_seen(row)) + int(vec.shape[0] > 0)
    out["requests"] = len(asked)
    out["requests_s"] = time.perf_counter() - t0
    out["after_requests"] = _rss()
    out["checked"] = seen > 0
    return out


def _measure(version: Path, n: int, cfg: ServeMemoryConfig) -> dict[str, Any]:
    asked = version.parent.parent / f"asked-{n}.json"
    asked.write_text(json.dumps(asked_ids(n, cfg.requests, cfg.seed)))
    cmd = [sys.executable, "-m", "benchmarks.serve_memory", str(version), str(asked)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    asked.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"serve-memory child failed on {version}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _disk_mb(version: Path) -> float:
    user_files = (F.USER_VECTORS, F.USER_ID_KEYS, F.USER_ID_ROWS, F.USER_HISTORY_INDPTR, F.USER_HISTORY_INDICES,
                  F.USER_IDS, F.USER_HISTORY)
    return sum((version / n).stat().st_size for n in user_files if (version / n).is_file()) / 2**20


def run_serve_memory(cfg: ServeMemoryConfig) -> dict[str, Any]:
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad or not cfg.users or min(cfg.users) <= 0:
        raise ValueError(f"--bench.formats {bad} / --bench.users {cfg.users}: formats are {', '.join(FORMATS)}, "
                         "user counts positive")
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in cfg.users:
        for fmt in cfg.formats:
            t0 = time.perf_counter()
            version = write_version(work, n, cfg, fmt)
            write_s = time.perf_counter() - t0
            got = _measure(version, n, cfg)
            rows.append({"users": n, "format": fmt, "disk_mb": _disk_mb(version), "write_s": write_s, **got})
            print(f"serve-memory: {n} users, {fmt}: RSS after load {got['after_load']['rss']:.0f} MiB, "
                  f"after {cfg.requests} requests {got['after_requests']['rss']:.0f} MiB", flush=True)
            if not cfg.keep:
                shutil.rmtree(version.parent, ignore_errors=True)
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    head = ["users", "format", "known-user files MiB", "load s", "RSS after load MiB (anon / file)",
            f"RSS after {c['requests']} requests MiB (anon / file)", "peak MiB", "lookups/s"]
    body = []
    for r in result["rows"]:
        base = r["after_import"]["anon"]
        load, req = r["after_load"], r["after_requests"]
        body.append([r["users"], "memory-mapped (format 2)" if r["format"] == "mmap" else "read whole (format 1)",
                     round(r["disk_mb"]), round(r["load_s"], 2),
                     f"{load['rss']:.0f} ({load['anon'] - base:+.0f} / {load['file']:.0f})",
                     f"{req['rss']:.0f} ({req['anon'] - base:+.0f} / {req['file']:.0f})", round(req["peak"]),
                     round(r["requests"] / max(r["requests_s"], 1e-9))])
    md = markdown_table(head, body)
    md += (f"\nSynthetic versions: {c['dim']}-dim {c['dtype']} user vectors, ~{c['history']} seen items per user, "
           f"{c['items']} items. One fresh process per row loads the version with the server's code "
           "(repository.reader.load_files + server.model_version.ModelVersion) and serves random known users by "
           "id. anon = the process's own memory beyond what it held after its imports; file = pages of "
           "memory-mapped files resident in the process (shared with the page cache, dropped under pressure).\n")
    return md


def main(argv: list[str]) -> int:
    from benchmarks.cli import bench_main

    return bench_main(argv, "serve-memory", ServeMemoryConfig, run_serve_memory, markdown,
                      "Known users at serve time: a replica's memory, memory-mapped (format 2) vs read whole (format 1)")


if __name__ == "__main__":  # the measured child of _measure: `python -m benchmarks.serve_memory VERSION ASKED`
    print(json.dumps(serve_child(Path(sys.argv[1]), Path(sys.argv[2]))))
