"""Encoder + search latency per engine on real inputs, against the plain PyTorch way (the checkpoint's
own torch module + matmul + topk), interleaved in one process so machine noise hits every path alike.

Paths: PyTorch eager fp32 (the baseline) and bf16 autocast where the CPU has AMX / avx512_bf16 (and on
CUDA, fp32 and fp16 autocast, where torch sees a GPU: the CUDA engines' own baseline), then
every engine:precision this machine offers the server (server/engines: ONNX Runtime, OpenVINO fp32 /
bf16 / int8 weights, CUDA where present), each followed by the FAISS search the server does. Inputs
are real: the LM user encoder gets real users' prompts cut to several lengths (built by the server's
own request adapter), SASRec real histories, the item encoder real item texts. Each engine's quality
is reported beside its speed: cosine and top-20 overlap against PyTorch fp32 on the probe users.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.timing import compare, interleaved
from repository import files as F
from repository.manifest import Manifest, read_manifest
from repository.reader import read_known_users
from server.machine import detect


@dataclass
class EncoderBenchConfig:
    checkpoint: Path
    version: Path  # a version folder of a model repository, exported from `checkpoint`
    k: int = 100
    repeats: int = 20
    threads: int = 1
    lengths: list[int] = field(default_factory=lambda: [32, 64, 128])  # LM prompt lengths (tokens), batch 1
    batch: int = 8  # plus one batched case at the longest length
    engines: list[str] = field(default_factory=lambda: ["auto"])  # "auto" = every candidate on this machine
    int8: bool = True  # include int8-weight engines in "auto"


def _lm_cases(version: Path, manifest: Manifest, lengths: list[int], batch: int) -> dict[str, list[list[int]]]:
    """Real users' rec prompts of about `lengths` tokens, through the server's own adapter."""
    from server.adapters.cllm4rec_lm import Cllm4recPrompt

    adapter = Cllm4recPrompt(version, manifest)
    _, indptr, indices = read_known_users(version)
    overhead = len(adapter.payload(0, [], lambda rows: np.zeros(0)))
    users = sorted(range(len(indptr) - 1), key=lambda u: -(indptr[u + 1] - indptr[u]))[:batch]
    cases = {}
    for length in lengths:
        n = max(1, min(length - overhead, manifest.cllm4rec.max_history))
        cases[f"1x{n + overhead}"] = [adapter.payload(u, indices[indptr[u]:indptr[u + 1]][-n:], lambda r: r)
                                      for u in users[:1]]
    n = max(1, min(max(lengths) - overhead, manifest.cllm4rec.max_history))
    cases[f"{batch}x{n + overhead}"] = [adapter.payload(u, indices[indptr[u]:indptr[u + 1]][-n:], lambda r: r)
                                        for u in users]
    return cases


def _feeds(manifest: Manifest, version: Path, role: str, bundle_enc: Any, lengths: list[int],
           batch: int) -> dict[str, dict[str, np.ndarray]]:
    """Named cases -> feeds (input name -> array) for one encoder."""
    names = bundle_enc.input_names
    if role == "user_encoder" and manifest.kind == "cllm4rec":
        from server.adapters.cllm4rec_lm import Cllm4recPrompt

        adapter = Cllm4recPrompt(version, manifest)
        return {case: adapter.feeds(p, names) for case, p in _lm_cases(version, manifest, lengths, batch).items()}
    # SASRec and item encoders have fixed shapes: the sample inputs cover batch 1 and more
    out = {}
    for inputs in bundle_enc.sample_inputs:
        case = "x".join(str(d) for d in inputs[0].shape)
        out.setdefault(case, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    return out


def _quality(run: Callable[[dict[str, np.ndarray]], np.ndarray], ref_cases: list[dict[str, np.ndarray]],
             ref_out: np.ndarray, items: np.ndarray) -> dict[str, float]:
    from server.gate import _cosine, _overlap

    out = np.concatenate([run(c) for c in ref_cases])
    return {"cosine": float(_cosine(out, ref_out).mean()), "top20_overlap": float(_overlap(out, ref_out, items).mean())}


def _request(run: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: dict[str, np.ndarray], torch_side: bool,
             search: bool, index: Any, items_t: Any, k: int) -> None:
    """One request's work on a path: the encoder, then (user encoders) the top-k search of that path."""
    v = run(feeds)
    if not search:
        return
    if torch_side:
        import torch

        torch.topk(torch.from_numpy(v) @ items_t.T, k)
    else:
        index.search(np.ascontiguousarray(v, dtype=np.float32), k)


