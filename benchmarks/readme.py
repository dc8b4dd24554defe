"""The README's performance section, generated from the result files under benchmarks/results/, so a
figure in the README is always the one a command wrote (`llmrec bench readme` rewrites the part between
the markers; a test checks the committed README matches the committed results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _reruns(results: Path, name: str) -> list[str]:
    """Every `NAME-runN` result after NAME's own, in run order: a repeated measurement reaches the README
    with the first one, never only the run that went best."""
    runs = [p.stem for p in results.glob(f"{name}-run*.json") if p.stem[len(name) + 4:].isdigit()]
    return sorted(runs, key=lambda stem: int(stem[len(name) + 4:]))


def _link(name: str) -> str:
    return f"[{name}.md](benchmarks/results/{name}.md)"


def _encoders(r: dict[str, Any], name: str) -> list[str]:
    lines = []
    for enc, data in r["encoders"].items():
        cases = data["cases"]
        paths = list(next(iter(cases.values())))
        q = data.get("quality_vs_pytorch_fp32", {})
        cells = []
        for p in paths:
            if p == "pytorch-eager:fp32":
                continue
            speed = ", ".join(f"{c} {v[p]['speedup_p50_vs_pytorch-eager:fp32']:.2f}x" for c, v in cases.items())
            overlap = f", top-20 overlap {q[p]['top20_overlap']:.3f}" if p in q else ""
            cells.append(f"{p}: {speed}{overlap}")
        lines.append(f"- {r['model']} {enc}, {r['threads']} thread, speed-up over PyTorch eager fp32 by input shape "
                     f"(batch x length) ({_link(name)}): " + "; ".join(cells) + ".")
    return lines


def _grpc(r: dict[str, Any], name: str) -> list[str]:
    from benchmarks.grpc_load import comparisons, engine_alone, instances_label, torch_label

    parts = []
    for engine, s in r["servers"].items():
        by = {w: {x["concurrency"]: x for x in s.get(w, [])} for w in ("noop", "user_id", "history")}
        flags = " ".join([f"--engine {engine}", *r["config"].get("server_args", [])])
        text = f"`{flags}` (chose {s['engine_chosen'] or '-'}{instances_label(s)})"
        if 1 in by["user_id"] and 1 in by["noop"]:
            text += (f": known user p99 {by['user_id'][1]['p99_ms']:.2f} ms = "
                     f"{by['user_id'][1]['p99_ms'] / by['noop'][1]['p99_ms']:.2f}x the no-op RPC's p99")
        alone = {c: e for c, _, e, _ in engine_alone(s)}
        for c, srv, torch_ in comparisons(r, s):
            text += f"; history at {c} client(s) {srv['qps']:.1f} QPS = {srv['qps'] / torch_['qps']:.2f}x {torch_label(r)}"
            if c in alone:
                text += f" (its engine alone in process {alone[c]['qps'] / torch_['qps']:.2f}x)"
        if "paired" in s:
            text += " (server and PyTorch phases alternating)"
        inst = r.get("instances_compare")
        if inst and engine == next(iter(r["servers"])):
            text += (f"; its {inst['count']} encoder instances at {inst['one_instance']['concurrency']} clients: "
                     f"{inst['instances']['qps'] / inst['one_instance']['qps']:.2f}x the QPS of one (alternating)")
        parts.append(text)
    return [f"- {r['model']} over gRPC{_workload(r)} ({_link(name)}): " + "; ".join(parts) + "."]


def _grpc_models(r: dict[str, Any], name: str) -> list[str]:
    from benchmarks.grpc_models import readme_line

    return [readme_line(r, _link(name))]


def _workload(r: dict[str, Any]) -> str:
    """Which histories the figures are for: a ratio at fixed L is not the same claim as one over real lengths."""
    tokens = r.get("requests", {}).get("encoder_input_length")
    if not tokens:
        return ""
    if r["config"].get("fixed_history"):
        return f", histories of exactly {r['config']['history_len']} items = {tokens['p50']:g} input tokens"
    return (f", real histories of up to {r['config']['history_len']} items = {tokens['p10']:g}-{tokens['p90']:g} "
            f"input tokens (median {tokens['p50']:g})")


def _scale(r: dict[str, Any], name: str) -> list[str]:
    from benchmarks.scale import exact_vs, operating_point

    cfg = r["config"]
    rows = []
    for row in r["rows"]:
        best = operating_point(row, cfg["min_recall"])
        exact_x = row["paths"]["faiss_flat"]["speedup_p50_vs_torch_matmul_topk"]
        text = f"{row['items']:,} items: exact FAISS {exact_x:.1f}x PyTorch; " + (
            f"{best[0][len('faiss_'):]} {best[2]:.1f}x exact at recall@{row['k']} {best[1]:.3f}" if best
            else f"no approximate setting reached recall {cfg['min_recall']}")
        if "faiss_gpu_flat" in row["paths"]:
            gpu = operating_point(row, cfg["min_recall"], "gpu")
            text += (f"; on the GPU exact {exact_vs(row, 'faiss_gpu_flat'):.1f}x exact FAISS on the CPU" + (
                f", {gpu[0][len('faiss_gpu_'):]} {gpu[2]:.1f}x GPU exact at recall {gpu[1]:.3f}" if gpu else ""))
        rows.append(text)
    source = cfg.get("vectors_from") or "synthetic clustered vectors"
    return [f"- Catalog scale, one query on one thread, dim {r['rows'][0]['dim']}, {source}, fastest approximate "
            f"index with recall@{cfg['k']} >= {cfg['min_recall']} ({_link(name)}): " + "; ".join(rows) + "."]


def _resilience(r: dict[str, Any], name: str) -> list[str]:
    met = sum(bool(v) for v in r["targets"].values())
    f = r["flood"]
    return [f"- Resilience ({_link(name)}): {met} of {len(r['targets'])} targets met; under a "
            f"{f['flood_clients']}-client flood of LM history requests, known-user requests of another model "
            f"succeeded {f['cheap_under_flood']['success']:.1%} with p99 {f['p99_ratio']:.2f}x their idle p99; RSS "
            f"after {r['memory']['swaps']} swaps {r['memory']['rss_ratio']:.2f}x the first load."]


def render(results: Path) -> str:
    lines = ["Generated by `llmrec bench readme` from the result files (each records the command that wrote it); "
             "ratios are measured in one run on one machine, the machine is named in each file.", ""]
    for name, fmt in (("bench_encoders_ml100k-cllm4rec", _encoders),
                      ("bench_encoders_ml100k-cllm4rec-d8-lora", _encoders),
                      ("bench_encoders_ml100k-cllm4rec-d8-mean", _encoders), ("bench_encoders_ml100k-tcf", _encoders),
                      ("bench_grpc_ml100k-cllm4rec", _grpc), ("bench_grpc_ml100k-cllm4rec-d8-lora", _grpc),
                      ("bench_grpc_ml100k-cllm4rec-d8-lora-gate098", _grpc), ("bench_grpc_ml100k-cllm4rec-d8-mean", _grpc),
                      ("bench_grpc_ml100k-cllm4rec-d8-mean-L128", _grpc),
                      ("bench_grpc_ml100k-tcf", _grpc), ("bench_grpc_ml100k-tcf-instances2", _grpc),
                      ("bench_grpc_ml100k-student", _grpc_models),
                      ("bench_scale", _scale), ("bench_scale_real-tcf", _scale),
                      ("serving_resilience_ml100k", _resilience)):
        for run in [name, *_reruns(results, name)]:
            r = _load(results, run)
            if r is not None:
                lines += fmt(r, run)
    return "\n".join(lines) + "\n"


def update(readme: Path, results: Path) -> bool:
    """Rewrites the section between the markers; True when the README changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} section to rewrite")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render(results)}{END}{tail}"
    changed = new != text
    if changed:
        readme.write_text(new)
    return changed
