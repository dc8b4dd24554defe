"""One loaded model version: its item catalogue (FAISS + ids + vectors), known users, encoders and the
kind-specific way of turning a request into a user vector.

CLLM4Rec: the rec prompt is built from token ids per the manifest template (no tokenizer needed) and
run through the LM user encoder. TCF-SASRec: the history's item vectors (upserted items included) are
left-padded and run through SASRec. TCF-DSSM: known users only.

The catalogue is an immutable snapshot swapped by reference on upsert, so searches never see a
half-updated index and need no lock; upserts are serialised by their own lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faiss
import grpc
import numpy as np

from llmrec import logs
from server import errors
from server.batching import DynamicBatcher
from server.config import ServeConfig
from server.repository import VersionError, VersionFiles

log = logs.get("server.runtime")


@dataclass(frozen=True)
class Catalogue:
    index: Any
    item_ids: list[str]
    rows: dict[str, int]
    vectors: np.ndarray
    titles: list[str]

    def search(self, query: np.ndarray, k: int, excluded: set[int]) -> list[tuple[int, float]]:
        """Top-k rows not in `excluded`; searches deeper until k survive or the catalogue is exhausted."""
        n = self.index.ntotal
        kk = min(k + len(excluded), n)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        while True:
            scores, rows = self.index.search(q, kk)
            out = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True)
                   if r >= 0 and int(r) not in excluded]
            if len(out) >= k or kk >= n:
                return out[:k]
            kk = min(2 * kk, n)


class ModelVersion:
    def __init__(self, name: str, files: VersionFiles, cfg: ServeConfig, metrics: Any = None,
                 pinned: bool = False) -> None:
        m = files.manifest
        self.name = name
        self.version = int(m.get("version") or int(files.path.name))
        if int(files.path.name) != self.version:
            raise VersionError(f"{files.path}: manifest says version {self.version} but the folder is "
                               f"{files.path.name}")
        self.path = files.path
        self.manifest = m
        self.kind: str = m["kind"]
        self.user_tower: str = m.get("user_tower", "")
        self.item_tower: str = m.get("item_tower", "")
        self.dim = int(m.get("dim", files.item_vectors.shape[1]))
        caps = m.get("capabilities") or {}
        self.can_user = bool(caps.get("user_id"))
        self.can_history = bool(caps.get("history"))
        self.can_upsert = bool(caps.get("upsert_items"))
        self.index_type = str((m.get("index") or {}).get("type", "flat"))
        self.pinned = pinned
        self.loaded_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._catalogue = Catalogue(files.index, list(files.item_ids),
                                    {x: i for i, x in enumerate(files.item_ids)}, files.item_vectors,
                                    list(files.item_titles))
        self.user_ids = files.user_ids
        self.user_rows = {u: i for i, u in enumerate(files.user_ids)}
        self.user_vectors = files.user_vectors
        self._hist_indptr = files.history_indptr
        self._hist_indices = files.history_indices
        self._sessions = files.sessions
        self._tokenizer = files.tokenizer
        if self._tokenizer is not None:  # configured once: encode_batch may run from several threads
            self._tokenizer.no_padding()
            self._tokenizer.enable_truncation(max_length=int((m.get("tcf") or {}).get("text_max_length") or 32))
        self._metrics = metrics
        self._upsert_lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self._state_lock = threading.Lock()
        self.batcher: DynamicBatcher | None = None
        if self.can_history:
            self._check_kind_sections()
            self.batcher = DynamicBatcher(name, self.encode_batch, cfg.max_batch_size, cfg.max_wait_ms,
                                          cfg.queue_size, metrics)
        if self.can_upsert and self.kind != "tcf":
            raise VersionError(f"{self.path}: upsert_items is only possible for kind tcf (got {self.kind})")

    # ---- lifetime: requests hold a reference; a retired version closes when the last one is done ----
    def acquire(self) -> None:
        with self._state_lock:
            self._inflight += 1

    def release(self) -> None:
        with self._state_lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._state_lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        log.info("version closed", model=self.name, version=self.version)

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    # ---- known users ----
    def user_vector(self, row: int) -> np.ndarray:
        return self.user_vectors[row]

    def user_seen(self, row: int) -> np.ndarray:
        return self._hist_indices[self._hist_indptr[row]:self._hist_indptr[row + 1]]

    # ---- encoder inputs ----
    def _check_kind_sections(self) -> None:
        section = self.manifest.get(self.kind)
        if not isinstance(section, dict):
            raise VersionError(f"{self.path}: manifest has no '{self.kind}' section, needed for history requests")
        if self.kind == "cllm4rec":
            missing = [k for k in ("item_token_offset", "anonymous_user_token", "template", "max_history")
                       if k not in section]
            if missing:
                raise VersionError(f"{self.path}: cllm4rec section lacks {', '.join(missing)}")

    def history_payload(self, user_row: int | None, history_rows: Sequence[int], catalogue: Catalogue) -> Any:
        """What one request contributes to an encoder batch."""
        if self.kind == "cllm4rec":
            return self._cllm_prompt(user_row, history_rows)
        max_len = int(self.manifest["tcf"].get("max_seq_len", 20))
        rows = np.asarray(list(history_rows)[-max_len:], dtype=np.int64)
        return catalogue.vectors[rows]

    def _cllm_prompt(self, user_row: int | None, history_rows: Sequence[int]) -> list[int]:
        c = self.manifest["cllm4rec"]
        user_tok = int(c["anonymous_user_token"]) if user_row is None else int(c["user_token_offset"]) + user_row
        offset = int(c["item_token_offset"])
        items = list(history_rows)[-int(c["max_history"]):]
        ids: list[int] = []
        for part in c["template"]:
            if part.get("user"):
                ids.append(user_tok)
            elif part.get("history"):
                sep = [int(x) for x in part.get("separator_ids") or []]
                for i, row in enumerate(items):
                    if i and sep:
                        ids.extend(sep)
                    ids.append(offset + int(row))
            else:
                ids.extend(int(x) for x in part.get("ids", []))
        return ids

    def _io_names(self, role: str, defaults: tuple[str, ...]) -> tuple[list[str], str]:
        spec = (self.manifest.get("encoders") or {}).get(role) or {}
        sess = self._sessions[role]
        inputs = [i["name"] for i in spec.get("inputs", [])] or [i.name for i in sess.get_inputs()] or list(defaults)
        output = (spec.get("output") or {}).get("name") or sess.get_outputs()[0].name
        return inputs, output

    def encoder_feeds(self, payloads: Sequence[Any]) -> dict[str, np.ndarray]:
        """The user encoder's input arrays for a batch of payloads (padded as the graph expects)."""
        if self.kind == "cllm4rec":
            c = self.manifest["cllm4rec"]
            length = max(len(p) for p in payloads)
            ids = np.full((len(payloads), length), int(c.get("pad_token_id", 0)), dtype=np.int64)
            mask = np.zeros((len(payloads), length), dtype=np.int64)
            for i, p in enumerate(payloads):  # right padding: the graph gathers the last real token
                ids[i, :len(p)] = p
                mask[i, :len(p)] = 1
            names, _ = self._io_names("user_encoder", ("input_ids", "attention_mask"))
        else:
            seq = int(self.manifest["tcf"].get("max_seq_len", 20))
            ids = np.zeros((len(payloads), seq, self.dim), dtype=np.float32)
            mask = np.zeros((len(payloads), seq), dtype=np.int64)
            for i, p in enumerate(payloads):  # left padding: the newest item is last
                ids[i, seq - len(p):] = p
                mask[i, seq - len(p):] = 1
            names, _ = self._io_names("user_encoder", ("item_vectors", "mask"))
        return {names[0]: ids, names[1]: mask}

    def encode_batch(self, payloads: Sequence[Any]) -> np.ndarray:
        """Runs the user encoder on a batch of payloads (called by the batcher's thread)."""
        _, out = self._io_names("user_encoder", ("input_ids", "attention_mask"))
        result = self._sessions["user_encoder"].run([out], self.encoder_feeds(payloads))[0]
        return np.asarray(result, dtype=np.float32).reshape(len(payloads), -1)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        t = self.manifest.get("tcf") or {}
        max_len = int(t.get("text_max_length", 32))
        pad = int(t.get("pad_token_id", 0))
        encs = self._tokenizer.encode_batch(list(texts))
        ids = np.full((len(texts), max_len), pad, dtype=np.int64)
        mask = np.zeros((len(texts), max_len), dtype=np.int64)
        for i, e in enumerate(encs):
            n = min(len(e.ids), max_len)
            ids[i, :n] = e.ids[:n]
            mask[i, :n] = 1
        names, out = self._io_names("item_encoder", ("input_ids", "attention_mask"))
        result = self._sessions["item_encoder"].run([out], {names[0]: ids, names[1]: mask})[0]
        return np.ascontiguousarray(np.asarray(result, dtype=np.float32).reshape(len(texts), -1))

    # ---- upsert ----
    def upsert(self, items: Sequence[tuple[str, str, str]]) -> tuple[int, int]:
        """Adds or replaces (item_id, text, title); returns (added, replaced)."""
        if not self.can_upsert:
            raise errors.precondition(
                f"model {self.name} v{self.version} ({self.kind}/{self.item_tower} items) cannot add items by text:"
                " its items are ID embeddings learned in training. Upsert works on TCF models (text item tower).")
        t0 = time.perf_counter()
        vectors = self.encode_texts([text for _, text, _ in items])
        if vectors.shape[1] != self.dim:
            raise errors.ServingError(grpc.StatusCode.INTERNAL, f"item_encoder returned dim {vectors.shape[1]}, "
                                      f"expected {self.dim}")
        with self._upsert_lock:
            cat = self._catalogue
            ids, titles, rows = list(cat.item_ids), list(cat.titles), dict(cat.rows)
            all_vecs = cat.vectors
            replaced_rows, new_vecs = [], []
            for (item_id, _, title), vec in zip(items, vectors, strict=True):
                if item_id in rows:
                    replaced_rows.append((rows[item_id], vec))
                    if title:
                        titles[rows[item_id]] = title
                else:
                    rows[item_id] = len(ids)
                    ids.append(item_id)
                    titles.append(title)
                    new_vecs.append(vec)
            all_vecs = all_vecs.copy()
            for row, vec in replaced_rows:
                all_vecs[row] = vec
            if new_vecs:
                all_vecs = np.concatenate([all_vecs, np.stack(new_vecs)]).astype(np.float32)
            index = self._updated_index(cat.index, all_vecs, [r for r, _ in replaced_rows], len(cat.item_ids))
            self._catalogue = Catalogue(index, ids, rows, np.ascontiguousarray(all_vecs), titles)
        if self._metrics is not None:
            self._metrics.upserted.labels(model=self.name).inc(len(items))
            self._metrics.stage.labels(stage="upsert", model=self.name).observe(time.perf_counter() - t0)
        return len(new_vecs), len(replaced_rows)

    def _updated_index(self, old: Any, vectors: np.ndarray, replaced: list[int], old_n: int) -> Any:
        base = faiss.downcast_index(old)
        if isinstance(base, faiss.IndexFlat):
            index = faiss.IndexFlatIP(self.dim)
            index.add(vectors)
            return index
        index = faiss.clone_index(old)
        if replaced:
            try:
                index.remove_ids(faiss.IDSelectorBatch(np.asarray(replaced, dtype=np.int64)))
            except RuntimeError as exc:
                raise errors.precondition(
                    f"model {self.name}: its {self.index_type} index cannot replace existing items; upsert new "
                    "item ids only") from exc
            rows = np.concatenate([np.asarray(replaced, np.int64), np.arange(old_n, len(vectors))])
        else:
            rows = np.arange(old_n, len(vectors))
        if len(rows):
            try:
                index.add_with_ids(vectors[rows], rows.astype(np.int64))
            except RuntimeError:
                index.add(vectors[old_n:])  # e.g. HNSW: sequential ids are the new rows
        return index

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "kind": self.kind, "user_tower": self.user_tower,
                "item_tower": self.item_tower, "dim": self.dim, "num_items": len(self._catalogue.item_ids),
                "num_users": len(self.user_ids), "index_type": self.index_type, "loaded_at": self.loaded_at,
                "pinned": self.pinned, "capabilities": {"user_id": self.can_user, "history": self.can_history,
                                                        "upsert_items": self.can_upsert}}

    def warm_up(self, users: int = 3) -> None:
        """Real requests through every path before the version is swapped in: a broken graph or a
        wrong dimension is found here, not by a client."""
        cat = self._catalogue
        k = min(10, len(cat.item_ids))
        if k == 0:
            raise VersionError(f"{self.path}: the catalogue is empty")
        for row in range(min(users, len(self.user_ids)) if self.can_user else 0):
            self._check_vector(self.user_vector(row), "user_vectors.npy")
            if not cat.search(self.user_vector(row), k, set()):
                raise VersionError(f"{self.path}: FAISS returned nothing for a known user")
        if self.can_history:
            hist = list(range(min(3, len(cat.item_ids))))
            user = 0 if self.user_ids else None
            payloads = [self.history_payload(None, hist, cat), self.history_payload(user, hist[:1], cat)]
            try:
                out = self.encode_batch(payloads)
            except Exception as exc:
                raise VersionError(f"{self.path}: user_encoder failed on a warm-up batch ({exc})") from exc
            for vec in out:
                self._check_vector(vec, "user_encoder output")
                cat.search(vec, k, set())
        if self.can_upsert:
            try:
                vec = self.encode_texts(["warm up"])[0]
            except Exception as exc:
                raise VersionError(f"{self.path}: item_encoder failed on a warm-up text ({exc})") from exc
            self._check_vector(vec, "item_encoder output")

    def _check_vector(self, vec: np.ndarray, what: str) -> None:
        if vec.shape != (self.dim,):
            raise VersionError(f"{self.path}: {what} has shape {vec.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(vec)):
            raise VersionError(f"{self.path}: {what} holds non-finite values")
