"""Export and serving at scale (issue #33 items 3 and 4), on tiny models: no user row inside any graph,
known users memory-mapped, float16 known-user vectors behind a measured gate, and the known-user pass
in resumable shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from repo_fixtures import test_config as serve_config
from repo_fixtures import write_cllm4rec

from common.config import parse
from export.config import ExportConfig, GraphConfig, UserVectorsConfig
from export.flops import feed_tokens, matmul_weights
from export.testing import tiny_bundle
from export.user_vectors import ShardStore, compute_shards
from export.writer import export_bundle
from models.bundle import EncoderExport
from models.cllm4rec import cli
from models.cllm4rec.backbone import BackboneConfig, load_backbone
from models.cllm4rec.bundle import FoldedUserEncoder, GraphSpace, load_bundle, user_rows
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template, collate
from models.cllm4rec.scoring import PromptBuilder
from models.cllm4rec.tokens import IdTokenizer
from models.onnx_trace import export_graph
from models.tiny import cllm4rec_argv, write_causal_lm, write_ml100k
from repository import files as F
from repository.arrays import UserIdLookup
from repository.errors import VersionError
from repository.manifest import Manifest
from repository.reader import load_files
from server.model_version import ModelVersion

torch.set_num_threads(1)
FAST = ExportConfig(graph=GraphConfig(ort_optimize="none"), report=False,
                    user_vectors=UserVectorsConfig(precision="fp32"))  # the fp32 graph exactly; bf16: its own tests


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    return {"backbone": write_causal_lm(root / "lm"), "data": write_ml100k(root / "ml", users=12, items=20, per_user=7),
            "root": root}


def _initializers(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    graph = onnx.load(str(path)).graph
    return sorted((t.name, tuple(t.dims)) for t in graph.initializer)


def _folded_graph(assets: dict[str, Path], num_users: int, tmp: Path, user_tokens: bool = True) -> tuple[Path, list[str]]:
    backbone, hf_tok = load_backbone(BackboneConfig(path=assets["backbone"]))
    tok = IdTokenizer(hf_tok, num_users, 20, user_tokens=user_tokens)
    torch.manual_seed(0)
    model = CLLM4Rec(ModelConfig(user_tokens=user_tokens), backbone, tok.vocab)
    space = GraphSpace(tok.vocab, user_rows(model))
    prompts = PromptBuilder(Template.build(tok), tok.vocab, 8, tok.pad_token_id)
    batch = collate([prompts.rec(num_users - 1, np.array([1, 2])), prompts.rec(None, np.array([3]))], tok.pad_token_id)
    case = space.convert(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():  # the folded graph's module reproduces the model on the training layout's prompt
        torch.testing.assert_close(FoldedUserEncoder(model)(*case), model.user_vectors(**batch))
    names = space.input_names
    axes = {n: {0: "batch", 1: "length"} for n in names[:2]} | {n: {0: "batch"} for n in (*names[2:], "user_vector")}
    enc = EncoderExport(FoldedUserEncoder(model).eval(), names, "user_vector", axes, [case])
    return export_graph(enc, tmp / f"u{num_users}-{user_tokens}.onnx"), names


def test_user_encoder_graph_does_not_grow_with_users(assets: dict[str, Path], tmp_path: Path) -> None:
    small, names = _folded_graph(assets, 5, tmp_path)
    large, _ = _folded_graph(assets, 500, tmp_path)
    assert names == ["input_ids", "attention_mask", "user_embedding"]
    assert _initializers(small) == _initializers(large)  # 100x the users, not one value more in the graph
    assert abs(small.stat().st_size - large.stat().st_size) < 1024
    no_users, names = _folded_graph(assets, 500, tmp_path, user_tokens=False)
    assert names == ["input_ids", "attention_mask"]
    assert sorted(d for _, d in _initializers(no_users)) == sorted(d for _, d in _initializers(small))


def _train(assets: dict[str, Path], out: Path, *flags: str) -> Path:
    args = [*cllm4rec_argv(assets["backbone"], assets["data"], out), "--train.epochs", "1", *flags]
    config = parse(cli.TrainCli, args, presets=cli.SCHEDULES)
    task = cli.build_task(config)
    cli.run(task, config, config.train, out, {})
    return out


def _torch_user_vectors(checkpoint: Path) -> np.ndarray:
    from models.cllm4rec.checkpoint import load_checkpoint
    from models.cllm4rec.scoring import History, RecScorer

    loaded = load_checkpoint(checkpoint)
    data, split = loaded.training_data()
    v = loaded.tokenizer.vocab
    prompts = PromptBuilder(loaded.template, v, loaded.max_history, loaded.tokenizer.pad_token_id)
    scorer = RecScorer(loaded.model, prompts, History.build(data), 4)
    return scorer.user_vectors(np.arange(data.num_users), split.train)


@pytest.mark.parametrize("flags", [(), ("--model.no-user-tokens",)], ids=["user-rows", "no-user-tokens"])
def test_known_users_served_as_the_torch_model_computes_them(assets: dict[str, Path], tmp_path: Path,
                                                            flags: tuple[str, ...]) -> None:
    ckpt = _train(assets, tmp_path / "ckpt", *flags)
    bundle = load_bundle(ckpt)
    cfg = ExportConfig(graph=GraphConfig(ort_optimize="none"), report=False,
                       user_vectors=UserVectorsConfig(shard_size=5, batch_size=3, precision="fp32"))
    version = export_bundle(bundle, tmp_path / "repo", "lm", cfg, source_checkpoint=ckpt)
    manifest = json.loads((version / F.MANIFEST).read_text())
    expected = _torch_user_vectors(ckpt)
    files = load_files(version)
    np.testing.assert_allclose(files.user_vectors, expected, atol=1e-4, rtol=1e-4)
    names = [i["name"] for i in manifest["encoders"]["user_encoder"]["inputs"]]
    if flags:
        assert not (version / F.USER_ROWS).exists() and names == ["input_ids", "attention_mask"]
        assert manifest["cllm4rec"].get("user_rows") is None
    else:
        rows = np.load(version / F.USER_ROWS)
        assert rows.shape == (len(bundle.user_ids) + 1, 32) and names[2] == "user_embedding"
    assert not (tmp_path / "repo" / "lm" / F.EXPORT_WORK).exists()  # shards removed once published
    mv = ModelVersion.load("lm", files, serve_config(tmp_path / "repo"))
    try:
        for u in (0, 4, len(bundle.user_ids) - 1):
            row = mv.user_rows.get(bundle.user_ids[u])
            assert row == u
            np.testing.assert_allclose(mv.user_vector(row), expected[u], atol=1e-4, rtol=1e-4)
            # a history request of this known user runs the graph with the user's row from user_rows.npy
            hist = [int(r) for r in bundle.user_histories[u]]
            out = mv.history_encoder.run([mv.history_payload(row, hist, mv.catalogue)])[0]
            np.testing.assert_allclose(out, expected[u], atol=1e-4, rtol=1e-4)
    finally:
        mv.close()


def test_known_users_are_memory_mapped(tmp_path: Path) -> None:
    bundle = tiny_bundle("cllm4rec", tmp_path)
    version = export_bundle(bundle, tmp_path / "repo", "m", FAST)
    files = load_files(version)
    assert Manifest.from_dict(json.loads((version / F.MANIFEST).read_text())).format_version == 2
    for arr in (files.user_vectors, files.history_indptr, files.history_indices):
        assert isinstance(arr, np.memmap)
    lookup = files.user_ids
    assert isinstance(lookup, UserIdLookup) and isinstance(lookup.keys, np.memmap) and len(lookup) == 25
    assert [lookup.get(u) for u in bundle.user_ids] == list(range(25))
    assert lookup.get("nobody") is None and lookup.get("u1" * 40) is None and lookup.get("") is None
    assert "u3" in lookup and "u3x" not in lookup
    for u, h in enumerate(bundle.user_histories):
        np.testing.assert_array_equal(files.history_indices[files.history_indptr[u]:files.history_indptr[u + 1]], h)
    np.testing.assert_array_equal(files.user_vectors, bundle.user_vectors)


def test_ids_sort_as_bytes_and_unicode_ids_resolve(tmp_path: Path) -> None:
    from repository.arrays import load_array, write_user_ids

    ids = ["b", "a", "é", "10", "9", "ab", "a b"]
    write_user_ids(tmp_path, ids)
    lookup = UserIdLookup(load_array(tmp_path / F.USER_ID_KEYS), load_array(tmp_path / F.USER_ID_ROWS))
    assert [lookup.get(u) for u in ids] == list(range(len(ids))) and lookup.get("a\x00") is None
    with pytest.raises(ValueError, match="NUL byte"):
        write_user_ids(tmp_path, ["ok", "bad\x00"])


def test_float16_user_vectors_are_measured_then_kept_or_refused(tmp_path: Path) -> None:
    bundle = tiny_bundle("cllm4rec", tmp_path)
    half = ExportConfig(graph=GraphConfig(ort_optimize="none"), report=False, user_vectors=UserVectorsConfig(dtype="fp16"))
    version = export_bundle(bundle, tmp_path / "repo", "m", half)
    known = json.loads((version / F.MANIFEST).read_text())["known_users"]
    assert known["vectors_dtype"] == "float16" and known["quality"]["status"] == "accepted"
    assert known["quality"]["top20_overlap"] >= 0.95 and known["quality"]["probe_users"] == 25
    assert np.load(version / F.USER_VECTORS).dtype == np.float16
    files = load_files(version)
    mv = ModelVersion("m", files)
    vec = mv.user_vector(3)
    assert vec.dtype == np.float32
    np.testing.assert_allclose(vec, bundle.user_vectors[3], rtol=2e-3, atol=2e-3)
    strict = ExportConfig(graph=GraphConfig(ort_optimize="none"), report=False,
                          user_vectors=UserVectorsConfig(dtype="fp16", min_overlap=1.01))
    with pytest.warns(UserWarning, match="float16 refused"):
        v2 = export_bundle(bundle, tmp_path / "repo", "m", strict)
    known = json.loads((v2 / F.MANIFEST).read_text())["known_users"]
    assert known["vectors_dtype"] == "float32" and known["quality"]["status"] == "refused"
    assert np.load(v2 / F.USER_VECTORS).dtype == np.float32


def _lazy(tmp_path: Path, fail_after: int | None = None):
    bundle = tiny_bundle("cllm4rec", tmp_path, lazy_users=True)
    bundle.known_user_inputs.fail_after = fail_after
    return bundle


SHARDED = ExportConfig(graph=GraphConfig(ort_optimize="none"), report=False,
                       user_vectors=UserVectorsConfig(shard_size=5, batch_size=5, precision="fp32"))  # one batch per shard


def test_killed_export_resumes_from_its_shards(tmp_path: Path) -> None:
    whole = export_bundle(_lazy(tmp_path / "a"), tmp_path / "ref", "m", SHARDED)
    reference = np.load(whole / F.USER_VECTORS)
    np.testing.assert_allclose(reference, tiny_bundle("cllm4rec", tmp_path / "b").user_vectors, atol=1e-5)

    killed = _lazy(tmp_path / "c", fail_after=2)  # 25 users in 5 shards: dies computing the third
    with pytest.raises(KeyboardInterrupt):
        export_bundle(killed, tmp_path / "repo", "m", SHARDED)
    work = tmp_path / "repo" / "m" / F.EXPORT_WORK
    (key,) = list(work.iterdir())
    assert sorted(p.name for p in key.glob("shard-*.npy")) == ["shard-000000.npy", "shard-000001.npy"]
    assert not [p for p in (tmp_path / "repo" / "m").iterdir() if p.name[0].isdigit()]  # nothing published

    again = _lazy(tmp_path / "c")
    version = export_bundle(again, tmp_path / "repo", "m", SHARDED)
    assert again.known_user_inputs.calls == 3  # only the three missing shards
    np.testing.assert_array_equal(np.load(version / F.USER_VECTORS), reference)
    assert not work.exists()


def test_changed_config_never_reuses_stale_shards(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        export_bundle(_lazy(tmp_path / "a", fail_after=3), tmp_path / "repo", "m", SHARDED)
    other = ExportConfig(graph=GraphConfig(ort_optimize="basic"), report=False,
                         user_vectors=UserVectorsConfig(shard_size=5, batch_size=5, precision="fp32"))
    fresh = _lazy(tmp_path / "a")
    export_bundle(fresh, tmp_path / "repo", "m", other)
    assert fresh.known_user_inputs.calls == 5  # every shard computed again under the new key
    (stale,) = list((tmp_path / "repo" / "m" / F.EXPORT_WORK).iterdir())  # the old key's shards stay unused
    assert len(list(stale.glob("shard-*.npy"))) == 3


def test_shard_store_engine_interface(tmp_path: Path) -> None:
    store = ShardStore.open(tmp_path, {"model": "x"}, count=11, dim=3, shard_size=4)
    assert store.num_shards == 3 and store.rows(2).tolist() == [8, 9, 10]
    seen: list[int] = []

    def batch_fn(rows: np.ndarray) -> np.ndarray:
        seen.extend(rows.tolist())
        return np.repeat(rows[:, None].astype(np.float32), 3, axis=1)

    assert compute_shards(store, [2], batch_fn, progress=False) == 1  # an engine may take any subset
    assert store.pending() == [0, 1]
    assert compute_shards(store, range(3), batch_fn, progress=False) == 2 and seen == [8, 9, 10, 0, 1, 2, 3, 4, 5, 6, 7]
    out = store.assemble(tmp_path / "v.npy", np.float16)
    assert out.dtype == np.float16 and out[:, 0].tolist() == list(range(11))
    with pytest.raises(ValueError, match="expected \\(4, 3\\)"):
        store.write(0, np.zeros((3, 3), np.float32))


def test_format_1_versions_still_load_and_unknown_formats_are_refused(tmp_path: Path) -> None:
    model = write_cllm4rec(tmp_path / "repo")  # user_ids.json + user_history.npz, user rows in the graph
    files = load_files(model.path)
    assert files.manifest.format_version == 1 and files.manifest.known_users is None
    assert files.user_ids.get("u3") == 3 and files.user_ids.get("nobody") is None
    mv = ModelVersion("tiny-cllm", files)
    payload = mv.adapter.payload(3, [0, 1], lambda rows: rows)
    assert payload[0] == files.manifest.cllm4rec.user_token_offset + 3  # format 1: the user's own token
    raw = json.loads((model.path / F.MANIFEST).read_text())
    with pytest.raises(VersionError, match="format_version 3 is not supported; accepted: 1, 2"):
        Manifest.from_dict({**raw, "format_version": 3})


def test_tcf_export_does_not_encode_the_catalogue_twice(tmp_path: Path, tcf_assets: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from models.tcf import bundle as tcf_bundle
    from models.tcf import cli as tcf_cli
    from models.tcf.checkpoint import load_checkpoint as load_tcf
    from models.tiny import tcf_argv

    encoder, data = tcf_assets
    cfg = parse(tcf_cli.TrainCli, [*tcf_argv(encoder, data, tmp_path / "ck"), "--lm.unfreeze-top", "1",
                                   "--train.epochs", "1"])
    tcf_cli.train(cfg)
    encoded: list[int] = []
    real = tcf_bundle.encode_texts

    def counting(enc, tok, texts, batch=64):
        encoded.append(len(texts))
        return real(enc, tok, texts, batch)

    monkeypatch.setattr(tcf_bundle, "encode_texts", counting)
    bundle = tcf_bundle.load_bundle(cfg.out)
    ck = load_tcf(cfg.out)
    n = len(ck.item_texts)
    assert sum(encoded) <= tcf_bundle.ITEM_CHECK < n  # only the check sample goes through the full LM again
    np.testing.assert_allclose(bundle.item_vectors, ck.model.all_item_vectors().numpy(), atol=1e-5)
    enc = tcf_bundle.full_item_encoder(ck)
    tok = te_tokenizer(ck)
    forced, how = tcf_bundle.text_item_vectors(ck.model, "text", enc, tok, ck.item_texts, 64, atol=-1.0)
    assert how["source"] == "full item encoder" and how["checked_items"] == tcf_bundle.ITEM_CHECK
    np.testing.assert_allclose(forced, bundle.item_vectors, atol=1e-5)  # the two paths agree


def te_tokenizer(ck):
    from models.tcf import text_encoder as te

    return te.load_tokenizer(te.resolve_encoder_dir(ck.text.encoder), ck.text.max_length, ck.text.lowercase)


def test_flop_estimate_counts_the_blocks_matrix_weights_once(assets: dict[str, Path], tmp_path: Path) -> None:
    graph, _ = _folded_graph(assets, 12, tmp_path)
    backbone, _ = load_backbone(BackboneConfig(path=assets["backbone"]))
    blocks = sum(m.weight.numel() for n, m in backbone.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith("model.layers."))
    assert matmul_weights(graph) == blocks  # every block's projections, not the unused LM head


def test_flop_estimate_follows_transposed_weights_and_skips_other_initializers(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w1, w2, bias = (np.ones(s, dtype=np.float32) for s in ((4, 3), (5, 3), (2, 5)))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Transpose", ["w2"], ["w2t"]),
             helper.make_node("Gemm", ["h", "w2t"], ["g"]), helper.make_node("Add", ["g", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (bias, "bias"))])
    onnx.save(helper.make_model(graph), tmp_path / "g.onnx")
    assert matmul_weights(tmp_path / "g.onnx") == 12 + 15


def test_feed_tokens_counts_padded_positions_and_real_tokens() -> None:
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert feed_tokens({"input_ids": np.zeros((2, 4), np.int64), "attention_mask": mask}) == (8, 4)
    assert feed_tokens({"history": np.zeros((3, 5), np.int64), "lengths": np.ones(3, np.int64)}) == (15, 15)
    assert feed_tokens({"vector": np.zeros((3, 5), np.float32)}) == (0, 0)
