"""Several models of one repository under the same load in one run (`llmrec bench grpc --bench.models A B`).

Issue 28 asks whether the distilled student answers history requests 10-20x faster than its teacher. A ratio
between two runs minutes apart on a shared machine measures the machine's drift as much as the models, so
here one server serves every model, the same history requests (exactly L items each) go to each, and their
closed-loop phases alternate round by round with the PyTorch eager run of the baseline model's checkpoint;
the targets are judged on those paired figures when the report is written, never typed in. A sweep over
concurrency per model follows, for the plot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.grpc_load import (
    GrpcBenchConfig,
    _latest_version,
    _load_requests,
    _request_lengths,
    _torch_answer,
    closed_loop,
    instances_label,
    paired,
    torch_label,
)
from common.errors import ConfigError
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from repository import files as F
from repository.arrays import read_json_list
from repository.manifest import Manifest, read_manifest
from repository.reader import read_known_users
from server.spawn import spawn_server, stop_server

EAGER = "__pytorch_eager__"  # the baseline checkpoint's side in the paired phases (not a model name)
WARMUP = 3  # requests per model and history length before its phases: an engine may prepare kernels per shape


def parse_targets(flag: str, values: list[str]) -> dict[int, float]:
    """"N:X" pairs (clients: bound) -> {N: X}."""
    out = {}
    for v in values:
        clients, _, bound = v.partition(":")
        try:
            out[int(clients)] = float(bound)
        except ValueError:
            raise ConfigError(f"--bench.{flag} {v!r}: expected CLIENTS:VALUE, e.g. 1:20") from None
    return out


def _check(cfg: GrpcBenchConfig) -> str:
    """The baseline model's name, once the flags make sense together."""
    if cfg.model:
        raise ConfigError("give --bench.model (one model) or --bench.models (several), not both")
    if len(cfg.models) < 2 or len(set(cfg.models)) != len(cfg.models):
        raise ConfigError(f"--bench.models needs two or more different model names; got {' '.join(cfg.models)}")
    baseline = cfg.baseline_model or cfg.models[-1]
    if baseline not in cfg.models:
        raise ConfigError(f"--bench.baseline-model {baseline!r} is not one of --bench.models ({', '.join(cfg.models)})")
    if cfg.open_loop_rates or cfg.reference_code is not None:
        raise ConfigError("--bench.open-loop-rates and --bench.reference-code measure one model; "
                          "leave them out with --bench.models")
    if not cfg.history_lengths or min(cfg.history_lengths) < 1:
        raise ConfigError(f"--bench.history-lengths must be one or more positive item counts; got {cfg.history_lengths}")
    parse_targets("target-qps-ratio", cfg.target_qps_ratio)  # a mistyped target fails before any server starts
    parse_targets("target-p99-ms", cfg.target_p99_ms)
    if not cfg.baseline_concurrency:
        raise ConfigError("--bench.baseline-concurrency: give at least one number of clients for the paired phases")
    return baseline


def _versions(cfg: GrpcBenchConfig) -> dict[str, tuple[Path, Manifest]]:
    out = {}
    for name in cfg.models:
        version_dir = cfg.repository / name / str(_latest_version(cfg.repository, name))
        manifest = read_manifest(version_dir)
        if not manifest.capabilities.history:
            raise ConfigError(f"model {name} ({manifest.kind}/{manifest.user_tower}) does not answer history "
                              "requests; --bench.models compares history workloads")
        out[name] = (version_dir, manifest)
    return out


def _requests(cfg: GrpcBenchConfig, baseline_dir: Path, versions: dict[str, tuple[Path, Manifest]]
              ) -> dict[int, tuple[list[str], list[list[str]]]]:
    """The baseline model's known users' histories, cut to exactly L items, per L; every model must know
    every item sent, or the models would not answer the same requests."""
    _, indptr, _ = read_known_users(baseline_dir)
    longest = int(np.diff(indptr).max()) if len(indptr) > 1 else 0
    if max(cfg.history_lengths) > longest:
        raise ConfigError(f"--bench.history-lengths {max(cfg.history_lengths)}: no known user of {baseline_dir} has "
                          f"that many items (the longest history has {longest})")
    out = {n: _load_requests(baseline_dir, 500, n, fixed=True) for n in cfg.history_lengths}
    sent = {x for _, histories in out.values() for h in histories for x in h}
    for name, (version_dir, _) in versions.items():
        missing = sorted(sent - set(read_json_list(version_dir / F.ITEM_IDS)))
        if missing:
            raise ConfigError(f"model {name} does not know {len(missing)} item(s) of the histories sent (e.g. "
                              f"{missing[0]!r}); --bench.models compares models over one item catalogue")
    return out


