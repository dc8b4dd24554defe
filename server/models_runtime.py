"""One loaded model version: its catalogue (exported items + journalled changes), known users, encoders,
the batcher in front of the user encoder, and its lifetime (requests hold counted references; a
retired version closes when the last one is done).

Nothing here refers back to the version from the objects it owns (the batcher holds the user
encoder, not the version), so a swapped-out version is freed by reference counting as soon as its
last request ends, with no garbage collection needed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from export.journal import JournalRecord, effective
from llmrec import logs
from server import errors
from server.batching import DynamicBatcher
from server.catalogue import Catalogue
from server.config import ServeConfig
from server.encoders import ItemTextEncoder, UserEncoder
from server.repository import VersionError, VersionFiles

log = logs.get("server.runtime")


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
        if self.can_upsert and self.kind != "tcf":
            raise VersionError(f"{self.path}: upsert_items is only possible for kind tcf (got {self.kind})")
        self.index_type = str((m.get("index") or {}).get("type", "flat"))
        self.pinned = pinned
        self.loaded_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._catalogue = Catalogue.exported(files.index, files.item_ids, files.item_vectors, files.item_titles)
        self.user_ids = files.user_ids
        self.user_rows = {u: i for i, u in enumerate(files.user_ids)}
        self.user_vectors = files.user_vectors
        self._hist_indptr = files.history_indptr
        self._hist_indices = files.history_indices
        # Journal records up to this sequence number are already in the exported catalogue
        # (`llmrec export --fold-journal`); deletions are re-applied whatever their number.
        self.folded_through = int((m.get("journal") or {}).get("folded_through", 0))
        self.applied_seq = 0
        self._metrics = metrics
        self._change_lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self._state_lock = threading.Lock()
        self.item_encoder = (ItemTextEncoder(m, files.sessions["item_encoder"], files.tokenizer)
                             if self.can_upsert else None)
        self.user_encoder: UserEncoder | None = None
        self.engine: str | None = None  # what runs the user encoder (request log, ListModels)
        self.batcher: DynamicBatcher | None = None
        if self.can_history:
            self.user_encoder = UserEncoder(self.path, m, files.sessions["user_encoder"])
            self.engine = self.user_encoder.engine
            self.batcher = DynamicBatcher(name, self.user_encoder.run, cfg.max_batch_size, cfg.max_wait_ms,
                                          cfg.queue_size, metrics, cfg.max_queue_wait_ms / 1000.0)

    # ---- lifetime ----
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
        """Stops the worker and drops the ONNX sessions now, rather than whenever the last stray
        reference (a log record, a finished future) happens to go."""
        if self.batcher is not None:
            self.batcher.close()
        self.item_encoder = None
        self.user_encoder = None
        log.info("version closed", model=self.name, version=self.version)

    @property
    def healthy(self) -> bool:
        return self.batcher is None or self.batcher.available

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    # ---- known users ----
    def user_vector(self, row: int) -> np.ndarray:
        return self.user_vectors[row]

    def user_seen(self, row: int) -> np.ndarray:
        return self._hist_indices[self._hist_indptr[row]:self._hist_indptr[row + 1]]

    # ---- encoders ----
    def history_payload(self, user_row: int | None, history_rows: Sequence[int], catalogue: Catalogue) -> Any:
        assert self.user_encoder is not None
        return self.user_encoder.payload(user_row, history_rows, catalogue.vectors)

    def probe_payload(self) -> Any:
        """A real history request's payload, for the warm-up and for probing a restarted worker."""
        cat = self._catalogue
        return self.history_payload(None, list(range(min(3, len(cat.base.ids)))), cat)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.item_encoder is None:
            raise errors.precondition(
                f"model {self.name} v{self.version} ({self.kind}/{self.item_tower} items) cannot add items by "
                "text: its items are ID embeddings learned in training. Upsert works on TCF models with a text "
                "item tower.")
        vectors = self.item_encoder.encode(texts)
        if vectors.shape != (len(texts), self.dim) or not np.isfinite(vectors).all():
            raise errors.internal(f"model {self.name} v{self.version}: item_encoder returned shape {vectors.shape} "
                                  f"(or non-finite values), expected ({len(texts)}, {self.dim})")
        return vectors

    # ---- catalogue changes from the item journal ----
    def apply_journal(self, records: Sequence[JournalRecord],
                      vectors: dict[str, np.ndarray] | None = None) -> tuple[int, int, int]:
        """Applies journal records (in sequence order) to the catalogue; returns (added, replaced,
        deleted). `vectors` may hold already-encoded vectors of some upserted items."""
        if not records:
            return 0, 0, 0
        state = effective(records)
        deletes = [r.item_id for r in state.values() if r.op == "delete"]
        upserts = [r for r in state.values() if r.op == "upsert" and r.seq > self.folded_through]
        if upserts and self.item_encoder is None:
            log.warning("journalled upserts skipped: this version has no text item encoder", model=self.name,
                        version=self.version, items=len(upserts))
            upserts = []
        known = dict(vectors or {})
        todo = [r for r in upserts if r.item_id not in known]
        t0 = time.perf_counter()
        if todo:
            known.update(zip((r.item_id for r in todo), self.encode_texts([r.text for r in todo]), strict=True))
        with self._change_lock:
            before = self._catalogue
            cat, added, replaced = before.changed([(r.item_id, known[r.item_id], r.title) for r in upserts], deletes)
            self._catalogue = cat
            self.applied_seq = max(self.applied_seq, records[-1].seq)
        deleted = len(cat.deleted - before.deleted)
        if self._metrics is not None:
            if upserts:
                self._metrics.upserted.labels(model=self.name).inc(len(upserts))
                self._metrics.stage.labels(stage="upsert", model=self.name).observe(time.perf_counter() - t0)
            if deleted:
                self._metrics.deleted.labels(model=self.name).inc(deleted)
        return added, replaced, deleted

    def info(self) -> dict[str, Any]:
        cat = self._catalogue
        return {"version": self.version, "kind": self.kind, "user_tower": self.user_tower,
                "item_tower": self.item_tower, "dim": self.dim, "num_items": cat.num_items,
                "num_users": len(self.user_ids), "index_type": self.index_type, "loaded_at": self.loaded_at,
                "pinned": self.pinned, "capabilities": {"user_id": self.can_user, "history": self.can_history,
                                                        "upsert_items": self.can_upsert},
                "journal_seq": self.applied_seq, "deleted_items": len(cat.deleted), "serving": self.healthy,
                "engine": self.engine or ""}

    def warm_up(self, users: int = 3) -> None:
        """Real requests through every path before the version is swapped in: a broken graph or a
        wrong dimension is found here, not by a client."""
        cat = self._catalogue
        k = min(10, cat.num_items)
        if k == 0:
            raise VersionError(f"{self.path}: the catalogue is empty")
        for row in range(min(users, len(self.user_ids)) if self.can_user else 0):
            self._check_vector(self.user_vector(row), "user_vectors.npy")
            if not cat.search(self.user_vector(row), k, set()):
                raise VersionError(f"{self.path}: FAISS returned nothing for a known user")
        if self.user_encoder is not None and self.batcher is not None:
            hist = list(range(min(3, len(cat.base.ids))))
            payloads = [self.probe_payload(),
                        self.history_payload(0 if self.user_ids else None, hist[:1], cat)]
            t0 = time.perf_counter()
            try:
                out = self.user_encoder.run(payloads)
            except Exception as exc:
                raise VersionError(f"{self.path}: user_encoder failed on a warm-up batch ({exc})") from exc
            self.batcher.observe(time.perf_counter() - t0, len(payloads))
            for vec in out:
                self._check_vector(vec, "user_encoder output")
                cat.search(vec, k, set())
        if self.item_encoder is not None:
            try:
                vec = self.item_encoder.encode(["warm up"])[0]
            except Exception as exc:
                raise VersionError(f"{self.path}: item_encoder failed on a warm-up text ({exc})") from exc
            self._check_vector(vec, "item_encoder output")

    def _check_vector(self, vec: np.ndarray, what: str) -> None:
        if vec.shape != (self.dim,):
            raise VersionError(f"{self.path}: {what} has shape {vec.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(vec)):
            raise VersionError(f"{self.path}: {what} holds non-finite values")
