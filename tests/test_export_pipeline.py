"""export_bundle end to end on tiny encoders: parity, refusal, atomicity, numbering, quantization, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import export.writer as W
from export.config import ExportConfig, GraphConfig, QuantizeConfig, RecallCheck
from export.index import IndexParams, exact_topk
from export.parity import ParityError
from export.testing import tiny_bundle
from models.bundle import EncoderExport, load_bundle
from repository.errors import VersionError
from repository.index import load_index, search
from repository.manifest import IndexSection
from repository.versions import list_versions, verify_version

torch.set_num_threads(1)
FAST = ExportConfig(graph=GraphConfig(ort_optimize="basic"))


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory):
    return tiny_bundle("cllm4rec", tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def tcf_bundle(tmp_path_factory):
    return tiny_bundle("tcf", tmp_path_factory.mktemp("tcf"))


@pytest.fixture()
def dssm_bundle(tmp_path):
    return tiny_bundle("tcf", tmp_path, user_tower="dssm")


def ort_run(path: Path, feed: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


@pytest.mark.parametrize("which", ["lm", "tcf"])
def test_parity_pass_and_complete_version(which, lm_bundle, tcf_bundle, tmp_path):
    bundle = lm_bundle if which == "lm" else tcf_bundle
    v = W.export_bundle(bundle, tmp_path / "repo", "m", FAST, source_checkpoint=None)
    assert v == tmp_path / "repo" / "m" / "1"
    m = verify_version(v).to_dict()
    assert m["version"] == 1 and m["kind"] == bundle.kind and m["dim"] == bundle.dim
    assert m["num_items"] == len(bundle.item_ids) and m["metric"] == "inner_product"
    assert set(m["parity"]) == set(bundle.encoders) == set(m["encoders"])
    for name, par in m["parity"].items():
        assert par["max_abs_err"] <= 1e-4 and par["topk_identical"] and par["k"] == 20
        assert par["cases"] == len(bundle.encoders[name].sample_inputs) >= 3
        batches = {s[next(iter(s))][0] for s in par["shapes"]}
        lengths = {s[next(iter(s))][1] for s in par["shapes"]}
        assert 1 in batches and max(batches) > 1 and len(lengths) >= 3
        assert (v / m["encoders"][name]["path"]).is_file()
        assert m["encoders"][name]["opset"] == 17 and m["encoders"][name]["precision"] == "fp32"
    assert m[bundle.kind] == bundle.model_config
    assert m["capabilities"] == {"user_id": True, "history": True, "upsert_items": which == "tcf"}
    assert m["index"]["type"] == "flat" and "recall_vs_exact" not in m["index"]
    assert json.loads((v / "item_ids.json").read_text()) == bundle.item_ids
    np.testing.assert_array_equal(np.load(v / "user_vectors.npy"), bundle.user_vectors)
    # The exported user encoder reproduces the precomputed known-user vectors from the probe inputs.
    enc = bundle.encoders["user_encoder"]
    got = np.concatenate([ort_run(v / "user_encoder.onnx", {n: t.numpy() for n, t in zip(enc.input_names, b,
                                                                                          strict=True)})
                          for b in bundle.probe.encoder_inputs])
    np.testing.assert_allclose(got, bundle.user_vectors, atol=1e-4)
    # The flat index answers exactly what brute force does.
    index = load_index(v / "items.faiss", IndexSection.from_dict(m["index"], "index"))
    _, rows = search(index, bundle.user_vectors, 10)
    np.testing.assert_array_equal(rows, exact_topk(np.load(v / "item_vectors.npy"), bundle.user_vectors, 10))
    assert leftovers(v.parent) == ["1"]
    if which == "tcf":
        assert (v / "tokenizer.json").read_bytes() == bundle.assets["tokenizer.json"].read_bytes()
        assert m["tcf"]["tokenizer"] == "tokenizer.json"


class TraceDependent(nn.Module):
    """Right on the trace input, wrong on any other: `float(...)` is frozen into the graph as a constant."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)

    def forward(self, input_ids, attention_mask):
        scale = float(input_ids[0, 0])
        m = attention_mask.unsqueeze(-1).float()
        return (self.emb(input_ids) * m).sum(1) * scale