def _eager_bundle(cfg: GrpcBenchConfig, baseline: str, manifest: Manifest) -> Any:
    """The baseline's checkpoint loaded once (an LM loads in seconds, not per history length), checked to be
    the checkpoint the baseline model was exported from as far as kind and catalogue go."""
    from models.bundle import load_bundle

    bundle = load_bundle(cfg.checkpoint, known_users=False)
    if bundle.kind != manifest.kind or len(bundle.item_ids) != manifest.num_items:
        raise ConfigError(f"--bench.checkpoint {cfg.checkpoint} is a {bundle.kind} checkpoint of {len(bundle.item_ids)} "
                          f"items; the baseline model {baseline} is {manifest.kind} with {manifest.num_items}: pass "
                          "the checkpoint the baseline model was exported from")
    if "user_encoder" not in bundle.encoders:
        raise ConfigError(f"--bench.checkpoint {cfg.checkpoint} has no history encoder to run in PyTorch")
    return bundle


def run_models(cfg: GrpcBenchConfig) -> dict[str, Any]:
    baseline = _check(cfg)
    versions = _versions(cfg)
    baseline_dir, baseline_manifest = versions[baseline]
    requests = _requests(cfg, baseline_dir, versions)
    result: dict[str, Any] = {
        "models": [{"name": n, "version": int(d.name), "kind": m.kind, "user_tower": m.user_tower}
                   for n, (d, m) in versions.items()],
        "baseline_model": baseline, "servers": {},
        "requests": [{"history_len": n, "encoder_input": {name: _request_lengths(d, m, histories)
                                                         for name, (d, m) in versions.items()}}
                     for n, (_, histories) in requests.items()],
        "config": {"seconds": cfg.seconds, "top_k": cfg.top_k, "history_lengths": cfg.history_lengths,
                   "concurrency": cfg.concurrency, "baseline_concurrency": cfg.baseline_concurrency,
                   "server_args": cfg.server_args, "paired_rounds": cfg.paired_rounds,
                   "paired_seconds": cfg.paired_seconds, "engines": cfg.engines,
                   "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
                   "targets": {"qps_ratio": parse_targets("target-qps-ratio", cfg.target_qps_ratio),
                               "p99_ms": parse_targets("target-p99-ms", cfg.target_p99_ms)}}}
    eager: dict[int, Callable[[int], Any]] = {}
    if cfg.checkpoint is not None:
        from models.training.devices import resolve_device  # torch: only where the baseline runs

        result["pytorch_device"] = str(resolve_device(cfg.torch_device, local_rank=0))
        bundle = _eager_bundle(cfg, baseline, baseline_manifest)
        for n, (users, histories) in requests.items():
            answer = _torch_answer(bundle, baseline_dir, users, histories, cfg.top_k, result["pytorch_device"])
            assert answer is not None  # _eager_bundle checked the encoder
            eager[n] = answer
    for engine in cfg.engines:
        result["servers"][engine] = _serve(cfg, engine, {n: d for n, (d, _) in versions.items()}, requests, eager)
    result["targets"] = targets(result)
    return result


