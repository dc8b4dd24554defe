"""Does a CLLM4Rec training step cost more when there are more users and items? Measured on synthetic
data (`llmrec data synth`) at two sizes, for dense tables with the full softmax and for the scale levers, in one
process, the sizes alternating, so that the ratio between sizes is not a ratio between two moments of
a shared machine.

    .venv/bin/python -m benchmarks.cllm4rec_step_scale [--steps 4 --rounds 2 ...]

Every step is a real optimizer step of the training loop (`Loop.step`: batch building, forward,
backward, optimizer) on the schedule's model (default: `--schedule default`, SmolLM2 with LoRA on 8
blocks), at the same batch size and the same prompt length at every size: each batch holds users whose
prompt is the longest the model takes (`--model.max-history` items), so only the users and items
differ. Within a variant the sizes take turns step by step. Variants:
- dense: the schedule with dense ID tables under AdamW and a softmax over every item (the default below
  `--recipe.sparse-ids-from-rows` ID rows and `--recipe.sampled-items-from` items; the bench sets variants
  explicitly, whatever the size);
- sparse+sampled: `--recipe.sparse-ids --recipe.item-negatives K` (the collaborative loss samples K negatives,
  the rec loss scores every item);
- sparse+sampled-rec: sparse+sampled with `--recipe.sampled-rec`: the rec loss samples too (before that
  setting existed, the only way; cheaper by one pooled row per prompt x the items, and less accurate);
- sparse+sampled+no-user: sparse+sampled plus `--model.no-user-tokens` (a user is their history);
- sparse+sampled+adagrad: sparse+sampled with row-wise Adagrad for the ID rows (`--recipe.id-optimizer
  adagrad`), not timed by default (the same step but for the update rule; its point is memory).
A variant may name the attention kernel of its steps after an `@` (`dense@sdpa`, `dense@eager`; without
one, `--attention`, auto by default: eager in bf16 on a CPU), so kernels compare in one process.
Reported per size and variant: median seconds per step, the ratio large/small, the bytes of the
trained tensors plus optimizer state, and an epoch estimate (steps of a real epoch x the median step:
an upper bound, since real batches are mostly shorter than the longest prompts timed here). The
process's peak RSS is one figure for the whole run (every model of both sizes lives in it).

And the floor: the FLOPs of one step (torch's FlopCounterMode over forward and backward: the matrix
products and attention, not the memory-bound rest), against the same core's matrix-product peak timed in
the same process at the same precision. An epoch cannot take less than its FLOPs (the step's, scaled from
the longest prompt to the data's mean prompt length) at that peak, whatever the code around it does: when
the floor is above a target, only fewer FLOPs (a shallower LM, shorter prompts, fewer prompts per epoch)
or a faster unit (AMX bf16, a GPU) can meet it.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import logs
from common.assets import work_dir
from common.config import parse, to_dict
from models.cllm4rec import backbone as bb
from models.cllm4rec import cli as cllm_cli
from models.cllm4rec.model import CLLM4Rec
from models.cllm4rec.prompts import Template
from models.cllm4rec.tokens import IdTokenizer
from models.cllm4rec.train import CLLM4RecTask, with_content_table
from models.data import synth
from models.data.config import DataConfig
from models.data.dataset import InteractionData
from models.data.loaders import load_data
from models.data.splits import Split, make_split
from models.reports import invoking_command, write_report
from models.training.config import Attention, Precision
from models.training.devices import autocast_dtype, cpu_model, precision_name, step_attention
from models.training.distributed import init_distributed
from models.training.loop import Loop, Stage

log = logs.get(__name__)
VARIANTS: dict[str, list[str]] = {
    "dense": [],
    "sparse+sampled": ["--recipe.sparse-ids"],
    "sparse+sampled-rec": ["--recipe.sparse-ids", "--recipe.sampled-rec"],
    "sparse+sampled+no-user": ["--recipe.sparse-ids", "--model.no-user-tokens"],
    "sparse+sampled+adagrad": ["--recipe.sparse-ids", "--recipe.id-optimizer", "adagrad"],
}


@dataclass
class StepScaleConfig:
    # synthetic sizes, users x items x interactions; the first is the reference of the ratios
    sizes: tuple[str, ...] = ("10000x5000x311000", "100000x20000x5000000")
    variants: tuple[str, ...] = ("dense", "sparse+sampled", "sparse+sampled+no-user")  # any of VARIANTS
    negatives: int = 1024  # --recipe.item-negatives of the sampled variants
    schedule: str = "default"  # the CLLM4Rec schedule whose model and batch size are timed
    batch_size: int = 20  # examples per step (the default schedule's)
    steps: int = 4  # timed steps per size and variant in each round
    warmup: int = 1  # untimed steps per size and variant before the first round
    rounds: int = 2  # rounds of (every variant: every size)
    depth: int = 0  # >0: keep only this many LM blocks (0: the schedule's)
    backbone: bb.BackboneConfig = field(default_factory=bb.BackboneConfig)  # default: SmolLM2-135M
    precision: Precision = "auto"
    attention: Attention = "auto"  # the steps' attention kernel of variants that do not name one after "@"
    threads: int = 1  # one core per step, as the targets are stated
    seed: int = 0  # of the synthetic data and the batches
    data_dir: Path = field(default_factory=lambda: work_dir() / "synthetic")  # generated once per size, reused
    report_name: str = "bench_cllm4rec_step_scale"
    results_dir: Path | None = None  # None: ./llmrec-results (the shipped one: benchmarks/results)


@dataclass
class Case:
    size: str
    variant: str
    task: CLLM4RecTask
    loop: Loop
    batches: list[Any]
    epoch_steps: int
    longest_tokens: int = 0  # the prompt length every timed batch has
    mean_tokens: float = 0.0  # the data's mean rec-prompt length
    step_flops: int = 0
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    next_batch: int = 0

    def step(self) -> float:
        build = self.batches[self.next_batch % len(self.batches)]
        self.next_batch += 1
        t0 = time.perf_counter()
        self.losses.append(self.loop.step(build()))
        return time.perf_counter() - t0


def size_data(cfg: StepScaleConfig, size: str) -> tuple[InteractionData, Split, dict[str, Any]]:
    users, items, interactions = (int(x) for x in size.split("x"))
    folder = cfg.data_dir / f"u{users}-i{items}-n{interactions}-s{cfg.seed}"
    if not (folder / synth.LABEL).is_file():
        synth.generate(synth.SynthConfig(out=folder, users=users, items=items, interactions=interactions,
                                         seed=cfg.seed, overwrite=True))
    t0 = time.time()
    data = load_data(DataConfig(dataset="interactions", path=folder / synth.INTERACTIONS,
                                items_path=folder / synth.ITEMS))
    split = make_split(data, cllm_cli.PROTOCOL, 0)
    return data, split, {"folder": str(folder), "load_s": round(time.time() - t0, 1), **data.summary()}


def make_case(cfg: StepScaleConfig, size: str, variant: str, data: InteractionData, split: Split,
              out: Path) -> Case:
    base, _, attention = variant.partition("@")
    flags = ["--schedule", cfg.schedule, "--train.batch-size", str(cfg.batch_size), "--threads", str(cfg.threads),
             "--precision", cfg.precision, "--attention", attention or cfg.attention, *VARIANTS[base]]
    if "sampled" in base:
        flags += ["--recipe.item-negatives", str(cfg.negatives)]
    run = parse(cllm_cli.TrainCli, flags, presets=cllm_cli.SCHEDULES)
    lm = dataclasses.replace(run.lm, depth=cfg.depth) if cfg.depth else run.lm
    torch.manual_seed(cfg.seed)
    backbone, hf_tok = bb.load_backbone(cfg.backbone, lm)
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items, run.model.user_tokens)
    model = CLLM4Rec(with_content_table(run.model, run.recipe), backbone, tok.vocab)
    task = CLLM4RecTask(model, tok, Template.build(tok), data, split, run.recipe, run.train, {}, lm, {})
    place = init_distributed("cpu")
    loop = Loop(task, run.train, out, place, autocast_dtype(place.device, run.precision), attention=run.attention)
    stage = Stage("rec", 1)
    loop.optimizer = loop._new_optimizer(stage)
    loop.scheduler = loop._new_scheduler(stage, 100_000)
    model.train()
    rng = np.random.default_rng(cfg.seed)
    rows, targets, labels = task.rec_examples(rng)
    longest = max(len(r) for r in rows)
    full = np.flatnonzero(np.array([len(r) for r in rows]) == longest)
    if len(full) < cfg.batch_size:
        raise ValueError(f"{size}: only {len(full)} users fill a prompt of {longest} tokens; need {cfg.batch_size}")
    full = rng.permutation(full)
    groups = [full[i : i + cfg.batch_size] for i in range(0, len(full) - cfg.batch_size + 1, cfg.batch_size)]
    seeds = rng.integers(0, 2**62, len(groups))
    sampled = run.recipe.item_negatives > 0

    def builder(idx: np.ndarray, seed: int) -> Any:
        return lambda: task._rec_batch(rows, targets, labels, idx, seed=seed if sampled else None)

    batches = [builder(g, int(s)) for g, s in zip(groups, seeds, strict=True)]
    epoch_steps = -(-len(rows) // cfg.batch_size)
    return Case(size, variant, task, loop, batches, epoch_steps, longest, float(np.mean([len(r) for r in rows])))


def count_flops(case: Case) -> int:
    """FLOPs of one more real step (forward, backward, optimizer), as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        case.step()
    return int(counter.get_total_flops())


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 1024, reps: int = 8) -> float:
    """FLOP/s of this core (these threads) on square fp32 or autocast matrix products: the best of a few."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def state_bytes(case: Case) -> int:
    """Trained tensors + optimizer state: what grows with the tables."""
    params = sum(p.numel() * p.element_size() for p in case.task.model.parameters() if p.requires_grad)
    opt = sum(v.numel() * v.element_size() for s in case.loop.optimizer.state.values() for v in s.values()
              if isinstance(v, torch.Tensor))
    return int(params + opt)


def run(cfg: StepScaleConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    sizes: dict[str, dict[str, Any]] = {}
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in cfg.sizes:
            data, split, info = size_data(cfg, size)
            sizes[size] = info
            for variant in cfg.variants:
                case = make_case(cfg, size, variant, data, split, Path(tmp) / f"{size}-{variant}")
                for _ in range(cfg.warmup):
                    case.step()
                case.step_flops = count_flops(case)
                cases.append(case)
                log.info("case ready", size=size, variant=variant)
        for r in range(cfg.rounds):
            for variant in cfg.variants:
                mine = [c for c in cases if c.variant == variant]
                for _ in range(cfg.steps):  # one step per size in turn: the ratio sees the same spells of the machine
                    for case in mine:
                        case.times.append(case.step())
                for case in mine:
                    log.info("timed", round=r, size=case.size, variant=variant,
                             median_s=round(statistics.median(case.times), 3))
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    place = init_distributed("cpu")
    dtype = autocast_dtype(place.device, cfg.precision) or torch.float32
    peak = matmul_peak(cfg.threads, dtype)
    rows = []
    for case in cases:
        med = statistics.median(case.times)
        rows.append({"size": case.size, "variant": case.variant, "median_step_s": round(med, 4),
                     "steps_timed": len(case.times), "step_s": [round(t, 4) for t in case.times],
                     "state_bytes": state_bytes(case), "epoch_steps": case.epoch_steps,
                     "epoch_h_upper": round(med * case.epoch_steps / 3600, 2),
                     "step_gflop": round(case.step_flops / 1e9, 1),
                     "fraction_of_peak": round(case.step_flops / med / peak, 3),
                     "longest_tokens": case.longest_tokens, "mean_tokens": round(case.mean_tokens, 1),
                     # an epoch's FLOPs at the peak: the timed step's FLOPs scaled to the mean prompt length
                     "epoch_h_floor": round(case.epoch_steps * case.step_flops * case.mean_tokens
                                            / case.longest_tokens / peak / 3600, 2),
                     "losses_finite": bool(np.isfinite(case.losses).all())})
    ref = cfg.sizes[0]
    for row in rows:
        base = next(r for r in rows if r["size"] == ref and r["variant"] == row["variant"])
        row["ratio_vs_first_size"] = round(row["median_step_s"] / base["median_step_s"], 2)
    return {"config": to_dict(cfg), "sizes": sizes, "rows": rows, "peak_rss_bytes": int(peak_rss),
            "matmul_peak_gflops": round(peak / 1e9, 1),
            "cpu": cpu_model(), "precision": precision_name(autocast_dtype(place.device, cfg.precision)),
            "attention": step_attention(place.device, autocast_dtype(place.device, cfg.precision), cfg.attention)
            or "the model's own (sdpa)",
            "synthetic_data": True, "command": invoking_command()}


def markdown(payload: dict[str, Any]) -> str:
    cfg = payload["config"]
    lines = [
        "# CLLM4Rec: cost of a training step vs the number of users and items (SYNTHETIC data)",
        "",
        f"Synthetic data from `llmrec data synth` (seed {cfg['seed']}): " + "; ".join(
            f"{s}: {i['users']} users, {i['items']} items, {i['interactions']} interactions" for s, i in payload["sizes"].items())
        + f". Schedule `{cfg['schedule']}`" + (f" cut to {cfg['depth']} blocks" if cfg["depth"] else "")
        + f", batch {cfg['batch_size']}, every batch at the longest prompt, {cfg['threads']} thread(s), "
        f"{payload['precision']}, attention {payload.get('attention', 'sdpa')} in the steps (a variant's `@kernel` "
        f"overrides it), CPU {payload['cpu']}. Sizes alternate step by step within one process "
        f"({cfg['rounds']} rounds x {cfg['steps']} steps per size and variant, after {cfg['warmup']} warm-up). "
        "Epoch h: the steps of one real epoch (users with a history / batch) x the median step; an upper bound, "
        "since every timed batch is at the longest prompt. GFLOP/step: torch's FlopCounterMode over one step "
        "(matrix products and attention, forward and backward). Of peak: those FLOPs per median step over this "
        f"core's matrix-product peak timed in the same process ({payload.get('matmul_peak_gflops', 0):.1f} GFLOP/s "
        f"at {payload['precision']}, {cfg['threads']} thread(s)). Epoch h floor: an epoch's FLOPs (the step's, "
        "scaled from the longest prompt to the data's mean prompt length) at that peak: no code change around the "
        "model can go below it.",
        "",
        "| variant | size | median s/step | vs first size | trained tensors + optimizer state | epoch h (upper bound) "
        "| GFLOP/step | of peak | prompt tokens, longest / mean | epoch h floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        flops = (f" {r['step_gflop']:.0f} | {r['fraction_of_peak']:.0%} | {r['longest_tokens']} / {r['mean_tokens']:.0f} "
                 f"| {r['epoch_h_floor']:.2f} |") if "step_gflop" in r else " - | - | - | - |"
        lines.append(f"| {r['variant']} | {r['size']} | {r['median_step_s']:.3f} | {r['ratio_vs_first_size']:.2f}x | "
                     f"{r['state_bytes'] / 2**20:.0f} MiB | {r['epoch_h_upper']:.2f} |" + flops)
    lines += ["", f"Peak RSS of the whole run ({len(payload['rows'])} case(s) above in one process, data loading "
              f"included): {payload['peak_rss_bytes'] / 2**30:.2f} GiB.", "",
              f"Command: `{payload['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    logs.setup()
    cfg = parse(StepScaleConfig, sys.argv[1:] if argv is None else argv, prog="benchmarks.cllm4rec_step_scale",
                description=__doc__)
    payload = run(cfg)
    md = markdown(payload)
    path = write_report(cfg.report_name, payload, md, cfg.results_dir)
    print(md)
    log.info("report", path=str(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
