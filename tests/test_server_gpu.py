"""The GPU plug-ins against the exact answers: ONNX Runtime's CUDA execution provider (fp32, fp16) and
FAISS on a GPU. Every test also runs its CPU counterpart, so the checks themselves run on every machine;
the GPU cases skip, with the reason, where no GPU is visible or the GPU builds are not installed
(`LLMREC_GPU=1 make setup`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from repo_fixtures import TinyModel, running_server, write_cllm4rec, write_tcf

from export.index import IndexParams, build_index, save_index
from repository.manifest import IndexSection
from server import indexes
from server.machine import detect

MACHINE = detect()
NEEDS_CUDA_EP = pytest.mark.skipif(
    not (MACHINE.cuda_provider and MACHINE.cuda_devices),
    reason="needs a visible GPU with ONNX Runtime's CUDA execution provider and FAISS's GPU build "
           "(the gpu install extra: LLMREC_GPU=1 make setup)")
NEEDS_FAISS_GPU = pytest.mark.skipif(
    not indexes.FaissGpu.supports(MACHINE, "flat"),
    reason="needs a visible GPU and FAISS's GPU build (faiss-gpu-cu12, the gpu install extra)")


def _expected(model: TinyModel, history: list[str], k: int) -> tuple[list[str], np.ndarray]:
    vector = model.history_vector(history)
    return model.top_k(vector, k), model.item_vectors @ vector


@pytest.mark.parametrize("engine", [
    "onnxruntime-cpu:fp32",
    pytest.param("onnxruntime-cuda:fp32", marks=NEEDS_CUDA_EP),
    pytest.param("onnxruntime-cuda:fp16", marks=NEEDS_CUDA_EP),
])
def test_an_engine_serves_the_exact_answers_or_the_gate_refuses_it(tmp_path: Path, engine: str) -> None:
    models = {"tiny-cllm": write_cllm4rec(tmp_path), "tiny-tcf": write_tcf(tmp_path)}
    histories = {"tiny-cllm": ["i3", "i4", "i5", "i9"], "tiny-tcf": ["t1", "t2", "t7"]}
    fp16 = engine.endswith("fp16")
    with running_server(tmp_path, engine=engine, index_backend="faiss-cpu") as (srv, client):
        for name, model in models.items():
            with srv.registry.use(name) as mv:
                for role, served in mv.engines.items():
                    trial = next(t for t in mv.gate_trials[role] if t.label() == engine)
                    assert trial.reason or trial.passed, (name, role)  # a refusal always says why
                    if not fp16:  # fp32 on any device is the graph itself
                        assert trial.passed and trial.cosine > 0.9999 and served == engine, (name, role, trial)
                    else:  # the gate decides; a refused precision never serves
                        assert trial.cosine is not None and trial.cosine > 0.99, (name, role, trial)  # it ran
                        assert served == (engine if trial.passed else "onnxruntime-cpu:fp32"), (name, role, trial)
            info = next(m for m in client.list_models().models if m.name == name).versions[0]
            assert info.engine == mv.engines["user_encoder"] and info.index_backend == "faiss-cpu"
            want, scores = _expected(model, histories[name], 5)
            rec = client.recommend(name, history=histories[name], top_k=5, include_history=True)
            got = [i for i, _ in rec.items]
            tol = 2e-2 * float(np.abs(scores).max()) if fp16 else 1e-4
            assert np.allclose([s for _, s in rec.items], scores[model.rows(got)], atol=tol), name
            if not fp16:
                assert got == want, name


def _index_file(tmp_path: Path, vectors: np.ndarray, index_type: str) -> tuple[Path, IndexSection]:
    index, used = build_index(vectors, IndexParams(type=index_type, nlist=8, nprobe=8))
    path = tmp_path / f"{index_type}.faiss"
    save_index(index, path)
    return path, IndexSection(index_type, used)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
@pytest.mark.parametrize("backend", ["faiss-cpu", pytest.param("faiss-gpu", marks=NEEDS_FAISS_GPU)])
def test_an_index_backend_answers_like_exact_search(tmp_path: Path, backend: str, index_type: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    path, section = _index_file(tmp_path, vectors, index_type)
    assert section.params.get("nprobe", 8) == section.params.get("nlist", 8) == 8  # every cell visited
    index = indexes.BACKENDS[backend].load(path, section, vectors)
    assert (index.name, index.ntotal, index.dim) == (backend, 500, 16)
    queries = rng.normal(size=(4, 16)).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    scores, ids = index.search(queries, 10)
    assert np.array_equal(ids, exact)
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, exact, axis=1), atol=1e-4)
    with ThreadPoolExecutor(8) as pool:  # the server searches from many threads at once
        answers = list(pool.map(lambda _: index.search(queries, 10)[1], range(32)))
    assert all(np.array_equal(a, exact) for a in answers)
    fresh = rng.normal(size=(3, 16)).astype(np.float32)
    index.add(fresh)
    assert index.ntotal == 503
    assert index.search(fresh[1:2] * 100, 1)[1][0, 0] == 501


def test_auto_puts_the_index_and_the_encoder_candidates_on_the_gpu_where_there_is_one(tmp_path: Path) -> None:
    """On a CPU-only machine this checks the CPU choice; on a GPU machine with the gpu extra, that the GPU
    index is chosen and the CUDA engine was gated (whether it is faster than the CPU for a tiny model is
    the gate's timing to decide)."""
    model = write_cllm4rec(tmp_path)
    gpu_index = indexes.FaissGpu.supports(MACHINE, "flat")
    with running_server(tmp_path, engine="auto", index_backend="auto") as (srv, client):
        with srv.registry.use("tiny-cllm") as mv:
            labels = {t.label(): t for t in mv.gate_trials["user_encoder"]}
        info = client.list_models().models[0].versions[0]
        assert info.index_backend == ("faiss-gpu" if gpu_index else "faiss-cpu")
        assert ("onnxruntime-cuda:fp32" in labels) == MACHINE.cuda_provider
        if MACHINE.cuda_provider and MACHINE.cuda_devices:
            assert labels["onnxruntime-cuda:fp32"].passed, labels["onnxruntime-cuda:fp32"].reason
        get = srv.metrics.registry.get_sample_value
        assert get("recsys_engine_info", {"model": "tiny-cllm", "version": "1", "component": "index",
                                          "engine": info.index_backend, "precision": "flat"}) == 1
        want, _ = _expected(model, ["i1", "i2"], 5)
        rec = client.recommend("tiny-cllm", history=["i1", "i2"], top_k=5, include_history=True)
        assert [i for i, _ in rec.items] == want