def _serve(cfg: GrpcBenchConfig, engine: str, version_dirs: dict[str, Path],
           requests: dict[int, tuple[list[str], list[list[str]]]], eager: dict[int, Callable[[int], Any]]
           ) -> dict[str, Any]:
    proc, target = spawn_server(cfg.repository, ["--metrics-port", "-1", "--engine", engine, *cfg.server_args])
    try:
        from client import RecommenderClient

        with RecommenderClient(target) as c:
            listed = {m.name: m.versions for m in c.list_models().models}
        out: dict[str, Any] = {"models": {}, "workloads": []}
        for name, version_dir in version_dirs.items():
            info = next((v for v in listed[name] if v.version == int(version_dir.name)), listed[name][-1])
            out["models"][name] = {"engine_chosen": info.engine, "index_backend": info.index_backend,
                                   "encoder_instances": info.encoder_instances}
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for n, (_, histories) in requests.items():
                out["workloads"].append(_workload(cfg, stub, list(version_dirs), n, histories, eager.get(n), out))
    finally:
        stop_server(proc)
    return out


def _workload(cfg: GrpcBenchConfig, stub: pb_grpc.RecommenderStub, names: list[str], n: int,
              histories: list[list[str]], eager: Callable[[int], Any] | None, server: dict[str, Any]
              ) -> dict[str, Any]:
    """One history length: warm-up, the paired phases at each baseline concurrency, then the sweep."""
    def call_of(name: str) -> Callable[[int], Any]:
        return lambda i: stub.Recommend(pb.RecommendRequest(model=name, history=histories[i % len(histories)],
                                                            top_k=cfg.top_k), timeout=60)

    calls = {name: call_of(name) for name in names}
    for name, call in calls.items():  # which model and version answered: the report shows each was queried
        answers = [call(i) for i in range(WARMUP)]
        server["models"][name].setdefault("answered", {})[str(n)] = {
            "model": answers[-1].model, "version": answers[-1].version, "items": len(answers[-1].items)}
    sides: dict[str, Callable[[int], Any]] = dict(calls)
    if eager is not None:
        sides[EAGER] = eager
    rows = []
    for c in cfg.baseline_concurrency:
        pair = paired(sides, c, cfg.paired_rounds, cfg.paired_seconds)
        rows.append({"clients": c, "models": {name: pair[name] for name in names},
                     **({"pytorch": pair[EAGER]} if EAGER in pair else {})})
    sweep: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for c in cfg.concurrency:  # the models take turns at each point, so a slow spell falls on both
        for name in names:
            sweep[name].append(closed_loop(calls[name], c, cfg.seconds, cfg.max_requests))
    return {"history_len": n, "paired": rows, "sweep": sweep}


