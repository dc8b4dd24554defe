"""`llmrec bench train-memory`: what a CLLM4Rec training step of the default schedule needs in memory at
100k, 1M and 10M users (20k items), per mode, and whether that fits one GPU, measured on a CPU.

Two parts, kept apart in the report:
- measured: one real optimizer step (`Loop.step`, the first) per mode on the schedule's model (SmolLM2, LoRA on 8
  blocks) at the bench's batch (every prompt at the longest history), on small synthetic data with the
  target number of items, under torch's memory profiler (CPU). From its timeline: the peak of what the
  step allocates besides parameters, gradients and optimizer state (activations, autograd buffers,
  temporaries), and which tensors get a gradient (dense, or sparse with how many bytes) and optimizer
  state. None of these depends on the number of users: a batch reads 20 prompts' rows, whatever the table.
- arithmetic: at each size the model is built on the `meta` device by the model's own constructor (no
  memory), and every tensor is counted from its real shape: weights (frozen and trained), gradients (a
  dense gradient is the tensor's size; a sparse one the bytes measured above), AdamW's two moments for
  every tensor that got state (row-wise Adam keeps them full-size too), and torch AdamW's temporaries
  on a GPU (its foreach path, the CUDA default, takes sqrt(v) of a whole group at once: the largest
  group of densely stepped tensors). Plus the measured activations. Not counted: the CUDA context and
  allocator slack (a few hundred MiB to a few GiB), data loading and validation.
"""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.cllm4rec_step_scale import VARIANTS, StepScaleConfig, make_case, size_data
from common.assets import work_dir
from models.cllm4rec import backbone as bb
from models.cllm4rec.model import CLLM4Rec
from models.cllm4rec.tokens import IdVocab
from models.reports import invoking_command
from models.training.devices import cpu_model

# the bench's names of the step-scale bench's variants (same flags)
MODES = {"dense": "dense (default below the scale thresholds)", "sparse+sampled": "sparse-ids + item-negatives",
         "sparse+sampled+adagrad": "sparse-ids + item-negatives + row-wise Adagrad",
         "sparse+sampled+no-user": "no-user-tokens + sparse-ids + item-negatives"}
STATE = ("PARAMETER", "GRADIENT", "OPTIMIZER_STATE")  # the timeline's categories counted by arithmetic instead
GIB = 2**30


@dataclass
class TrainMemoryConfig:
    users: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)  # sizes counted from shapes
    items: int = 20_000  # the catalogue at every size (and of the measured step's data)
    measured_users: int = 2_000  # users of the synthetic data the step is measured on (rows are a batch's)
    measured_interactions: int = 400_000  # enough for 20 users with a full (128-item) history
    modes: tuple[str, ...] = tuple(MODES)  # keys of benchmarks.cllm4rec_step_scale.VARIANTS
    negatives: int = 1024  # --recipe.item-negatives of the sampled modes
    batch_size: int = 20
    gpu_gib: float = 80.0  # the memory of the GPU the verdict is for (H100 80 GB)
    threads: int = 2
    seed: int = 0
    backbone: bb.BackboneConfig = field(default_factory=bb.BackboneConfig)  # default: SmolLM2-135M
    depth: int = 0  # >0: keep only this many LM blocks (0: the schedule's)
    data_dir: Path = field(default_factory=lambda: work_dir() / "synthetic")  # generated once, reused


def _step_peaks(prof: profile) -> dict[str, int]:
    """Peak bytes over the profiled step, from torch's memory timeline (CPU tensors): of everything the step
    allocated outside STATE ("activations"), and per category."""
    from torch.profiler._memory_profiler import MemoryProfile

    mem = MemoryProfile(prof.profiler.kineto_results)
    current: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    other = peak_other = 0
    for _, action, (key, version), size in mem.timeline:
        if key.device.type != "cpu" or action.name in ("PREEXISTING", "INCREMENT_VERSION"):
            continue
        category = mem._categories.get(key, version)
        name = category.name if category is not None else "UNKNOWN"
        sign = 1 if action.name == "CREATE" else -1
        current[name] += sign * size
        peak[name] = max(peak[name], current[name])
        if name not in STATE:
            other += sign * size
            peak_other = max(peak_other, other)
    return {"activations_temporaries": peak_other, **{f"peak_{k.lower()}": v for k, v in sorted(peak.items())}}


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        t = t.coalesce()
        return _tensor_bytes(t.indices()) + _tensor_bytes(t.values())
    return t.numel() * t.element_size()


