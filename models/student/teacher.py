"""The teacher's answers for every training prefix, computed once and cached on disk.

They are the expensive part of distillation: one LM forward pass per prefix (on MovieLens-100K with 8
prefixes per user, ~7,500 rec prompts of up to 128 items through CLLM4Rec), against a student epoch that
costs seconds. The cache file is keyed by the teacher checkpoint's config.json (which holds its weights'
sha256), the split, the prefix table and the prefix settings, so every student run on the same teacher and
prefixes (seeds, loss weights, architectures) reuses it; the time it took is stored beside it and copied
into each student checkpoint that used it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common import logs
from models.cllm4rec.checkpoint import Loaded
from models.cllm4rec.scoring import PromptBuilder
from models.student.config import PrefixConfig
from models.training.checkpoint import CONFIG, atomic_write_json, file_sha256

log = logs.get(__name__)


@dataclass
class Prefixes:
    """Training prefixes: prefix p is the first lengths[p] of user users[p]'s train items in time order."""

    users: np.ndarray  # int64 [P]
    lengths: np.ndarray  # int64 [P]
    ordered: list[np.ndarray]  # per user: train items, oldest first

    def __len__(self) -> int:
        return len(self.users)

    def history(self, p: int) -> np.ndarray:
        return self.ordered[int(self.users[p])][: int(self.lengths[p])]

    def future(self, p: int) -> np.ndarray:
        """The user's later train items: the prefix's ground-truth targets (none for a whole history)."""
        return self.ordered[int(self.users[p])][int(self.lengths[p]):]


def make_prefixes(ordered: list[np.ndarray], cfg: PrefixConfig) -> Prefixes:
    """Per user, `per_user` lengths evenly spaced from `min_length` to the whole train history (always
    included: it is the history the student serves known users from), duplicates dropped."""
    if cfg.per_user < 1 or cfg.min_length < 1:
        raise ValueError(f"prefixes.per_user and prefixes.min_length must be >= 1, got {cfg.per_user}, {cfg.min_length}")
    users, lengths = [], []
    for u, items in enumerate(ordered):
        n = len(items)
        if n == 0:
            continue
        cuts = np.unique(np.round(np.linspace(min(cfg.min_length, n), n, cfg.per_user)).astype(np.int64))
        users += [u] * len(cuts)
        lengths += cuts.tolist()
    return Prefixes(np.asarray(users, dtype=np.int64), np.asarray(lengths, dtype=np.int64), ordered)


@dataclass
class TeacherOutputs:
    vectors: np.ndarray  # float32 [P, dim]: the teacher's user vector of each prefix (score space)
    top_items: np.ndarray  # int64 [P, K]: its top-K items, the prefix's own items excluded, best first
    top_scores: np.ndarray  # float32 [P, K]: their scores


def cache_key(teacher_folder: Path, split_sha: str, prefixes: Prefixes, cfg: PrefixConfig) -> str:
    h = hashlib.sha256()
    h.update(file_sha256(Path(teacher_folder) / CONFIG).encode())
    h.update(split_sha.encode())
    h.update(prefixes.users.tobytes() + prefixes.lengths.tobytes())
    h.update(json.dumps({k: v for k, v in asdict(cfg).items() if k != "batch_size"}, sort_keys=True).encode())
    return h.hexdigest()


@torch.no_grad()
def compute(teacher: Loaded, prefixes: Prefixes, cfg: PrefixConfig, device: torch.device,
            progress: bool) -> TeacherOutputs:
    """One rec prompt per prefix through the teacher, in length-sorted batches."""
    model = teacher.model.to(device).eval()
    prompts = PromptBuilder(teacher.template, teacher.tokenizer.vocab, teacher.max_history,
                            teacher.tokenizer.pad_token_id)
    known = cfg.teacher_user == "known" and model.cfg.user_tokens
    rows = [prompts.rec(int(prefixes.users[p]) if known else None, prefixes.history(p)) for p in range(len(prefixes))]
    items = model.item_matrix().detach().float()
    k = min(cfg.top_k, model.num_items)
    vectors = np.zeros((len(rows), model.vector_dim), dtype=np.float32)
    top_items = np.zeros((len(rows), k), dtype=np.int64)
    top_scores = np.zeros((len(rows), k), dtype=np.float32)
    for idx, batch in tqdm(prompts.batches(rows, cfg.batch_size), desc="teacher prefixes", disable=not progress):
        v = model.user_vectors(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float()
        scores = v @ items.T
        for r, p in enumerate(idx):
            scores[r, torch.as_tensor(prefixes.history(int(p)), device=device)] = -torch.inf
        best = scores.topk(k, dim=1)
        vectors[idx] = v.cpu().numpy()
        top_items[idx] = best.indices.cpu().numpy()
        top_scores[idx] = best.values.cpu().numpy()
    return TeacherOutputs(vectors, top_items, top_scores)


def load_or_compute(teacher: Loaded, prefixes: Prefixes, cfg: PrefixConfig, split_sha: str, cache_dir: Path,
                    device: torch.device, threads: int, progress: bool) -> tuple[TeacherOutputs, dict[str, Any]]:
    """The teacher's outputs for `prefixes` from `cache_dir` when cached, else computed and cached; with
    what they cost (wall seconds, prompts, device) and whether this call computed them."""
    key = cache_key(teacher.folder, split_sha, prefixes, cfg)
    path = Path(cache_dir) / f"teacher-{key[:24]}.npz"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        with np.load(path) as z:
            out = TeacherOutputs(z["vectors"], z["top_items"], z["top_scores"])
        meta = json.loads(meta_path.read_text())
        if out.vectors.shape[0] == len(prefixes):
            log.info("teacher outputs reused", file=str(path), prefixes=len(prefixes), cost_s=meta["cost"]["wall_s"])
            return out, {**meta, "file": str(path), "computed": False}
        log.warning("teacher cache has the wrong number of rows: recomputing", file=str(path))
    t0 = time.perf_counter()
    out = compute(teacher, prefixes, cfg, device, progress)
    wall = time.perf_counter() - t0
    lengths = prefixes.lengths.clip(max=teacher.max_history)
    cost = {"wall_s": wall, "prompts": len(prefixes), "ms_per_prompt": 1000.0 * wall / max(len(prefixes), 1),
            "mean_history_items": float(lengths.mean()) if len(lengths) else 0.0, "device": str(device),
            "threads": threads, "batch_size": cfg.batch_size}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, vectors=out.vectors, top_items=out.top_items, top_scores=out.top_scores)
    os.replace(tmp, path)
    meta = {"key": key, "teacher": str(teacher.folder), "prefixes": asdict(cfg), "cost": cost}
    atomic_write_json(meta_path, meta)
    log.info("teacher outputs computed", file=str(path), **{k: round(v, 3) if isinstance(v, float) else v
                                                           for k, v in cost.items()})
    return out, {**meta, "file": str(path), "computed": True}