def test_trace_dependent_module_is_refused_and_nothing_written(lm_bundle, tmp_path):
    ids = [torch.randint(1, 50, (b, n)) for b, n in ((1, 3), (4, 6), (2, 9))]
    enc = EncoderExport(TraceDependent(), ["input_ids", "attention_mask"], "user_vector",
                        lm_bundle.encoders["user_encoder"].dynamic_axes, [(i, torch.ones_like(i)) for i in ids])
    bundle = tiny_bundle("cllm4rec", tmp_path)
    bundle.encoders = {"user_encoder": enc}
    with pytest.raises(ParityError, match=r"user_encoder: ONNX graph .* worst case inputs \{'input_ids'"):
        W.export_bundle(bundle, tmp_path / "repo", "m", FAST)
    assert not (tmp_path / "repo" / "m").exists()


def test_graph_missing_a_declared_input_is_refused(tmp_path):
    class IgnoresMask(TraceDependent):
        def forward(self, input_ids, attention_mask):
            return self.emb(input_ids).mean(1)

    ids = torch.randint(1, 50, (2, 5))
    bundle = tiny_bundle("cllm4rec", tmp_path)
    enc = bundle.encoders["user_encoder"]
    bundle.encoders["user_encoder"] = EncoderExport(IgnoresMask(), ["input_ids", "attention_mask"], enc.output_name,
                                                    enc.dynamic_axes, [(ids, torch.ones_like(ids))])
    with pytest.raises(ValueError, match="does forward\\(\\) ignore an input"):
        W.export_bundle(bundle, tmp_path / "repo", "m", FAST)
    assert not (tmp_path / "repo" / "m").exists()


class BoolEye(TraceDependent):
    """torch.eye(dtype=bool) exports EyeLike(bool), which ONNX Runtime's CPU EP does not implement."""

    def forward(self, input_ids, attention_mask):
        n = input_ids.shape[1]
        keep = torch.eye(n, dtype=torch.bool) | attention_mask.bool().unsqueeze(1)
        return (self.emb(input_ids) * keep.float().sum(-1, keepdim=True)).mean(1)


def test_graph_onnx_runtime_cannot_load_is_refused_clearly(tmp_path):
    ids = [torch.randint(1, 50, (b, n)) for b, n in ((1, 3), (3, 6))]
    bundle = tiny_bundle("cllm4rec", tmp_path)
    enc = bundle.encoders["user_encoder"]
    bundle.encoders["user_encoder"] = EncoderExport(BoolEye(), ["input_ids", "attention_mask"], enc.output_name,
                                                    enc.dynamic_axes, [(i, torch.ones_like(i)) for i in ids])
    with pytest.raises(ParityError, match=r"ONNX Runtime \(CPU EP\) cannot load .*EyeLike"):
        W.export_bundle(bundle, tmp_path / "repo", "m", FAST)
    assert not (tmp_path / "repo" / "m").exists()


def test_tampered_graph_is_refused(tcf_bundle, tmp_path, monkeypatch):
    real_export = W.export_graph

    def tampered(enc, path, opset=17):
        real_export(enc, path, opset)
        model = onnx.load(str(path))
        big = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        arr = onnx.numpy_helper.to_array(big).copy()
        arr += 0.05
        big.CopyFrom(onnx.numpy_helper.from_array(arr, big.name))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(W, "export_graph", tampered)
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)  # an earlier version exists; it must be untouched
    with pytest.raises(ParityError, match="max abs error"):
        W.export_bundle(tcf_bundle, repo, "m", FAST)
    assert leftovers(repo / "m") == ["1"]


