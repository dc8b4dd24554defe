"""Tiny model repositories written by the tests themselves (docs/model-repository.md), with ONNX graphs
built by onnx.helper so no torch is needed, plus an in-process server helper.

Graphs (numpy twins in `Tiny*.expected_*` let tests compute exact answers):
- CLLM4Rec user encoder: sum over real tokens of E[token]  (right padding-invariant).
- TCF item encoder: L2-normalised sum over real tokens of T[token].
- TCF SASRec user encoder: (sum over real positions of item vectors) @ W.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from client import RecommenderClient
from models.tiny import word_tokenizer
from server.app import RecommenderServer
from server.config import ServeConfig

TEMPLATE = [
    {"user": True},
    {"ids": [1, 2, 3]},
    {"history": True, "separator_ids": []},
    {"ids": [4]},
    {"user": True},
    {"ids": [5, 6, 7]},
]
WORDS = [f"w{i}" for i in range(40)]


def _sum_encoder(
    table: np.ndarray,
    ids_name: str,
    mask_name: str,
    out_name: str,
    normalize: bool = False,
    project: np.ndarray | None = None,
    gather: bool = True,
) -> onnx.ModelProto:
    """(Gather table[ids] or the float input) * mask -> sum over axis 1 [-> @W] [-> L2 normalise]."""
    nodes, inits = [], []
    if gather:
        inits.append(numpy_helper.from_array(table.astype(np.float32), "table"))
        nodes.append(helper.make_node("Gather", ["table", ids_name], ["emb"], axis=0))
        x_in = helper.make_tensor_value_info(ids_name, TensorProto.INT64, ["batch", "length"])
    else:
        nodes.append(helper.make_node("Identity", [ids_name], ["emb"]))
        x_in = helper.make_tensor_value_info(ids_name, TensorProto.FLOAT, ["batch", "length", table.shape[1]])
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax2"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    nodes += [
        helper.make_node("Cast", [mask_name], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "ax2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "ax1"], ["pooled"], keepdims=0),
    ]
    last = "pooled"
    if project is not None:
        inits.append(numpy_helper.from_array(project.astype(np.float32), "W"))
        nodes.append(helper.make_node("MatMul", [last, "W"], ["proj"]))
        last = "proj"
    if normalize:
        nodes.append(helper.make_node("LpNormalization", [last], ["normed"], axis=1, p=2))
        last = "normed"
    nodes.append(helper.make_node("Identity", [last], [out_name]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [x_in, helper.make_tensor_value_info(mask_name, TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", table.shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_common(
    d: Path,
    item_ids: list[str],
    item_vecs: np.ndarray,
    titles: list[str],
    user_ids: list[str],
    user_vecs: np.ndarray,
    seen: list[list[int]],
    index_type: str = "flat",
) -> None:
    d.mkdir(parents=True, exist_ok=True)
    dim = item_vecs.shape[1]
    if index_type == "ivf":
        quant = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quant, dim, 4, faiss.METRIC_INNER_PRODUCT)
        index.train(item_vecs)
        index.add(item_vecs)
    else:
        index = faiss.IndexFlatIP(dim)
        index.add(item_vecs)
    faiss.write_index(index, str(d / "items.faiss"))
    (d / "item_ids.json").write_text(json.dumps(item_ids))
    np.save(d / "item_vectors.npy", item_vecs.astype(np.float32))
    (d / "item_titles.json").write_text(json.dumps(titles))
    (d / "user_ids.json").write_text(json.dumps(user_ids))
    np.save(d / "user_vectors.npy", user_vecs.astype(np.float32))
    indptr = np.cumsum([0] + [len(s) for s in seen]).astype(np.int64)
    indices = np.array([r for s in seen for r in s], dtype=np.int64)
    np.savez(d / "user_history.npz", indptr=indptr, indices=indices)


def _finish_manifest(d: Path, manifest: dict[str, Any]) -> None:
    # informational keys the exporter writes too (a reader requires repository.manifest.REQUIRED_KEYS)
    for key, value in (("parity", {}), ("quantization", None), ("opset", 17), ("package_versions", {}),
                       ("source", {"checkpoint": None, "exported_at": "2026-01-01T00:00:00Z"})):
        manifest.setdefault(key, value)
    files = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {f: {"sha256": _sha(d / f), "bytes": (d / f).stat().st_size} for f in files}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1))


@dataclass
class TinyModel:
    """What a test needs to compute exact expected answers for one written version."""

    path: Path
    kind: str
    item_ids: list[str]
    item_vectors: np.ndarray
    user_ids: list[str]
    user_vectors: np.ndarray
    seen: list[list[int]]
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self, ids: list[str]) -> list[int]:
        return [self.item_ids.index(x) for x in ids]

    def history_vector(self, history: list[str], user: str | None = None) -> np.ndarray:
        if self.kind == "cllm4rec":
            e, c = self.extra["E"], self.extra["cllm"]
            rows = self.rows(history)[-c["max_history"] :]
            u = (
                c["anonymous_user_token"]
                if user not in self.user_ids
                else c["user_token_offset"] + self.user_ids.index(user)
            )
            toks = [u, 1, 2, 3, *[c["item_token_offset"] + r for r in rows], 4, u, 5, 6, 7]
            return e[toks].sum(0)
        rows = self.rows(history)[-self.extra["max_seq_len"] :]
        return self.item_vectors[rows].sum(0) @ self.extra["W"]

    def top_k(self, vector: np.ndarray, k: int, exclude: set[int] = frozenset()) -> list[str]:
        scores = self.item_vectors @ vector
        order = [int(r) for r in np.argsort(-scores, kind="stable") if int(r) not in exclude]
        return [self.item_ids[r] for r in order[:k]]


def write_cllm4rec(
    repo: Path,
    name: str = "tiny-cllm",
    version: int = 1,
    seed: int = 0,
    num_items: int = 30,
    num_users: int = 10,
    dim: int = 8,
    max_history: int = 16,
) -> TinyModel:
    rng = np.random.default_rng(seed)
    d = repo / name / str(version)
    item_ids = [f"i{r}" for r in range(num_items)]
    user_ids = [f"u{r}" for r in range(num_users)]
    user_off, item_off = 20, 20 + num_users
    anon = item_off + num_items
    vocab = anon + 1
    E = rng.normal(size=(vocab, dim)).astype(np.float32)
    item_vecs = rng.normal(size=(num_items, dim)).astype(np.float32)
    user_vecs = rng.normal(size=(num_users, dim)).astype(np.float32)
    seen = [sorted(rng.choice(num_items, size=3, replace=False).tolist()) for _ in range(num_users)]
    _write_common(d, item_ids, item_vecs, [f"Title {r}" for r in range(num_items)], user_ids, user_vecs, seen)
    onnx.save(_sum_encoder(E, "input_ids", "attention_mask", "user_vector"), str(d / "user_encoder.onnx"))
    cllm = {
        "vocab_size": vocab,
        "user_token_offset": user_off,
        "item_token_offset": item_off,
        "anonymous_user_token": anon,
        "pad_token_id": 0,
        "max_history": max_history,
        "template": TEMPLATE,
        "padding_side": "right",
    }
    manifest = {
        "format_version": 1,
        "name": name,
        "version": version,
        "kind": "cllm4rec",
        "user_tower": "lm",
        "item_tower": "id",
        "dim": dim,
        "metric": "inner_product",
        "num_items": num_items,
        "num_users": num_users,
        "capabilities": {"user_id": True, "history": True, "upsert_items": False},
        "index": {"type": "flat", "params": {}},
        "encoders": {
            "user_encoder": {
                "path": "user_encoder.onnx",
                "inputs": [
                    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"]},
                    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "length"]},
                ],
                "output": {"name": "user_vector", "dtype": "float32", "shape": ["batch", dim]},
                "opset": 17,
                "precision": "fp32",
            }
        },
        "cllm4rec": cllm,
        "source": {"checkpoint": "tests", "exported_at": "2026-01-01T00:00:00Z"},
    }
    _finish_manifest(d, manifest)
    return TinyModel(d, "cllm4rec", item_ids, item_vecs, user_ids, user_vecs, seen, {"E": E, "cllm": cllm})


def tokenizer_json() -> str:
    return word_tokenizer(["[PAD]", "[UNK]", *WORDS], lowercase=True).to_str()


def encode_text(T: np.ndarray, text: str, max_len: int = 8) -> np.ndarray:
    vocab = {w: i + 2 for i, w in enumerate(WORDS)}
    toks = [vocab.get(w, 1) for w in text.lower().split()][:max_len]
    v = T[toks].sum(0)
    return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)


def write_tcf(
    repo: Path,
    name: str = "tiny-tcf",
    version: int = 1,
    seed: int = 1,
    num_items: int = 40,
    num_users: int = 8,
    dim: int = 16,
    user_tower: str = "sasrec",
    max_seq_len: int = 5,
    index_type: str = "flat",
) -> TinyModel:
    rng = np.random.default_rng(seed)
    d = repo / name / str(version)
    d.mkdir(parents=True, exist_ok=True)
    T = rng.normal(size=(len(WORDS) + 2, dim)).astype(np.float32)
    texts = [" ".join(rng.choice(WORDS[:30], size=3, replace=False)) for _ in range(num_items)]
    item_ids = [f"t{r}" for r in range(num_items)]
    item_vecs = np.stack([encode_text(T, t) for t in texts])
    user_ids = [f"u{r}" for r in range(num_users)]
    user_vecs = rng.normal(size=(num_users, dim)).astype(np.float32)
    seen = [sorted(rng.choice(num_items, size=2, replace=False).tolist()) for _ in range(num_users)]
    _write_common(d, item_ids, item_vecs, texts, user_ids, user_vecs, seen, index_type)
    W = np.eye(dim, dtype=np.float32)
    onnx.save(
        _sum_encoder(T, "input_ids", "attention_mask", "item_vector", normalize=True),
        str(d / "item_encoder.onnx"),
    )
    (d / "tokenizer.json").write_text(tokenizer_json())
    encoders = {
        "item_encoder": {
            "path": "item_encoder.onnx",
            "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}],
            "output": {"name": "item_vector"},
        }
    }
    if user_tower == "sasrec":
        onnx.save(
            _sum_encoder(np.zeros((1, dim)), "item_vectors", "mask", "user_vector", project=W, gather=False),
            str(d / "user_encoder.onnx"),
        )
        encoders["user_encoder"] = {
            "path": "user_encoder.onnx",
            "inputs": [{"name": "item_vectors"}, {"name": "mask"}],
            "output": {"name": "user_vector"},
        }
    manifest = {
        "format_version": 1,
        "name": name,
        "version": version,
        "kind": "tcf",
        "user_tower": user_tower,
        "item_tower": "text",
        "dim": dim,
        "metric": "inner_product",
        "num_items": num_items,
        "num_users": num_users,
        "capabilities": {"user_id": True, "history": user_tower == "sasrec", "upsert_items": True},
        "index": {"type": index_type, "params": {"nlist": 4, "nprobe": 4} if index_type == "ivf" else {}},
        "encoders": encoders,
        "tcf": {
            "max_seq_len": max_seq_len,
            "text_max_length": 8,
            "tokenizer": "tokenizer.json",
            "pad_token_id": 0,
        },
    }
    _finish_manifest(d, manifest)
    return TinyModel(
        d,
        "tcf",
        item_ids,
        item_vecs,
        user_ids,
        user_vecs,
        seen,
        {"T": T, "W": W, "texts": texts, "max_seq_len": max_seq_len},
    )


def test_config(repo: Path, **overrides: Any) -> ServeConfig:
    values: dict[str, Any] = {
        "repository": repo,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "poll_seconds": 0.0,
        "threads": 8,
        # the reference engine only: fast loads for tests that are not about engines (test_server_engines.py is)
        "engine": "onnxruntime-cpu",
        "max_wait_ms": 2.0,
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return ServeConfig.flat(**values)


@contextmanager
def running_server(
    repo: Path, admin_token: str = "", **overrides: Any
) -> Iterator[tuple[RecommenderServer, RecommenderClient]]:
    srv = RecommenderServer(test_config(repo, admin_token=admin_token, **overrides)).start()
    assert srv.wait_ready(60), "server did not finish its first repository scan"
    client = RecommenderClient(f"127.0.0.1:{srv.port}", admin_token=admin_token or None)
    try:
        yield srv, client
    finally:
        client.close()
        srv.stop(grace=1.0)
