"""The serving bundle: encoders reproduce the model's own vectors, and both export to ONNX with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from common.config import parse
from models.bundle import ServingBundle
from models.bundle import load_bundle as load_any_bundle
from models.tcf import cli
from models.tcf import text_encoder as te
from models.tcf.bundle import load_bundle
from models.tcf.checkpoint import load_checkpoint
from models.tiny import tcf_argv, write_encoder, write_ml100k


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ml100k(tmp_path_factory.mktemp("data"))


def _train(tmp: Path, data: Path, *flags: str, kind: str = "bert") -> Path:
    enc = write_encoder(tmp / f"enc-{kind}", kind, layers=2)
    cfg = parse(cli.TrainCli, [*tcf_argv(enc, data, tmp / "ck"), *flags])
    cli.train(cfg)
    return cfg.out


def _onnx_parity(tmp: Path, name: str, enc) -> float:
    path = tmp / f"{name}.onnx"
    torch.onnx.export(enc.module, enc.sample_inputs[0], str(path), input_names=enc.input_names,
                      output_names=[enc.output_name], dynamic_axes=enc.dynamic_axes, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for case in enc.sample_inputs:
        with torch.no_grad():
            want = enc.module(*case).numpy()
        got = sess.run([enc.output_name], {n: t.numpy() for n, t in zip(enc.input_names, case, strict=True)})[0]
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize("kind,n,depth,norm", [("bert", 1, 0, False), ("llama", 1, 0, True), ("bert", 0, 0, True),
                                               ("llama", 1, 1, False)])
def test_text_sasrec_bundle(tmp_path: Path, data_dir: Path, kind: str, n: int, depth: int, norm: bool) -> None:
    ck_dir = _train(tmp_path, data_dir, "--lm.unfreeze-top", str(n), "--lm.depth", str(depth),
                    "--text.pooling", "mean" if kind == "llama" else "cls",
                    "--model.mlp-input-norm" if norm else "--model.no-mlp-input-norm", kind=kind)
    bundle = load_any_bundle(ck_dir)  # through the registry in models/bundle.py
    assert isinstance(bundle, ServingBundle) and bundle.kind == "tcf" and bundle.user_tower == "sasrec"
    ck = load_checkpoint(ck_dir)
    assert len(te.blocks(bundle.encoders["item_encoder"].module.lm)) == (depth or 2)
    # the full text path (all LM layers + pooling + MLP) == the training path (pre-inferred + top N + MLP)
    own_items = ck.model.all_item_vectors().numpy()
    assert np.allclose(bundle.item_vectors, own_items, atol=1e-5)
    tok = Tokenizer.from_file(str(bundle.assets["tokenizer.json"]))
    folder = te.resolve_encoder_dir(ck.text.encoder)
    ids, mask = te.tokenize(te.load_tokenizer(folder, ck.text.max_length, ck.text.lowercase), ck.item_texts[:3])
    ids2, mask2 = te.tokenize(tok, ck.item_texts[:3])
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    with torch.no_grad():
        enc_vecs = bundle.encoders["item_encoder"].module(ids, mask).numpy()
    assert np.allclose(enc_vecs, own_items[:3], atol=1e-5)
    # user vectors: the user encoder over each user's full history == the model's own user vectors
    users = np.arange(len(bundle.user_ids))
    own_users = ck.model.user_vectors(users, bundle.user_histories, torch.from_numpy(own_items)).numpy()
    assert np.allclose(bundle.user_vectors, own_users, atol=1e-5)
    assert bundle.model_config == {"max_seq_len": 8, "text_max_length": 12, "tokenizer": "tokenizer.json",
                                   "pad_token_id": 0}
    assert bundle.probe is not None and bundle.probe.metric == "hr@10"
    assert sum(len(b[0]) for b in bundle.probe.encoder_inputs) == len(bundle.probe.targets)
    # the gate's probe: validation users and their valid items (never the test part)
    valid_users = [u for u in ck.split.eval_users("valid")][: len(bundle.probe.targets)]
    assert [t.tolist() for t in bundle.probe.targets] == [ck.split.valid[u].tolist() for u in valid_users]
    assert [e.tolist() for e in bundle.probe.exclude] == [ck.split.train[u].tolist() for u in valid_users]
    assert _onnx_parity(tmp_path, "item_encoder", bundle.encoders["item_encoder"]) < 1e-4
    assert _onnx_parity(tmp_path, "user_encoder", bundle.encoders["user_encoder"]) < 1e-4


def test_dssm_and_id_bundles(tmp_path: Path, data_dir: Path) -> None:
    dssm = load_bundle(_train(tmp_path / "d", data_dir, "--model.user-tower", "dssm"))
    assert set(dssm.encoders) == {"item_encoder"} and dssm.probe is None
    ck = load_checkpoint(tmp_path / "d" / "ck")
    assert np.allclose(dssm.user_vectors, ck.model.user_tower.emb.weight.detach().numpy())
    ids = load_bundle(_train(tmp_path / "i", data_dir, "--model.item-tower", "id"))
    assert set(ids.encoders) == {"user_encoder"} and ids.model_config["tokenizer"] is None
    assert ids.item_vectors.shape == (len(ids.item_ids), 16)


def test_items_without_interactions_join_a_text_catalogue_only(tmp_path: Path) -> None:
    """Every item of the items file is served by a text tower (by its text alone); an ID tower cannot."""
    data = write_ml100k(tmp_path / "data")
    with (data / "ml-100k.item").open("a") as f:
        f.write("901\tnew drama film\t1999\tdrama\n902\tanother comedy\t1998\tcomedy\n")
    ck_dir = _train(tmp_path / "text", data)
    ck = load_checkpoint(ck_dir)
    assert [i for i, _, _ in ck.catalogue_only] == ["901", "902"]  # not trained on: no interactions
    text = load_bundle(ck_dir)
    assert text.item_ids[-2:] == ["901", "902"] and text.item_titles[-2:] == ["new drama film", "another comedy"]
    enc = text.encoders["item_encoder"]
    tok = te.load_tokenizer(te.resolve_encoder_dir(ck.text.encoder), ck.text.max_length, ck.text.lowercase)
    with torch.no_grad():
        want = enc.module(*te.tokenize(tok, [t for _, t, _ in ck.catalogue_only])).numpy()
    assert np.allclose(text.item_vectors[-2:], want, atol=1e-5)  # what the served item encoder gives them
    ids_only = load_bundle(_train(tmp_path / "id", data, "--model.item-tower", "id"))
    assert "901" not in ids_only.item_ids and len(ids_only.item_ids) == len(text.item_ids) - 2
