"""`llmrec bench pipeline`: the whole path (data, baselines, train, eval, export, serve + requests) at
several data sizes, each step a child process of the real CLI, with its growth from size to size.

Per step: wall seconds, CPU seconds (user + system of the step's processes, from the kernel's
accounting of waited-for children: robust to a machine shared with other jobs, unlike wall time),
peak RSS (the step's process tree, sampled every 0.2 s, or the step's own peak as wait4 reports it at
exit where that is larger: a step shorter than one interval would otherwise show none), and the size of what it wrote. Training runs
for a fixed small number of epochs, or steps, or within a time budget; what a whole epoch would take is
extrapolated from the seconds per step and said to be an extrapolation. A step that runs past its limit
is stopped and reported as such, a step that fails is reported with its last message, and what
depends on it is reported as skipped: nothing is left out of the table silently.

Sizes: `ml100k` (MovieLens-100K as shipped) or `synth:USERS:ITEMS:INTERACTIONS` (`llmrec data synth`,
seed 0); `10k` and `100k` name the two synthetic sizes of issue 33 (10k users / 5k items / 311k
interactions; 100k / 20k / 5M).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import logs
from common.assets import work_dir
from common.errors import ConfigError
from models.reports import markdown_table

log = logs.get(__name__)

NAMED_SIZES = {"10k": "synth:10000:5000:311000", "100k": "synth:100000:20000:5000000"}
STEPS = ("synth", "baselines", "train_tcf", "eval_tcf", "export_tcf", "serve_tcf",
         "train_cllm4rec", "eval_cllm4rec", "export_cllm4rec", "serve_cllm4rec")
NEEDS = {"eval_tcf": "train_tcf", "export_tcf": "train_tcf", "serve_tcf": "export_tcf",
         "eval_cllm4rec": "train_cllm4rec", "export_cllm4rec": "train_cllm4rec", "serve_cllm4rec": "export_cllm4rec"}


@dataclass
class PipelineConfig:
    sizes: tuple[str, ...] = ("ml100k", "10k", "100k")  # ml100k, 10k, 100k or synth:USERS:ITEMS:INTERACTIONS
    steps: tuple[str, ...] = STEPS  # a subset runs only those (and reports the rest as not asked for)
    work: Path = field(default_factory=lambda: work_dir() / "bench-pipeline")  # data, checkpoints, repositories
    step_limit_min: float = 15.0  # a step still running after this is stopped and reported as timed out
    baselines_limit_min: float = 25.0  # the same for `eval baselines` (its target at 100k users: 20 min)
    # training: the epochs run, a cap on steps per epoch (0: whole epochs) and a time budget (0: none;
    # else the run stops cleanly at the first step past it, and the whole epoch is extrapolated)
    tcf_epochs: int = 2
    tcf_max_steps: int = 0
    tcf_budget_min: float = 10.0
    cllm4rec_epochs: int = 1
    cllm4rec_max_steps: int = 30
    cllm4rec_budget_min: float = 10.0
    baselines_budget_min: float = 3.0  # --tuning.budget-min of `eval baselines` (per model and protocol)
    requests: int = 300  # Recommend calls per served model, half known users, half anonymous histories
    threads: int = 1  # --threads of every training / export step
    tcf_args: str = ""  # extra flags for `train tcf` (e.g. a tiny encoder in tests), shell-quoted
    cllm4rec_args: str = ""  # extra flags for `train cllm4rec`
    export_args: str = ""  # extra flags for each `export` (e.g. the known-user pass's --user-vectors.precision)
    keep_going: bool = True  # a failed size does not stop the next one
    # earlier runs' bench_pipeline JSON files: their sizes come first in this report (with their commands), so
    # one growth table can span sizes measured in separate runs (e.g. the largest one run on its own)
    include: tuple[Path, ...] = ()


@dataclass
class Size:
    name: str
    synth: tuple[int, int, int] | None  # users, items, interactions; None: MovieLens-100K

    @property
    def data_dir(self) -> Path | None:
        return None if self.synth is None else Path("synthetic") / f"u{self.synth[0]}-i{self.synth[1]}-n{self.synth[2]}-s0"


def parse_size(spec: str) -> Size:
    full = NAMED_SIZES.get(spec, spec)
    if full == "ml100k":
        return Size("ml100k", None)
    parts = full.split(":")
    if len(parts) != 4 or parts[0] != "synth" or not all(p.isdigit() and int(p) > 0 for p in parts[1:]):
        raise ConfigError(f"bad size {spec!r}; accepted: ml100k, 10k, 100k or synth:USERS:ITEMS:INTERACTIONS")
    users, items, inter = (int(p) for p in parts[1:])
    return Size(spec if spec in NAMED_SIZES else f"u{users}", (users, items, inter))


# --------------------------------------------------------------------------- measuring a child process
class TreeSampler:
    """Peak summed RSS of this process's children (and theirs), sampled in a background thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        import psutil

        self._me = psutil.Process()
        self._every = every_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self._every):
            total = 0
            for child in self._me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self._peak = max(self._peak, total)

    def reset(self) -> None:
        self._peak = 0

    def observe(self, rss: int) -> None:
        """A peak measured another way (a child's own, at exit): a step shorter than one sampling
        interval would otherwise show none."""
        self._peak = max(self._peak, rss)

    def peak(self) -> int:
        return self._peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def folder_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def last_message(log_path: Path) -> str:
    """The last non-progress line a failed step printed (its one-line error, as the CLI reports it)."""
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").replace("\r", "\n").splitlines()]
        lines = [ln for ln in lines if ln and "it/s]" not in ln and "s/it]" not in ln]
        return lines[-1][:400] if lines else ""
    return ""