def torch_runs(module: Any, names: list[str], device: str, low: bool
               ) -> dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """PyTorch eager on `device`, fp32 and (where `low`) its low-precision autocast: bf16 on a CPU, fp16
    on CUDA. Inputs go to the device and the vector comes back per call, as with every engine."""
    import torch

    suffix, dtype, low_name = ("", torch.bfloat16, "bf16") if device == "cpu" else ("-cuda", torch.float16, "fp16")

    def run(feeds: dict[str, np.ndarray], autocast: bool = False) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=autocast):
            return module(*(torch.from_numpy(feeds[n]).to(device) for n in names)).float().cpu().numpy()

    runs: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {f"pytorch-eager{suffix}:fp32": run}
    if low:
        runs[f"pytorch-eager{suffix}:{low_name}"] = functools.partial(run, autocast=True)
    return runs


def run_encoders(cfg: EncoderBenchConfig) -> dict:
    import torch

    from models.bundle import load_bundle
    from repository.reference import encoder_reference
    from server.engines import ENGINES, candidates, engine_candidates

    torch.set_num_threads(cfg.threads)
    faiss.omp_set_num_threads(cfg.threads)
    machine = detect()
    manifest = read_manifest(cfg.version)
    bundle = load_bundle(cfg.checkpoint, known_users=False)
    index = faiss.read_index(str(cfg.version / F.ITEMS_INDEX))
    items = np.ascontiguousarray(bundle.item_vectors, dtype=np.float32)
    items_t = torch.from_numpy(items)
    k = min(cfg.k, len(items))
    engines = [c for e in cfg.engines for c in (candidates(machine, int8=cfg.int8) if e == "auto"
                                                 else engine_candidates(machine, e))]
    result: dict = {"model": manifest.name, "version": manifest.version, "kind": manifest.kind,
                    "threads": cfg.threads, "k": k, "cpu_bf16": machine.cpu_bf16,
                    "engines": [f"{e}:{p}" for e, p in engines], "encoders": {}}
    for name, enc in bundle.encoders.items():
        spec = manifest.encoders.get(name)
        if spec is None:
            continue
        graph = cfg.version / spec.path
        loaded = {f"{e}:{p}": ENGINES[e].load(graph, p, cfg.threads) for e, p in dict.fromkeys(engines)}
        search = name == "user_encoder"
        module = enc.module.eval()
        runs = torch_runs(module, enc.input_names, "cpu", low=machine.cpu_bf16)
        if torch.cuda.is_available():  # the GPU engines' own baseline: PyTorch on the same GPU
            runs |= torch_runs(copy.deepcopy(module).cuda(), enc.input_names, "cuda", low=True)
        runs |= {key: e.run for key, e in loaded.items()}
        quality: dict[str, dict[str, float]] = {}
        ref = encoder_reference(cfg.version, spec)
        if ref is not None:
            ref_cases, ref_outs = (ref.probe_cases or ref.cases), (ref.probe_outputs or ref.outputs)
            quality = {key: _quality(run, ref_cases, np.concatenate(ref_outs), items) for key, run in runs.items()}
        cases = {}
        for case, feeds in _feeds(manifest, cfg.version, name, enc, cfg.lengths, cfg.batch).items():
            paths = {key: functools.partial(_request, run, feeds, key.startswith("pytorch"), search, index, items_t, k)
                     for key, run in runs.items()}
            cases[case] = compare(interleaved(paths, repeats=cfg.repeats), "pytorch-eager:fp32")
        result["encoders"][name] = {"search_included": search, "cases": cases, "quality_vs_pytorch_fp32": quality}
    return result


def markdown(result: dict) -> str:
    lines = [f"Model {result['model']} v{result['version']} ({result['kind']}), {result['threads']} thread(s), "
             f"top-{result['k']} search after each encoder call; CPU bf16: {'yes' if result['cpu_bf16'] else 'no'}. "
             "Speed-up = PyTorch eager fp32 p50 / path p50, measured interleaved in one run; quality against "
             "PyTorch fp32 on the export's probe users (cosine of the vectors, overlap of the top-20 items).", ""]
    for name, enc in result["encoders"].items():
        paths = list(next(iter(enc["cases"].values())))
        lines += [f"### {name}", "", "| path | " + " | ".join(f"{c} p50 ms (x)" for c in enc["cases"]) +
                  " | cosine | top-20 overlap |", "|---|" + "---|" * (len(enc["cases"]) + 2)]
        for p in paths:
            cells = [f"{c[p]['p50_ms']:.2f} ({c[p]['speedup_p50_vs_pytorch-eager:fp32']:.2f}x)"
                     for c in enc["cases"].values()]
            q = enc["quality_vs_pytorch_fp32"].get(p, {})
            qual = [f"{q[m]:.4f}" if m in q else "-" for m in ("cosine", "top20_overlap")]
            lines.append(f"| {p} | " + " | ".join(cells + qual) + " |")
        lines.append("")
    return "\n".join(lines)