def measure_mode(cfg: TrainMemoryConfig, mode: str, data: Any, split: Any, out: Path) -> dict[str, Any]:
    """One warm-up and one profiled step of `mode`; what each trained tensor got (gradient, state)."""
    step_cfg = StepScaleConfig(batch_size=cfg.batch_size, negatives=cfg.negatives, threads=cfg.threads,
                               seed=cfg.seed, precision="fp32", backbone=cfg.backbone, depth=cfg.depth,
                               data_dir=cfg.data_dir)
    case = make_case(step_cfg, "measured", mode, data, split, out)
    # the first step: it also creates the optimizer state, which the timeline files under its own category
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        seconds = case.step()
    assert case.loop.optimizer is not None
    opt_state = case.loop.optimizer.state
    group_of = {id(q): g["name"] for g in case.loop.optimizer.param_groups for q in g["params"]}
    tensors = {}
    for name, p in case.task.model.named_parameters():
        if not p.requires_grad:
            continue
        grad = p.grad
        tensors[name] = {"grad": "none" if grad is None else ("sparse" if grad.is_sparse else "dense"),
                         "grad_bytes": 0 if grad is None else _tensor_bytes(grad),
                         "sparse_rows": int(grad.coalesce().indices().shape[1]) if grad is not None and grad.is_sparse else 0,
                         "optimizer_state": p in opt_state and bool(opt_state[p]), "group": group_of.get(id(p), ""),
                         # the optimizer's state as a multiple of the tensor (Adam: 2; row-wise Adagrad: 1 / hidden)
                         "state_ratio": sum(_tensor_bytes(v) for v in opt_state.get(p, {}).values()
                                            if isinstance(v, torch.Tensor) and v.dim())
                                        / (p.numel() * p.element_size())}
    prompt = case.batches[0]()["input_ids"].shape
    lm = case.task.model.backbone
    return {"mode": mode, "flags": VARIANTS[mode] + (["--recipe.item-negatives", str(cfg.negatives)]
                                                      if "sampled" in mode else []),
            "batch_tokens": list(prompt), "step_s": round(seconds, 2), **_step_peaks(prof), "tensors": tensors,
            "case": case, "backbone": lm, "vocab_size": case.task.tok.vocab.vocab_size,
            "hidden": case.task.model.hidden_size, "lm_blocks": int(lm.config.num_hidden_layers),
            "model_cfg": case.task.model.cfg}


def count_at(measured: dict[str, Any], users: int, items: int) -> dict[str, int]:
    """Bytes at `users` x `items`, from the shapes the model's constructor gives on the meta device."""
    model_cfg = measured["model_cfg"]
    vocab = IdVocab(measured["vocab_size"], users, items, model_cfg.user_tokens)
    with torch.device("meta"):
        model = CLLM4Rec(model_cfg, measured["backbone"], vocab)  # the backbone is the measured one, real
    seen = measured["tensors"]
    weights = frozen = grads = moments = 0
    dense_stepped: dict[str, int] = defaultdict(int)  # per optimizer group (ids / head / lm)
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        weights += size
        if not p.requires_grad:
            frozen += size
            continue
        info = seen[name]
        grads += size if info["grad"] == "dense" else info["grad_bytes"]
        if info["optimizer_state"]:
            moments += round(info.get("state_ratio", 2.0) * size)
        if info["grad"] == "dense":
            dense_stepped[info["group"]] += size
    temporaries = max(dense_stepped.values(), default=0)
    total = weights + grads + moments + temporaries + measured["activations_temporaries"]
    return {"users": users, "items": items, "weights": weights, "frozen_weights": frozen, "gradients": grads,
            "optimizer_moments": moments, "adamw_temporaries": temporaries,
            "activations": measured["activations_temporaries"], "total": total,
            "id_rows": vocab.id_rows}