def wait_with_rusage(proc: subprocess.Popen, timeout_s: float) -> tuple[int, int]:
    """(exit code, peak RSS in bytes) of a child: wait4's own figure for the child and the descendants it
    waited for (Linux reports kilobytes). Raises subprocess.TimeoutExpired after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss * 1024
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        time.sleep(0.02)


def run_cli(argv: list[str], log_path: Path, limit_s: float) -> tuple[str, float, str, int]:
    """Runs `llmrec <argv>` as a child in its own process group: (status, wall s, message, the child's
    peak RSS in bytes as the kernel counted it; 0 when it was stopped)."""
    t0 = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmrec", *argv], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code, peak = wait_with_rusage(proc, limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return ("timed_out", time.perf_counter() - t0, f"stopped after the step limit ({limit_s / 60:.1f} min)",
                    0)
    wall = time.perf_counter() - t0
    return ("ok", wall, "", peak) if code == 0 else ("failed", wall, f"exit {code}: {last_message(log_path)}", peak)


# --------------------------------------------------------------------------- the steps
@dataclass
class Context:
    cfg: PipelineConfig
    size: Size
    root: Path  # work/<size>
    sampler: TreeSampler
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def data_flags(self) -> list[str]:
        if self.size.synth is None:
            return []
        d = self.cfg.work / self.size.data_dir  # type: ignore[operator]
        return ["--data.dataset", "interactions", "--data.path", str(d / "synthetic_interactions.csv"),
                "--data.items-path", str(d / "synthetic_items.csv")]


def _train_flags(epochs: int, max_steps: int, budget_min: float, threads: int) -> list[str]:
    flags = ["--train.epochs", str(epochs), "--train.no-progress", "--threads", str(threads)]
    if max_steps > 0:
        flags += ["--train.max-steps-per-epoch", str(max_steps)]
    if budget_min > 0:
        flags += ["--train.time-budget-min", str(budget_min)]
    return flags


def step_argv(ctx: Context, step: str) -> tuple[list[str], Path | None]:
    """The CLI call of `step` and the folder or file it writes (for its output size)."""
    c, r = ctx.cfg, ctx.root
    if step == "synth":
        assert ctx.size.synth is not None
        users, items, inter = ctx.size.synth
        out = c.work / ctx.size.data_dir  # type: ignore[operator]
        return ["data", "synth", "--users", str(users), "--items", str(items), "--interactions", str(inter),
                "--seed", "0", "--out", str(out), "--overwrite"], out
    if step == "baselines":
        return ["eval", "baselines", *ctx.data_flags(), "--tuning.budget-min", str(c.baselines_budget_min),
                "--results-dir", str(r / "results")], r / "results"
    if step == "train_tcf":
        return ["train", "tcf", *ctx.data_flags(), "--out", str(r / "tcf"),
                *_train_flags(c.tcf_epochs, c.tcf_max_steps, c.tcf_budget_min, c.threads),
                *shlex.split(c.tcf_args)], r / "tcf"
    if step == "train_cllm4rec":
        return ["train", "cllm4rec", *ctx.data_flags(), "--out", str(r / "cllm4rec"),
                *_train_flags(c.cllm4rec_epochs, c.cllm4rec_max_steps, c.cllm4rec_budget_min, c.threads),
                *shlex.split(c.cllm4rec_args)], r / "cllm4rec"
    if step in ("eval_tcf", "eval_cllm4rec"):
        model = step.removeprefix("eval_")
        report = ["--report", f"eval_{model}"] if model == "tcf" else ["--report-name", f"eval_{model}"]
        return ["eval", model, "--checkpoint", str(r / model), "--no-baselines", "--no-serving-cost", *report,
                "--threads", str(c.threads), "--results-dir", str(r / "results")], r / "results" / f"eval_{model}.json"
    if step in ("export_tcf", "export_cllm4rec"):
        model = step.removeprefix("export_")
        repo = r / f"repository-{model}"
        return ["export", "--checkpoint", str(r / model), "--repository", str(repo), "--name", model,
                "--no-report", "--threads", str(c.threads), *shlex.split(c.export_args)], repo
    raise ValueError(f"no CLI call for step {step!r}")


def _epoch_extrapolation(checkpoint: Path, steps_per_epoch: int | None) -> dict[str, Any]:
    """Seconds per step of the run in `checkpoint`, and the whole epoch they imply."""
    log_path = checkpoint / "train" / "log.json"
    with contextlib.suppress(OSError, ValueError):
        train_log = json.loads(log_path.read_text())
        epochs = train_log.get("epochs") or []
        steps = sum(e.get("steps", 0) for e in epochs)
        # an epoch's examples and batches are built once before its first step: charged once per epoch, not
        # per step (10 steps at 100k users read 2.26 s per step with them, ~1.3 s without)
        setup = sum(e.get("setup_seconds", 0.0) for e in epochs) / max(len(epochs), 1)
        setup_cpu = sum(e.get("setup_cpu_seconds", 0.0) for e in epochs) / max(len(epochs), 1)
        seconds = sum(e.get("seconds", 0.0) - e.get("setup_seconds", 0.0) for e in epochs)
        cpu = (sum(e["cpu_seconds"] - e.get("setup_cpu_seconds", 0.0) for e in epochs)
               if all("cpu_seconds" in e for e in epochs) else None)
        walls = train_log.get("wall_s") or {}
        valid_n = len([e for e in epochs if "valid" in e])
        out: dict[str, Any] = {"epochs_logged": len(epochs), "steps": steps, "train_s": round(seconds, 2),
                               "s_per_step": round(seconds / steps, 4) if steps else None,
                               "validation_s_per_epoch": round(walls.get("validation", 0.0) / valid_n, 2)
                               if valid_n else None,
                               "stopped": train_log.get("stopped"), "preinfer_s": train_log.get("preinfer_s"),
                               "cut": any(e.get("cut") for e in epochs)}
        per_epoch = steps_per_epoch or train_log.get("steps_per_epoch")
        if per_epoch and steps:
            out["steps_per_epoch"] = per_epoch
            out["epoch_setup_s"] = round(setup, 2)
            out["epoch_s_extrapolated"] = round(setup + seconds / steps * per_epoch, 1)
            if cpu is not None:  # the process's CPU time: what one free core would take, whatever else ran
                out["epoch_cpu_s_extrapolated"] = round(setup_cpu + cpu / steps * per_epoch, 1)
        return out
    return {}


def _cllm4rec_steps_per_epoch(ctx: Context) -> int | None:
    """A rec epoch is one prompt per user with a training item, batches of the schedule's size (20)."""
    users = 943 if ctx.size.synth is None else ctx.size.synth[0]
    return math.ceil(users / 20) if "--train.batch-size" not in ctx.cfg.cllm4rec_args else None