def test_exception_mid_export_leaves_no_version_and_no_tmp(dssm_bundle, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(W, "save_index", boom)
    with pytest.raises(OSError, match="injected"):
        W.export_bundle(dssm_bundle, tmp_path / "repo", "m", FAST)
    assert not (tmp_path / "repo" / "m").exists()
    (tmp_path / "repo" / "m").mkdir()
    with pytest.raises(OSError, match="injected"):
        W.export_bundle(dssm_bundle, tmp_path / "repo", "m", FAST)
    assert leftovers(tmp_path / "repo" / "m") == []


def test_versions_1_2_3_with_junk_folders(dssm_bundle, tmp_path):
    model = tmp_path / "repo" / "m"
    for junk in (".tmp-old", "latest", "v7"):
        (model / junk).mkdir(parents=True)
    got = [W.export_bundle(dssm_bundle, tmp_path / "repo", "m", FAST).name for _ in range(3)]
    assert got == ["1", "2", "3"] and list_versions(model) == [1, 2, 3]
    m = verify_version(model / "2").to_dict()
    assert m["capabilities"] == {"user_id": True, "history": False, "upsert_items": True}
    assert "user_encoder.onnx" not in m["files"]


def test_verify_version_detects_a_tampered_export(dssm_bundle, tmp_path):
    v = W.export_bundle(dssm_bundle, tmp_path / "repo", "m", FAST)
    vec = np.load(v / "item_vectors.npy")
    vec[0, 0] += 1
    np.save(v / "item_vectors.npy", vec)
    with pytest.raises(VersionError, match=r"item_vectors\.npy does not match its sha256"):
        verify_version(v)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_index_recall_recorded(kind, dssm_bundle, tmp_path):
    cfg = ExportConfig(index=IndexParams(kind, nlist=4, nprobe=4, pq_m=4, pq_nbits=4), graph=GraphConfig(ort_optimize="none"),
                       recall=RecallCheck(min_recall=0.0))
    m = verify_version(W.export_bundle(dssm_bundle, tmp_path / "repo", "m", cfg)).to_dict()
    rec = m["index"]["recall_vs_exact"]
    assert rec["k"] == len(dssm_bundle.item_ids) and rec["users"] == len(dssm_bundle.user_ids)
    assert 0.0 <= rec["recall"] <= 1.0
    if kind != "ivfpq":  # nprobe = nlist: exhaustive; HNSW on 60 items: exact in practice
        assert rec["recall"] > 0.95
    assert m["index"]["params"]["nlist" if kind != "hnsw" else "M"] == (4 if kind != "hnsw" else 32)


def test_index_below_min_recall_is_refused_and_nothing_written(dssm_bundle, tmp_path):
    cfg = ExportConfig(index=IndexParams("ivfpq", nlist=4, nprobe=1, pq_m=4, pq_nbits=2),
                       graph=GraphConfig(ort_optimize="none"), recall=RecallCheck(min_recall=0.99))
    with pytest.raises(W.IndexRecallError, match=r"ivfpq index recall@\d+ vs exact search is 0\.\d+ < min_index_recall 0\.99"):
        W.export_bundle(dssm_bundle, tmp_path / "repo", "m", cfg)
    assert not (tmp_path / "repo" / "m").exists() or not any((tmp_path / "repo" / "m").iterdir())


def test_int8_quantization_recorded_refused_and_accepted(tcf_bundle, tmp_path):
    refuse = ExportConfig(quantize=QuantizeConfig("int8", min_overlap=1.01), graph=GraphConfig(ort_optimize="none"))
    with pytest.warns(UserWarning, match="int8 quantization refused"):
        m = verify_version(W.export_bundle(tcf_bundle, tmp_path / "repo", "m", refuse)).to_dict()
    q = m["quantization"]["user_encoder"]
    assert q["status"] == "refused" and "overlap" in q["reason"] and 0.0 <= q["top20_overlap"] <= 1.0
    assert q["metric"] == "recall@20" and 0.0 <= q["fp32"] <= 1.0 and 0.0 <= q["int8"] <= 1.0
    assert q["inputs"] == "probe" and q["rows"] == len(tcf_bundle.user_ids)
    assert m["encoders"]["user_encoder"]["precision"] == "fp32"

    accept = ExportConfig(quantize=QuantizeConfig("int8", min_overlap=0.0, max_metric_drop=10.0),
                          graph=GraphConfig(ort_optimize="none"))
    v = W.export_bundle(tcf_bundle, tmp_path / "repo", "m", accept)
    m = verify_version(v).to_dict()
    assert m["quantization"]["user_encoder"]["status"] == "accepted"
    assert m["encoders"]["user_encoder"]["precision"] == "int8-dynamic"
    ops = {n.op_type for n in onnx.load(str(v / "user_encoder.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger"}


def test_optimized_graph_that_breaks_parity_falls_back_to_plain(tcf_bundle, tmp_path, monkeypatch):
    real = W.optimize_offline

    def broken(path, out, level):
        real(path, out, level)
        model = onnx.load(str(out))
        init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 2, init.name))
        onnx.save(model, str(out))
        return out

    monkeypatch.setattr(W, "optimize_offline", broken)
    m = verify_version(W.export_bundle(tcf_bundle, tmp_path / "repo", "m", FAST)).to_dict()
    for name, enc in m["encoders"].items():
        assert enc["graph_optimization"] == "none" and "broke parity" in enc["graph_optimization_note"], name
        assert m["parity"][name]["max_abs_err"] <= 1e-4


def test_external_data_graph_is_consolidated_and_listed(dssm_bundle, tmp_path, monkeypatch):
    real_export = W.export_graph

    def external(enc, path, opset=17):
        real_export(enc, path, opset)
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)  # one file per tensor, as the exporter does above 2 GB
        return path

    monkeypatch.setattr(W, "export_graph", external)
    v = W.export_bundle(dssm_bundle, tmp_path / "repo", "m", FAST)
    m = verify_version(v).to_dict()
    assert m["encoders"]["item_encoder"]["external_data"] == "item_encoder.onnx.data"
    assert "item_encoder.onnx.data" in m["files"]
    assert not [p for p in v.iterdir() if p.name not in m["files"] and p.name != "manifest.json"]
    ids, mask = dssm_bundle.encoders["item_encoder"].sample_inputs[1]
    ref = dssm_bundle.encoders["item_encoder"].module(ids, mask).detach().numpy()
    np.testing.assert_allclose(ort_run(v / "item_encoder.onnx", {"input_ids": ids.numpy(),
                                                                 "attention_mask": mask.numpy()}), ref, atol=1e-5)


