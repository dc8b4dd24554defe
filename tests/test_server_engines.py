"""Serving plug-ins: engines and index backends chosen from the machine (mocked here), the quality
gate refusing a perturbed engine, OpenVINO agreeing with ONNX Runtime, and a stub model kind and a
stub index backend plugging in through their registries alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from repo_fixtures import _finish_manifest, _write_common, running_server, write_cllm4rec, write_tcf

from export.writer import BundleError, validate_bundle
from repository.kinds import KINDS, ModelKind
from repository.manifest import IndexSection, Manifest
from server import adapters, engines, indexes
from server.engines.onnxruntime_cpu import OnnxRuntimeCpu, OrtEncoder
from server.indexes.faiss_cpu import FaissCpu, FaissIndex
from server.machine import Machine, cpu_flags

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def test_candidates_follow_the_cpu_flags_and_providers(tmp_path: Path) -> None:
    avx2 = Machine(cpu_flags=frozenset({"avx2"}), openvino=True)
    amx = Machine(cpu_flags=frozenset({"avx512f", "amx_bf16"}), openvino=True)
    gpu = Machine(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert engines.candidates(avx2) == [("onnxruntime-cpu", "fp32"), ("openvino-cpu", "fp32")]
    assert ("openvino-cpu", "bf16") in engines.candidates(amx)  # only where the CPU has bf16
    assert ("onnxruntime-cuda", "fp32") in engines.candidates(gpu)
    assert engines.candidates(Machine()) == [("onnxruntime-cpu", "fp32")]
    assert engines.engine_candidates(amx, "openvino-cpu:bf16") == [("openvino-cpu", "bf16")]
    with pytest.raises(ValueError, match="cannot run bf16 on this machine"):
        engines.engine_candidates(avx2, "openvino-cpu:bf16")
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        engines.engine_candidates(avx2, "tensorrt")
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 amx_bf16 amx_tile\n")
    assert Machine(cpu_flags=cpu_flags(info)).cpu_bf16
    info.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert not Machine(cpu_flags=cpu_flags(info)).cpu_bf16


def test_index_backend_follows_the_gpu_and_the_index_type(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = Machine(), Machine(cuda_devices=1)
    assert indexes.choose_backend(cpu, "flat").name == "faiss-cpu"
    monkeypatch.setattr(indexes.FaissGpu, "supports", staticmethod(
        lambda machine, index_type: machine.cuda_devices > 0 and index_type in ("flat", "ivf", "ivfpq")))
    assert indexes.choose_backend(gpu, "flat").name == "faiss-gpu"
    assert indexes.choose_backend(gpu, "hnsw").name == "faiss-cpu"  # no HNSW on GPUs
    with pytest.raises(ValueError, match="cannot serve a hnsw index"):
        indexes.choose_backend(gpu, "hnsw", "faiss-gpu")


class NoisyEngine:
    """ONNX Runtime plus noise large enough to reorder recommendations (a broken low-precision engine)."""

    name = "noisy"

    @staticmethod
    def precisions(machine: Machine) -> list[str]:
        return ["fp32"]

    @staticmethod
    def load(path: Path, precision: str, threads: int, instances: int = 1) -> OrtEncoder:
        base = OnnxRuntimeCpu.load(path, "fp32", threads)
        rng = np.random.default_rng(0)

        class Noisy(OrtEncoder):
            def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
                out = base.run(feeds)
                return out + rng.normal(scale=np.abs(out).mean(), size=out.shape).astype(np.float32)

        enc = Noisy(base._session, NoisyEngine.name, precision, "cpu")
        return enc


def test_gate_refuses_a_perturbed_engine_and_the_model_falls_back(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engines.ENGINES, NoisyEngine.name, NoisyEngine)
    model = write_cllm4rec(tmp_path)
    with running_server(tmp_path, engine="auto") as (srv, client):
        with srv.registry.use("tiny-cllm") as mv:
            trials = {t.label(): t for t in mv.gate_trials["user_encoder"]}
            assert not trials["noisy:fp32"].passed and "overlap" in trials["noisy:fp32"].reason
            assert mv.engines["user_encoder"] != "noisy:fp32"
        rec = client.recommend("tiny-cllm", history=["i1", "i2"], top_k=5, include_history=True)
        assert [i for i, _ in rec.items] == model.top_k(model.history_vector(["i1", "i2"]), 5)
        info = client.list_models().models[0].versions[0]
        assert info.engine == mv.engines["user_encoder"] and info.index_backend == "faiss-cpu"
        get = srv.metrics.registry.get_sample_value
        engine, precision = info.engine.split(":")
        assert get("recsys_engine_info", {"model": "tiny-cllm", "version": "1", "component": "user_encoder",
                                          "engine": engine, "precision": precision}) == 1
        assert get("recsys_engine_info", {"model": "tiny-cllm", "version": "1", "component": "index",
                                          "engine": "faiss-cpu", "precision": "flat"}) == 1


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (the `openvino` install extra)")
def test_openvino_and_onnxruntime_agree_on_a_tiny_export(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path)
    write_tcf(tmp_path)
    answers = {}
    for engine in ("onnxruntime-cpu:fp32", "openvino-cpu:fp32"):
        with running_server(tmp_path, admin_token="tok", engine=engine) as (srv, client):
            with srv.registry.use("tiny-tcf") as mv:
                assert mv.engines == {"user_encoder": engine, "item_encoder": engine}
            answers[engine] = [
                client.recommend("tiny-cllm", history=["i3", "i4", "i5"], top_k=8, include_history=True),
                client.recommend("tiny-tcf", history=["t1", "t2"], top_k=8, include_history=True),
                client.upsert_items("tiny-tcf", [(f"fresh-{engine}", "w1 w2 w3")]).added,
            ]
    a, b = answers.values()
    for x, y in zip(a[:2], b[:2], strict=True):  # same items and scores (near-ties may swap places)
        assert np.allclose([s for _, s in x.items], [s for _, s in y.items], atol=1e-4)
        assert {i for i, _ in x.items[:-1]} <= {i for i, _ in y.items}
    assert a[2] == b[2] == 1


# ---- plug-ins through the registries alone ----
class MeanOfHistory:
    """A third model kind: the user vector is the encoder applied to the mean of the history's item vectors."""

    kind: ClassVar[str] = "stub"
    user_tower: ClassVar[str] = "mean"
    history: ClassVar[bool] = True

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.dim = manifest.dim

    def payload(self, user_row, history_rows, item_vectors) -> np.ndarray:
        return item_vectors(list(history_rows)).mean(0)

    def feeds(self, payloads, input_names) -> dict[str, np.ndarray]:
        return {input_names[0]: np.stack(payloads).astype(np.float32)}