def known_ids(ctx: Context, n: int) -> tuple[list[str], list[str]]:
    """Some user ids and item ids of the size's data (the file head), for the served requests."""
    if ctx.size.synth is None:
        return [str(u) for u in range(1, n + 1)], [str(i) for i in range(1, 200)]
    path = ctx.cfg.work / ctx.size.data_dir / "synthetic_interactions.csv"  # type: ignore[operator]
    users: dict[str, None] = {}
    items: dict[str, None] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            users[row["user_id"]] = None
            items[row["item_id"]] = None
            if len(users) >= n and len(items) >= 200:
                break
    return list(users)[:n], list(items)


def serve(ctx: Context, model: str, log_path: Path) -> tuple[str, float, str, dict[str, Any]]:
    """`llmrec serve` on the step's repository until SERVING, then `requests` Recommend calls."""
    import grpc
    import numpy as np

    from client import RecommenderClient
    from server.spawn import spawn_server, stop_server

    repo = ctx.root / f"repository-{model}"
    t0 = time.perf_counter()
    try:
        proc, target = spawn_server(repo, ["--metrics-port", "0", "--poll-seconds", "0"], log_path=log_path,
                                    timeout_s=ctx.cfg.step_limit_min * 60)
    except (RuntimeError, TimeoutError) as exc:
        return "failed", time.perf_counter() - t0, f"{exc}: {last_message(log_path)}", {}
    ready_s = time.perf_counter() - t0
    users, items = known_ids(ctx, max(ctx.cfg.requests // 2, 1))
    rng = np.random.default_rng(0)
    latencies, errors, first_error = [], 0, ""
    try:
        with RecommenderClient(target) as client:
            for i in range(ctx.cfg.requests):
                kw: dict[str, Any] = {"user_id": users[(i // 2) % len(users)]} if i % 2 == 0 else \
                    {"history": list(rng.choice(items, size=min(10, len(items)), replace=False))}
                t = time.perf_counter()
                try:
                    client.recommend(model, top_k=10, **kw)
                    latencies.append((time.perf_counter() - t) * 1000)
                except grpc.RpcError as exc:  # every failed request is counted, the first one said
                    errors += 1
                    first_error = first_error or f"{exc.code().name}: {exc.details()}"
    finally:
        code = stop_server(proc)
    lat = np.array(latencies) if latencies else np.zeros(1)
    extra = {"ready_s": round(ready_s, 2), "requests": ctx.cfg.requests, "errors": errors,
             "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
             "server_exit": code}
    status = "ok" if errors == 0 else "failed"
    return status, time.perf_counter() - t0, (f"{errors} requests failed: {first_error}" if errors else ""), extra


KNOWN_USER_EVENT = "known-user vectors computed"  # export/writer.py's line after the known-user pass
PASS_EVENT = "known-user vectors "  # its line before the pass: engine and precision
GATE_EVENT = "bf16 known-user gate"  # its line after bf16 was measured against fp32


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def pass_engine(lines: list[str]) -> dict[str, Any]:
    """Which engine and precision ran the known-user pass, and the bf16 gate's verdict and in-run timing
    of both precisions on the same users, from the export's log."""
    out: dict[str, Any] = {}
    for line in lines:
        if PASS_EVENT in line and KNOWN_USER_EVENT not in line and "precision=" in line:
            f = _fields(line)
            out.update({"known_users_engine": f.get("engine"), "known_users_precision": f.get("precision")})
        elif GATE_EVENT in line:
            f = _fields(line)
            out["bf16_gate"] = {k: f[k] for k in ("status", "top20_overlap", "relative_drop", "users_timed",
                                                  "fp32_seconds", "bf16_seconds", "bf16_speedup") if k in f}
    return out


def known_user_cost(log_path: Path) -> dict[str, Any]:
    """The export's known-user pass as its log line says: seconds, CPU seconds, prompt positions, the FLOP
    estimate and the rate reached (export/flops.py), to read its time against the CPU it ran on. A pass cut
    short (the step limit) has no such line: then how far its progress bar got, so the rate is still read."""
    with contextlib.suppress(OSError):
        lines = log_path.read_text(errors="replace").splitlines()  # also splits tqdm's carriage returns
        engine = pass_engine(lines)
        for line in reversed(lines):
            if KNOWN_USER_EVENT in line:
                fields = _fields(line)
                keys = ("seconds", "cpu_seconds", "positions", "est_gflop", "gflop_per_cpu_s")
                with contextlib.suppress(ValueError):
                    return {**engine, **{f"known_users_{k}": float(fields[k]) for k in keys if k in fields}}
        for line in reversed(lines):
            m = re.search(r"known users:.*?(\d+)/(\d+) \[([\d:]+)<", line)
            if m:
                seconds = sum(int(x) * 60**i for i, x in enumerate(reversed(m.group(3).split(":"))))
                return {**engine, "known_users_done": int(m.group(1)), "known_users_total": int(m.group(2)),
                        "known_users_elapsed_s": seconds}
        return engine
    return {}


def run_step(ctx: Context, step: str) -> dict[str, Any]:
    need = NEEDS.get(step) or ("synth" if step != "synth" and "synth" in ctx.results else None)
    if need and ctx.results.get(need, {}).get("status") not in ("ok", "budget"):
        return {"step": step, "status": "skipped", "message": f"needs {need}, which did not succeed"}
    log.info("pipeline step", size=ctx.size.name, step=step)
    log_path = ctx.root / "logs" / f"{step}.log"
    ctx.sampler.reset()
    cpu0 = children_cpu_s()
    extra: dict[str, Any] = {}
    out: Path | None = None
    if step.startswith("serve_"):
        status, wall, message, extra = serve(ctx, step.removeprefix("serve_"), log_path)
    else:
        argv, out = step_argv(ctx, step)
        if step.startswith(("train_", "export_")) and out is not None and out.exists():
            # a fresh run each time: a leftover checkpoint would be resumed, and a leftover repository's
            # versions (or known-user shards) counted in the output or reused, not measured
            shutil.rmtree(out)
        limit = ctx.cfg.baselines_limit_min if step == "baselines" else ctx.cfg.step_limit_min
        status, wall, message, peak = run_cli(argv, log_path, limit * 60)
        ctx.sampler.observe(peak)
    if step == "train_tcf":
        extra = _epoch_extrapolation(ctx.root / "tcf", None)
    elif step == "train_cllm4rec":
        extra = _epoch_extrapolation(ctx.root / "cllm4rec", _cllm4rec_steps_per_epoch(ctx))
    elif step.startswith("export_"):
        extra = known_user_cost(log_path)
    if status == "ok" and extra.get("stopped") == "time_budget":
        status = "budget"  # finished cleanly, stopped by its time budget: a partial run, said so
    result = {"step": step, "status": status, "wall_s": round(wall, 2), "cpu_s": round(children_cpu_s() - cpu0, 2),
              "peak_rss_mb": round(ctx.sampler.peak() / 2**20, 1), "output_mb": round(folder_bytes(out) / 2**20, 2),
              "message": message, "log": str(log_path), **({"detail": extra} if extra else {})}
    log.info("pipeline step done", size=ctx.size.name, **{k: v for k, v in result.items() if k not in ("log",
                                                                                                        "detail")})
    return result


def run_size(cfg: PipelineConfig, size: Size, sampler: TreeSampler,
             on_step: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    root = cfg.work / size.name
    (root / "logs").mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, size, root, sampler)
    entry = {"size": size.name, "synthetic": size.synth is not None,
             "users_items_interactions": list(size.synth) if size.synth else [943, 1682, 100000], "steps": ctx.results}
    for step in STEPS:
        if step not in cfg.steps or (step == "synth" and size.synth is None):
            continue
        ctx.results[step] = run_step(ctx, step)
        on_step(entry)
    return entry


def growth(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step, the factor from each size to the next (wall, CPU, peak RSS, output), where both ran."""
    out = []
    for a, b in itertools.pairwise(sizes):
        for step, rb in b["steps"].items():
            ra = a["steps"].get(step)
            if not ra or ra.get("status") != "ok" or rb.get("status") != "ok":
                continue
            f = {k: round(rb[k] / ra[k], 2) if ra.get(k) else None for k in ("wall_s", "cpu_s", "peak_rss_mb",
                                                                                   "output_mb")}
            out.append({"step": step, "from": a["size"], "to": b["size"], **f})
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Command: `{result['command']}`", "",
             f"Machine: {result.get('machine', {}).get('cpu', '?')}, {result.get('machine', {}).get('cores', '?')} "
             "cores, shared with other jobs while this ran: CPU seconds are the steadier figure, wall seconds "
             "include waiting for the CPU. Peak RSS: the step's process tree, sampled every 0.2 s, or the step's own peak as the kernel counted it at exit where that is larger. Every step is a "
             "child process of the real CLI (`llmrec ...`); training runs a fixed small number of epochs/steps or "
             "a time budget (status `budget`), and an epoch is extrapolated from seconds per step.", ""]
    commands = sorted({s["measured_by"] for s in result["sizes"] if s.get("measured_by")})
    if commands:
        lines += ["Sizes " + ", ".join(s["size"] for s in result["sizes"] if s.get("measured_by")) +
                  " were measured by an earlier run: " + "; ".join(f"`{c}`" for c in commands), ""]
    header = ["size", "step", "status", "wall s", "CPU s", "peak RSS MB", "output MB", "notes"]
    rows = []
    for s in result["sizes"]:
        for step, r in s["steps"].items():
            d = r.get("detail") or {}
            notes = []
            if "epoch_s_extrapolated" in d:
                notes.append(f"{d['steps']} steps, {d['s_per_step']} s/step"
                             + (f" + {d['epoch_setup_s']} s of batch building" if d.get("epoch_setup_s") else "")
                             + f" -> epoch of {d['steps_per_epoch']} steps "
                             f"≈ {d['epoch_s_extrapolated'] / 60:.1f} min (extrapolated)"
                             + (f", ≈ {d['epoch_cpu_s_extrapolated'] / 60:.1f} CPU min"
                                if "epoch_cpu_s_extrapolated" in d else ""))
            if d.get("validation_s_per_epoch") is not None:
                notes.append(f"validation {d['validation_s_per_epoch']} s/epoch")
            if "p50_ms" in d:
                notes.append(f"SERVING in {d['ready_s']} s; {d['requests']} requests p50 {d['p50_ms']} ms, "
                             f"p99 {d['p99_ms']} ms, {d['errors']} errors")
            if r.get("message"):
                notes.append(r["message"].replace("|", "/"))
            if "known_users_est_gflop" in d:
                notes.append(f"known-user pass {d.get('known_users_seconds', 0):.0f} s, "
                             f"{d.get('known_users_cpu_seconds', 0):.0f} CPU s for ≥ {d['known_users_est_gflop']:.0f} "
                             f"GFLOP ({d.get('known_users_positions', 0):.0f} prompt positions): "
                             f"{d.get('known_users_gflop_per_cpu_s', 0):.1f} GFLOP per CPU s")
            if d.get("known_users_precision"):
                notes.append(f"known-user pass in {d['known_users_precision']} ({d.get('known_users_engine')})")
            gate = d.get("bf16_gate") or {}
            if gate:
                notes.append(f"bf16 gate {gate.get('status')}: top-20 overlap {gate.get('top20_overlap')}, probe metric "
                             f"drop {gate.get('relative_drop', '-')}; the same {gate.get('users_timed')} users in this "
                             f"run: fp32 {gate.get('fp32_seconds')} s, bf16 {gate.get('bf16_seconds')} s "
                             f"({gate.get('bf16_speedup')}x)")
            if d.get("known_users_done") and d.get("known_users_elapsed_s"):
                rate = d["known_users_done"] / d["known_users_elapsed_s"]
                notes.append(f"known-user pass cut at {d['known_users_done']} of {d['known_users_total']} users after "
                             f"{d['known_users_elapsed_s']} s ({rate:.1f} users/s: all of them ≈ "
                             f"{d['known_users_total'] / rate / 3600:.1f} h at that rate; the shards written are "
                             "kept, and the same export command resumes from them)")
            if d.get("preinfer_s"):
                notes.append(f"item-text pre-inference {d['preinfer_s']:.0f} s of it")

            def num(key: str, fmt: str, r: dict[str, Any] = r) -> str:
                return format(r[key], fmt) if isinstance(r.get(key), int | float) else "-"

            rows.append([s["size"], step, r["status"], num("wall_s", ".1f"), num("cpu_s", ".1f"),
                         num("peak_rss_mb", ".0f"), num("output_mb", ".2f"), "; ".join(notes) or "-"])
    lines += [markdown_table(header, rows), ""]
    if result["growth"]:
        lines += ["Growth from one size to the next (steps that succeeded at both):", "",
                  markdown_table(["step", "from", "to", "wall x", "CPU x", "RSS x", "output x"],
                                 [[g["step"], g["from"], g["to"], *(f"{g[k]:.2f}" if g[k] is not None else "-"
                                                                    for k in ("wall_s", "cpu_s", "peak_rss_mb",
                                                                              "output_mb"))]
                                  for g in result["growth"]]), ""]
    if not result["complete"]:
        lines += ["**Incomplete**: the run stopped before every size was done.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], stem: Path) -> list[Path]:
    """Wall and CPU seconds and peak RSS per step against the number of interactions (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for step in STEPS:
        pts = [(s["users_items_interactions"][2], s["steps"][step]) for s in result["sizes"]
               if s["steps"].get(step, {}).get("status") in ("ok", "budget")]
        if not pts:
            continue
        x = [p[0] for p in pts]
        for ax, key in zip(axes, ("wall_s", "cpu_s", "peak_rss_mb"), strict=True):
            ax.plot(x, [max(p[1][key], 1e-2) for p in pts], marker="o", label=step)
    for ax, title in zip(axes, ("wall seconds", "CPU seconds", "peak RSS (MB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle("llmrec bench pipeline: cost of each step by data size (budget-limited steps included)")
    fig.tight_layout()
    path = stem.with_name(stem.name + "_growth.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def run_pipeline(cfg: PipelineConfig, on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    bad = [s for s in cfg.steps if s not in STEPS]
    if bad or not cfg.steps:
        raise ConfigError(f"bad step(s) {bad or '(none)'}; accepted: {', '.join(STEPS)}")
    sizes = [parse_size(s) for s in cfg.sizes]
    result: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in dataclasses.asdict(cfg).items()},
                              "sizes": [], "growth": [], "complete": False}
    for path in cfg.include:
        earlier = json.loads(Path(path).read_text())
        for entry in earlier["sizes"]:
            entry["measured_by"] = entry.get("measured_by") or earlier.get("command", str(path))
        result["sizes"] += earlier["sizes"]
    result["growth"] = growth(result["sizes"])
    sampler = TreeSampler()
    try:
        for size in sizes:
            entry: dict[str, Any] = {"size": size.name, "steps": {}}
            result["sizes"].append(entry)

            def update(e: dict[str, Any], slot: int = len(result["sizes"]) - 1) -> None:
                result["sizes"][slot] = e
                result["growth"] = growth(result["sizes"])
                if on_update:
                    on_update(result)

            done = run_size(cfg, size, sampler, update)
            update(done)
            failed = [s for s, r in done["steps"].items() if r["status"] in ("failed", "timed_out")]
            if failed and not cfg.keep_going:
                break
        else:
            result["complete"] = True
    finally:
        sampler.close()
    return result