def test_inconsistent_bundle_is_refused_clearly(dssm_bundle, tmp_path):
    dssm_bundle.item_titles = dssm_bundle.item_titles[:-1]
    with pytest.raises(W.BundleError, match="59 item titles for 60 items"):
        W.export_bundle(dssm_bundle, tmp_path / "repo", "m", FAST)
    with pytest.raises(W.BundleError, match="bad model name"):
        W.export_bundle(dssm_bundle, tmp_path / "repo", "../x", FAST)
    assert not (tmp_path / "repo").exists()


def test_corrupt_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_bundle(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "word2vec"}))
    with pytest.raises(ValueError, match="unknown model kind 'word2vec'; accepted: cllm4rec, tcf"):
        load_bundle(tmp_path)


def test_cli_exports_a_checkpoint(lm_bundle, tmp_path, monkeypatch, capsys):
    import models.bundle
    from export.cli import main

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"kind": "cllm4rec"}))
    (ckpt / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(models.bundle, "load_bundle", lambda path: lm_bundle)
    rc = main(["--checkpoint", str(ckpt), "--repository", str(tmp_path / "repo"), "--name", "lm",
               "--index.type", "hnsw", "--no-report"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    m = verify_version(Path(out["version_dir"])).to_dict()
    assert m["source"]["checkpoint"] == str(ckpt) and m["source"]["checkpoint_files"] == 2
    assert len(m["source"]["checkpoint_sha256"]) == 64 and m["source"]["exported_at"].endswith("Z")
    assert m["index"]["recall_vs_exact"]["recall"] > 0.9
    assert set(m["package_versions"]) >= {"torch", "onnx", "onnxruntime", "faiss", "numpy"}


def test_cli_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    from export.cli import main

    (tmp_path / "ckpt").mkdir()
    rc = main(["--checkpoint", str(tmp_path / "ckpt"), "--repository", str(tmp_path / "repo"), "--name", "m"])
    assert rc == 1 and "config.json is missing" in capsys.readouterr().err
    assert main(["--repository", str(tmp_path / "repo")]) == 2


def test_parity_tolerance_scales_with_output_magnitude(monkeypatch, tmp_path):
    """An fp32 reordering error of 1.5e-4 on outputs of magnitude ~100 is noise (tolerance = atol +
    rtol * max |output|); the same error is refused when rtol is 0."""
    from export import parity

    ids = torch.randint(1, 50, (2, 5))
    enc = EncoderExport(TraceDependent(), ["input_ids", "attention_mask"], "user_vector", {}, [(ids, torch.ones_like(ids))])
    ref = np.full((2, 8), 100.0, dtype=np.float32)
    ref[:, 0] = 120.0  # one clear winner, so the ranking is stable under the error

    class Noisy:
        def run(self, names, feed):
            return [ref + np.float32(1.5e-4)]

    monkeypatch.setattr(parity, "session", lambda graph: Noisy())
    items = np.eye(8, dtype=np.float32)
    ok = parity.check_parity(enc, tmp_path / "g.onnx", items, [ref], atol=1e-4, k=3, rtol=1e-5)
    assert ok["max_abs_err"] == pytest.approx(1.5e-4, rel=0.05) and ok["tolerance"] == pytest.approx(1e-4 + 1.2e-3)
    with pytest.raises(ParityError, match=r"tolerance 0\.0001 = atol 0\.0001 \+ rtol 0 \* outputs up to 120"):
        parity.check_parity(enc, tmp_path / "g.onnx", items, [ref], atol=1e-4, k=3, rtol=0.0)