def _errors(row: dict[str, Any]) -> int:
    return sum(row["errors"].values())


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each non-baseline model against the configured targets, per engine and history length, from the paired
    phases: QPS over the baseline model's server at N clients, p99 at N clients. A side with errors does not
    meet a target (fast failures are not answers); a target at a client count without paired phases is
    reported as not measured (met None)."""
    base = result["baseline_model"]
    goal = result["config"]["targets"]
    out = []
    for engine, server in result["servers"].items():
        for w in server["workloads"]:
            by_clients = {p["clients"]: p for p in w["paired"]}
            for m in result["models"]:
                name = m["name"]
                if name == base:
                    continue
                for what, table in (("qps_ratio", goal["qps_ratio"]), ("p99_ms", goal["p99_ms"])):
                    for clients, bound in sorted((int(c), float(b)) for c, b in table.items()):
                        entry: dict[str, Any] = {"engine": engine, "model": name, "history_len": w["history_len"],
                                                 "clients": clients, "what": what, "target": bound,
                                                 "measured": None, "met": None}
                        p = by_clients.get(clients)
                        if p is not None:
                            mine = p["models"][name]
                            if what == "qps_ratio":
                                theirs = p["models"][base]["qps"]
                                entry["measured"] = mine["qps"] / theirs if theirs else float("inf")
                                entry["met"] = entry["measured"] >= bound
                            else:
                                entry["measured"] = mine["p99_ms"]
                                entry["met"] = bool(entry["measured"] <= bound)
                            entry["met"] = bool(entry["met"]) and not _errors(mine)
                        out.append(entry)
    return out


def target_text(t: dict[str, Any], baseline: str) -> tuple[str, str, str]:
    """(target, measured, verdict) cells of a report."""
    s = "" if t["clients"] == 1 else "s"
    if t["what"] == "qps_ratio":
        goal = f"QPS >= {t['target']:g}x {baseline} at {t['clients']} client{s}"
        got = "-" if t["measured"] is None else f"{t['measured']:.2f}x"
    else:
        goal = f"p99 <= {t['target']:g} ms at {t['clients']} client{s}"
        got = "-" if t["measured"] is None else f"{t['measured']:.2f} ms"
    verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "not met")
    return goal, got, verdict


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def markdown(result: dict[str, Any]) -> str:
    cfg, base = result["config"], result["baseline_model"]
    names = [m["name"] for m in result["models"]]
    eager = f"{torch_label(result)} ({base}'s checkpoint)"
    lines = ["Models of one repository, one server, the same history requests to each: " + "; ".join(
        f"{m['name']} v{m['version']} ({m['kind']}/{m['user_tower']}{', the baseline' if m['name'] == base else ''})"
        for m in result["models"]) + f". Top-{cfg['top_k']}, closed-loop clients on loopback; latencies from HDR "
        "histograms." + (f" Server flags: `{' '.join(cfg['server_args'])}`." if cfg.get("server_args") else ""), "",
        "Each workload sends known users' histories cut to exactly the stated number of items. Paired phases: at "
        f"each number of clients the models{' and ' + eager if cfg.get('checkpoint') else ''} take turns in "
        f"{cfg['paired_seconds']:g} s phases, {cfg['paired_rounds']} rounds each, and each side pools its own "
        "phases." + (" The PyTorch side encodes, scores every item and takes the top-k per request in the bench "
                     "process, one thread per caller, no batching." if cfg.get("checkpoint") else ""), "",
        "Encoder input per request (median): " + "; ".join(
            f"{r['history_len']} items: " + ", ".join(
                f"{name} {r['encoder_input'][name].get('encoder_input_length', r['encoder_input'][name]['history_items'])['p50']:g}"
                for name in names) for r in result["requests"]) + " (prompt tokens for an LM, item rows for SASRec).", ""]
    verdicts = {(t["engine"], t["model"], t["history_len"], t["clients"], t["what"]): t for t in targets(result)}
    for engine, server in result["servers"].items():
        lines += [f"### server --engine {engine}: " + "; ".join(
            f"{name} chose {s['engine_chosen'] or 'none'} (index {s['index_backend']}{instances_label(s)})"
            for name, s in server["models"].items()), "",
            "| history items | clients | side | QPS | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
        for w in server["workloads"]:
            for p in w["paired"]:
                sides = [*p["models"].items(), *([(eager, p["pytorch"])] if "pytorch" in p else [])]
                lines += [f"| {w['history_len']} | {p['clients']} | {side} | {r['qps']:.1f} | {r['p50_ms']:.2f} | "
                          f"{r['p99_ms']:.2f} | {_errors(r)} |" for side, r in sides]
        lines += ["", "Ratios from the same phases (QPS: model / other; p50: other's / model's):", "",
                  f"| history items | clients | model | QPS / {base} | p50 speed-up vs {base} | QPS / {eager} | "
                  f"p50 speed-up vs {eager} |", "|---|---|---|---|---|---|---|"]
        for w in server["workloads"]:
            for p in w["paired"]:
                b, t = p["models"][base], p.get("pytorch")
                for name, r in p["models"].items():
                    if name == base:
                        continue
                    lines.append(f"| {w['history_len']} | {p['clients']} | {name} | {_ratio(r['qps'], b['qps'])} | "
                                 f"{_ratio(b['p50_ms'], r['p50_ms'])} | "
                                 f"{_ratio(r['qps'], t['qps']) if t else '-'} | "
                                 f"{_ratio(t['p50_ms'], r['p50_ms']) if t else '-'} |")
        mine = [t for k, t in verdicts.items() if k[0] == engine]
        if mine:
            lines += ["", "Targets (issue 28), judged on the paired phases above:", "",
                      "| model | history items | target | measured | |", "|---|---|---|---|---|"]
            lines += [f"| {t['model']} | {t['history_len']} | " + " | ".join(target_text(t, base)) + " |" for t in mine]
        lines += ["", f"Sweep: each model in turn at each point, closed loop, {cfg['seconds']:g} s per point:", "",
                  "| history items | clients | " + " | ".join(f"{n} QPS | {n} p99 ms" for n in names) + " |",
                  "|---|---|" + "---|---|" * len(names)]
        for w in server["workloads"]:
            for i, c in enumerate(cfg["concurrency"]):
                cells = " | ".join(f"{w['sweep'][n][i]['qps']:.1f} | {w['sweep'][n][i]['p99_ms']:.2f}" for n in names)
                lines.append(f"| {w['history_len']} | {c} | {cells} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], prefix: Path) -> list[Path]:
    """p99 latency and QPS vs concurrency: a panel per history length, a line per model (the sweep), and the
    PyTorch eager baseline's paired points dashed; PNG files named as the one-model bench names them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric, ylabel, name in (("p99_ms", "p99 latency (ms, log)", "latency"), ("qps", "requests/s (log)", "qps")):
        for engine, server in result["servers"].items():
            workloads = server["workloads"]
            fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 4.2), squeeze=False,
                                     sharey=True)
            for ax, w in zip(axes[0], workloads, strict=True):
                for model, rows in w["sweep"].items():
                    ax.plot([r["concurrency"] for r in rows], [r[metric] for r in rows], marker="o",
                            label=f"{model} ({server['models'][model]['engine_chosen'] or engine})")
                eager = [p["pytorch"] for p in w["paired"] if "pytorch" in p]
                if eager:
                    ax.plot([r["concurrency"] for r in eager], [r[metric] for r in eager], marker="s",
                            linestyle="--", label=f"{result['baseline_model']} ({torch_label(result)})")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("concurrent clients")
                ax.set_title(f"history of {w['history_len']} items", fontsize=9)
                ax.grid(True, which="both", alpha=0.3)
            axes[0][0].set_ylabel(ylabel)
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"{' vs '.join(m['name'] for m in result['models'])}: {ylabel.split(' (')[0]} vs concurrency"
                         + (f" (--engine {engine})" if len(result["servers"]) > 1 else ""), fontsize=10)
            fig.tight_layout()
            suffix = "" if len(result["servers"]) == 1 else f"_{engine.replace(':', '-')}"
            path = prefix.with_name(f"{prefix.name}{suffix}_{name}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def readme_line(result: dict[str, Any], link: str) -> str:
    """The README's line for a --bench.models run: per history length and client count, each model's QPS over
    the baseline model's and over the PyTorch eager baseline, its p99, and the verdict of every target."""
    base = result["baseline_model"]
    verdicts = {(t["engine"], t["model"], t["history_len"], t["clients"], t["what"]): t for t in targets(result)}
    parts = []
    for engine, server in result["servers"].items():
        chose = ", ".join(f"{n} {s['engine_chosen'] or '-'}" for n, s in server["models"].items())
        cells = []
        for w in server["workloads"]:
            for p in w["paired"]:
                for name, r in p["models"].items():
                    if name == base:
                        continue
                    text = f"{name} {w['history_len']} items, {p['clients']} client{'s' if p['clients'] != 1 else ''}: "
                    text += f"{_ratio(r['qps'], p['models'][base]['qps'])} {base}'s QPS"
                    q = verdicts.get((engine, name, w["history_len"], p["clients"], "qps_ratio"))
                    if q:
                        text += f" (target {q['target']:g}x: {target_text(q, base)[2]})"
                    if "pytorch" in p:
                        text += f", {_ratio(r['qps'], p['pytorch']['qps'])} {torch_label(result)}"
                    text += f", p99 {r['p99_ms']:.2f} ms"
                    t = verdicts.get((engine, name, w["history_len"], p["clients"], "p99_ms"))
                    if t:
                        text += f" (target {t['target']:g} ms: {target_text(t, base)[2]})"
                    cells.append(text)
        parts.append(f"`--engine {engine}` (chose {chose}): " + "; ".join(cells))
    names = " vs ".join(m["name"] for m in result["models"])
    return f"- {names} over gRPC, paired in one run, histories of exactly N items ({link}): " + "; ".join(parts) + "."