def _identity_graph(dim: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["user_vector"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["batch", dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _write_stub(repo: Path, dim: int = 8, n: int = 25) -> np.ndarray:
    rng = np.random.default_rng(3)
    d = repo / "stub" / "1"
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    _write_common(d, [f"s{r}" for r in range(n)], vecs, [""] * n, ["u0"], vecs[:1], [[0]])
    onnx.save(_identity_graph(dim), str(d / "user_encoder.onnx"))
    _finish_manifest(d, {
        "format_version": 1, "name": "stub", "version": 1, "kind": "stub", "user_tower": "mean", "item_tower": "id",
        "dim": dim, "metric": "inner_product", "num_items": n, "num_users": 1,
        "capabilities": {"user_id": True, "history": True, "upsert_items": False},
        "index": {"type": "flat", "params": {}},
        "encoders": {"user_encoder": {"path": "user_encoder.onnx", "inputs": [{"name": "x"}],
                                      "output": {"name": "user_vector"}}}})
    return vecs


class NumpyExact:
    """A fourth index backend: brute force in numpy (what a vector-database client would replace)."""

    name = "numpy-exact"

    class Index(FaissIndex):
        def __init__(self, vectors: np.ndarray) -> None:
            self.name, self._v = NumpyExact.name, np.ascontiguousarray(vectors, dtype=np.float32)

        @property
        def ntotal(self) -> int:
            return len(self._v)

        @property
        def dim(self) -> int:
            return self._v.shape[1]

        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            scores = queries @ self._v.T
            ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(scores, ids, axis=1), ids

        def add(self, vectors: np.ndarray) -> None:
            self._v = np.concatenate([self._v, vectors.astype(np.float32)])

    @staticmethod
    def supports(machine: Machine, index_type: str) -> bool:
        return True

    @staticmethod
    def load(path: Path, manifest_index: IndexSection | None, vectors: np.ndarray) -> NumpyExact.Index:
        return NumpyExact.Index(vectors)

    @staticmethod
    def exact(vectors: np.ndarray) -> NumpyExact.Index:
        return NumpyExact.Index(vectors)


def test_a_stub_model_kind_and_a_stub_index_backend_plug_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, ("stub", "mean"), ModelKind(("id",), history=True))
    monkeypatch.setitem(adapters.ADAPTERS, ("stub", "mean"), MeanOfHistory)
    monkeypatch.setattr(indexes, "BACKENDS", {NumpyExact.name: NumpyExact, FaissCpu.name: FaissCpu})
    vecs = _write_stub(tmp_path)
    write_tcf(tmp_path, name="tcf", user_tower="sasrec")
    with running_server(tmp_path, admin_token="tok", index_backend="numpy-exact") as (_, client):
        rec = client.recommend("stub", history=["s1", "s2", "s3"], top_k=4, include_history=True)
        expected = np.argsort(-(vecs @ vecs[1:4].mean(0)), kind="stable")[:4]
        assert [i for i, _ in rec.items] == [f"s{r}" for r in expected]
        info = {m.name: m.versions[0] for m in client.list_models().models}
        assert info["stub"].kind == "stub" and info["stub"].index_backend == "numpy-exact"
        assert client.upsert_items("tcf", [("new", "w1 w2")]).added == 1  # the delta index is the backend's too
        assert client.recommend("tcf", history=["new"], top_k=1, include_history=True).items[0][0] == "new"


def test_the_exporter_validates_against_the_same_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export.testing import tiny_bundle

    bundle = tiny_bundle("tcf", tmp_path, user_tower="dssm")
    bundle.kind, bundle.user_tower, bundle.item_tower = "stub", "mean", "id"
    with pytest.raises(BundleError, match="stub/mean; accepted: cllm4rec/lm"):
        validate_bundle(bundle)
    monkeypatch.setitem(KINDS, ("stub", "mean"), ModelKind(("id",), history=True))
    with pytest.raises(BundleError, match="needs a user_encoder"):  # now known: checked like any other kind
        validate_bundle(bundle)


def test_a_version_exported_with_reference_outputs_is_gated_on_them(tmp_path: Path) -> None:
    """The exporter stores PyTorch fp32 reference outputs (and probe users) beside the graph."""
    from export.config import ExportConfig
    from export.testing import tiny_bundle
    from export.writer import export_bundle

    version = export_bundle(tiny_bundle("cllm4rec", tmp_path / "b"), tmp_path / "repo", "lm", ExportConfig())
    manifest = json.loads((version / "manifest.json").read_text())
    ref = manifest["encoders"]["user_encoder"]["reference"]
    assert ref["file"] in manifest["files"] and ref["source"] == "pytorch fp32" and ref["cases"] >= 2
    with running_server(tmp_path / "repo", engine="auto") as (srv, _), srv.registry.use("lm") as mv:
        trials = mv.gate_trials["user_encoder"]
    assert all(t.cosine is not None and t.cosine > 0.999 for t in trials if t.passed)
    assert any(t.engine == "onnxruntime-cpu" and t.passed for t in trials)


def test_prompts_of_different_lengths_run_in_groups_of_similar_length() -> None:
    """Padding stays within PAD_SLACK of the real tokens per group, and the outputs come back in
    request order, equal to running each prompt alone."""
    import numpy as np

    from server.adapters.cllm4rec_lm import PAD_TO_MULTIPLE, Cllm4recPrompt
    from server.encoders import PAD_SLACK, HistoryEncoder, length_groups

    lengths = [10, 128, 12, 120, 64, 11, 9, 127]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= PAD_SLACK * sum(lengths[i] for i in g) or len(g) == 1
    assert len(groups) < len(lengths)  # similar lengths still share a batch
    assert length_groups([5, 5, 5]) == [[0, 1, 2]] and length_groups([]) == []

    shapes = []

    class SumEngine:  # the vector of a prompt: [sum of ids, number of real tokens]; a function of the prompt alone
        def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
            ids, mask = feeds["input_ids"], feeds["attention_mask"]
            shapes.append(ids.shape)
            return np.stack([(ids * mask).sum(1), mask.sum(1)], axis=1).astype(np.float32)

    adapter = Cllm4recPrompt.__new__(Cllm4recPrompt)
    adapter._pad = 0
    enc = HistoryEncoder(adapter, SumEngine(), ["input_ids", "attention_mask"])  # type: ignore[arg-type]
    prompts = [list(range(1, n + 1)) for n in lengths]
    out = enc.run(prompts)
    assert len(shapes) == len(groups) and sum(s[0] for s in shapes) == len(prompts)
    assert all(s[1] % PAD_TO_MULTIPLE == 0 for s in shapes)  # few distinct widths: kernels are reused
    assert np.array_equal(out, np.array([[n * (n + 1) / 2, n] for n in lengths], dtype=np.float32))
