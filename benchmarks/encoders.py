"""Encoder + search latency: the exported ONNX graph under ONNX Runtime + the FAISS index, against
the plain PyTorch way (the checkpoint's own torch module + matmul + topk), on the same real inputs.

OpenVINO bf16 runs the same ONNX file too, but only where the CPU has AMX or avx512_bf16:
elsewhere bf16 is emulated and slower, so it is reported as skipped with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from benchmarks.timing import compare, interleaved


@dataclass
class EncoderBenchConfig:
    checkpoint: Path
    version: Path  # a version folder of a model repository, exported from `checkpoint`
    k: int = 100
    repeats: int = 30
    threads: int = 1
    openvino: bool = True


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _openvino_bf16(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    return core.compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": str(threads)}
    )


def _case_name(inputs: tuple) -> str:
    return "x".join(str(d) for d in inputs[0].shape)


def _paths(module, inputs, feeds, sess, ov_model, index, items_t, k: int) -> dict:
    """The same request three ways; `items_t` is None for encoders that are not followed by a search."""
    import torch

    def torch_path() -> None:
        with torch.inference_mode():
            v = module(*inputs)
            if items_t is not None:
                torch.topk(v @ items_t.T, k)

    def engine_path(run) -> None:
        v = run(feeds)
        if items_t is not None:
            index.search(np.ascontiguousarray(v, dtype=np.float32), k)

    paths = {
        "pytorch_eager": torch_path,
        "onnxruntime_faiss": lambda: engine_path(lambda f: sess.run(None, f)[0]),
    }
    if ov_model is not None:
        paths["openvino_bf16_faiss"] = lambda: engine_path(lambda f: ov_model(f)[0])
    return paths


def run_encoders(cfg: EncoderBenchConfig) -> dict:
    import torch

    from models.bundle import load_bundle

    torch.set_num_threads(cfg.threads)
    faiss.omp_set_num_threads(cfg.threads)
    manifest = json.loads((cfg.version / "manifest.json").read_text())
    bundle = load_bundle(cfg.checkpoint, known_users=False)
    index = faiss.read_index(str(cfg.version / "items.faiss"))
    items_t = torch.from_numpy(np.ascontiguousarray(bundle.item_vectors, dtype=np.float32))
    k = min(cfg.k, len(bundle.item_ids))
    use_ov = cfg.openvino and cpu_has_bf16()
    result: dict = {
        "model": manifest["name"],
        "version": manifest["version"],
        "kind": manifest["kind"],
        "threads": cfg.threads,
        "k": k,
        "openvino_bf16": "measured" if use_ov else "skipped: CPU has neither AMX-BF16 nor avx512_bf16",
        "encoders": {},
    }
    for name, enc in bundle.encoders.items():
        spec = manifest["encoders"].get(name)
        if spec is None:
            continue
        sess = _ort_session(cfg.version / spec["path"], cfg.threads)
        ov_model = _openvino_bf16(cfg.version / spec["path"], cfg.threads) if use_ov else None
        search = name == "user_encoder"
        seen_shapes: set[str] = set()
        cases = {}
        for inputs in enc.sample_inputs:
            case = _case_name(inputs)
            if case in seen_shapes:
                continue
            seen_shapes.add(case)
            feeds = {n: t.numpy() for n, t in zip(enc.input_names, inputs, strict=True)}
            paths = _paths(
                enc.module.eval(), inputs, feeds, sess, ov_model, index, items_t if search else None, k
            )
            cases[case] = compare(interleaved(paths, repeats=cfg.repeats), "pytorch_eager")
        result["encoders"][name] = {"search_included": search, "inputs": enc.input_names, "cases": cases}
    return result


def markdown(result: dict) -> str:
    lines = [
        f"Model {result['model']} v{result['version']} ({result['kind']}), {result['threads']} thread(s), "
        f"top-{result['k']}; OpenVINO bf16: {result['openvino_bf16']}.",
        "",
        "| encoder | input shape | PyTorch eager p50 ms | ONNX Runtime + FAISS p50 ms | speed-up (p50) |",
        "|---|---|---|---|---|",
    ]
    for name, enc in result["encoders"].items():
        for case, paths in enc["cases"].items():
            t, o = paths["pytorch_eager"], paths["onnxruntime_faiss"]
            lines.append(
                f"| {name} | {case} | {t['p50_ms']:.2f} | {o['p50_ms']:.2f} | "
                f"{o['speedup_p50_vs_pytorch_eager']:.2f}x |"
            )
    return "\n".join(lines) + "\n"