def run_train_memory(cfg: TrainMemoryConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    step_cfg = StepScaleConfig(seed=cfg.seed, data_dir=cfg.data_dir)
    data, split, info = size_data(step_cfg, f"{cfg.measured_users}x{cfg.items}x{cfg.measured_interactions}")
    measured, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in cfg.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
            m = measure_mode(cfg, mode, data, split, Path(tmp) / mode)
            for users in cfg.users:
                row = count_at(m, users, cfg.items)
                rows.append({"mode": mode, **row, "fits": row["total"] <= cfg.gpu_gib * GIB})
            for key in ("case", "backbone", "model_cfg"):
                m.pop(key)
            measured.append(m)
    return {"config": dataclasses.asdict(cfg), "measured_data": info,
            "backbone": str(cfg.backbone.path or "SmolLM2-135M-Instruct (the installed GGUF)"), "measured": measured, "rows": rows,
            "cpu": cpu_model(), "precision": "fp32", "synthetic_data": True, "wall_s": round(time.time() - t0, 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "command": invoking_command()}


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    first = result["measured"][0]
    lines = [
        f"CLLM4Rec, schedule `default` (backbone {result['backbone']}: {first['lm_blocks']} blocks kept, LoRA as the "
        f"schedule sets it, hidden {first['hidden']}), fp32 weights and Adam moments, batch {cfg['batch_size']}, "
        f"{cfg['items']:,} items; GPU budget {cfg['gpu_gib']:.0f} GiB.",
        "",
        "**Measured** (one real step per mode on this CPU, torch's memory profiler; synthetic data, "
        f"{result['measured_data']['users']:,} users, {result['measured_data']['items']:,} items): the step's peak "
        "of activations, autograd buffers and temporaries (everything it allocates except parameters, "
        "gradients and optimizer state), and what each trained tensor received.",
        "",
        "| mode | batch x tokens | activations + temporaries GiB | ID tables' gradients |",
        "|---|---|---|---|",
    ]
    for m in result["measured"]:
        ids = {k: v for k, v in m["tensors"].items() if k in ("collab_embeddings", "content_embeddings", "item_output")}
        grads = ", ".join(f"{k}: {v['grad']}" + (f" ({v['sparse_rows']} rows, {v['grad_bytes'] / 2**20:.1f} MiB)"
                                                  if v["grad"] == "sparse" else "") for k, v in ids.items())
        lines.append(f"| {MODES[m['mode']]} | {m['batch_tokens'][0]} x {m['batch_tokens'][1]} | "
                     f"{gib(m['activations_temporaries'])} | {grads} |")
    lines += [
        "",
        "**Arithmetic** at each size: the model built on the `meta` device (its real shapes, no memory); weights "
        "(frozen LM + trained), gradients (dense: the tensor's size; sparse: the measured bytes), the optimizer "
        "state of every tensor that got some, at the multiple of its size measured after the step (AdamW and "
        "row-wise Adam: two full-size moments; row-wise Adagrad: one value per row), AdamW's foreach "
        "temporaries on a GPU (sqrt(v) of the largest densely stepped group), plus the measured activations. "
        "Not counted: the CUDA context and allocator slack, data, validation.",
        "",
        "| mode | users | ID rows | weights GiB | gradients GiB | optimizer state GiB | AdamW temporaries GiB | "
        f"activations GiB | total GiB | fits {cfg['gpu_gib']:.0f} GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {MODES[r['mode']]} | {r['users']:,} | {r['id_rows']:,} | {gib(r['weights'])} | "
                     f"{gib(r['gradients'])} | {gib(r['optimizer_moments'])} | {gib(r['adamw_temporaries'])} | "
                     f"{gib(r['activations'])} | {gib(r['total'])} | {'yes' if r['fits'] else '**no**'} |")
    lines += ["", f"CPU {result['cpu']}; wall {result['wall_s']} s; peak RSS "
              f"{result['peak_rss_bytes'] / GIB:.2f} GiB.", "", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from benchmarks.cli import bench_main

    return bench_main(argv, "train-memory", TrainMemoryConfig, run_train_memory, markdown,
                      "CLLM4Rec training memory at 100k / 1M / 10M users: what fits one GPU (SYNTHETIC data)", description=__doc__)
