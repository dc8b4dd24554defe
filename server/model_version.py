"""One loaded model version: its catalogue (exported items + journalled changes), known users, encoders,
the batcher in front of the user encoder, and its lifetime (requests hold counted references; a
retired version closes when the last one is done).

The steps follow Triton's model lifecycle: `ModelVersion.load` reads the index and chooses and gates
the encoders (the expensive, fallible part), `warm_up` sends real requests through every path before
the version is swapped in, and `retire` closes it once its last request is done.

Nothing here refers back to the version from the objects it owns (the batcher holds the user
encoder, not the version), so a swapped-out version is freed by reference counting as soon as its
last request ends, with no garbage collection needed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from common import logs
from repository import files as F
from repository.errors import VersionError
from repository.journal import ItemState
from repository.kinds import KINDS
from repository.reader import VersionFiles
from repository.reference import encoder_reference
from server import errors
from server.adapters import adapter_for
from server.batching import DynamicBatcher
from server.catalogue import Catalogue
from server.config import ServeConfig
from server.encoders import HistoryEncoder, ItemTextEncoder, input_names
from server.engines import Encoder, engine_candidates
from server.gate import Trial, select
from server.indexes import choose_backend
from server.machine import Machine, detect

log = logs.get("server.runtime")


class ModelVersion:
    def __init__(self, name: str, files: VersionFiles, metrics: Any = None, pinned: bool = False) -> None:
        """The version's identity and capabilities from its manifest; nothing is loaded yet (see `load`)."""
        m = files.manifest
        self.name = name
        self.version = m.version or int(files.path.name)
        if int(files.path.name) != self.version:
            raise VersionError(f"{files.path}: manifest says version {self.version} but the folder is "
                               f"{files.path.name}")
        self.path = files.path
        self.manifest = m
        self.kind, self.user_tower, self.item_tower = m.kind, m.user_tower, m.item_tower
        self.dim = m.dim
        adapter_cls = adapter_for(self.kind, self.user_tower)
        self.adapter = adapter_cls(self.path, m)
        caps = m.capabilities
        self.can_user = caps.user_id
        self.can_history = caps.history and KINDS[(self.kind, self.user_tower)].history
        self.can_upsert = caps.upsert_items
        # hybrid towers: an item with an exported row keeps its trained ID part when its text is replaced;
        # a new item is served by its text alone
        self._id_part = files.id_part
        self.index_type = m.index.type
        self.pinned = pinned
        self.loaded_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # known users stay memory-mapped (repository.reader): the lookup is not a dict of every user
        self.user_ids = files.user_ids
        self.user_rows = files.user_ids
        self.user_vectors = files.user_vectors
        self._hist_indptr = files.history_indptr
        self._hist_indices = files.history_indices
        # Journal records up to this sequence number are already in the exported catalogue
        # (`llmrec export --fold-journal`); deletions are re-applied whatever their number.
        self.folded_through = m.folded_through
        self.applied_seq = 0
        self._metrics = metrics
        self._change_lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self._state_lock = threading.Lock()
        self.engines: dict[str, str] = {}  # role -> "engine:precision" (ListModels, logs, metrics)
        self.gate_trials: dict[str, list[Trial]] = {}
        self.item_encoder: ItemTextEncoder | None = None
        self.history_encoder: HistoryEncoder | None = None
        self.batcher: DynamicBatcher | None = None
        self.encoder_instances = 0  # user-encoder batches run at once (ListModels); 0 without a history encoder
        self.index_backend = ""
        self.identity: tuple = ()  # the folder as loaded (server/reload.py reloads one replaced in place)

    @classmethod
    def load(cls, name: str, files: VersionFiles, cfg: ServeConfig, metrics: Any = None, pinned: bool = False,
             machine: Machine | None = None) -> ModelVersion:
        """A version ready for `warm_up`: its index loaded by the backend chosen for this machine, and each
        encoder served by the fastest engine that passes the quality gate. Raises VersionError."""
        mv = cls(name, files, metrics, pinned)
        machine = machine or detect()
        mv._catalogue = mv._load_index(files, cfg, machine)
        if mv.can_upsert:
            enc = mv._encoder("item_encoder", files, cfg, machine, mv._item_fallback(files))
            mv.item_encoder = ItemTextEncoder(mv.manifest, enc, files.tokenizer)
        if mv.can_history:
            enc = mv._encoder("user_encoder", files, cfg, machine, mv._history_fallback,
                              cfg.encoders.instances(machine.cpus))
            chosen = next((t for t in mv.gate_trials["user_encoder"] if t.label() == mv.engines["user_encoder"]),
                          None)
            mv.encoder_instances = cfg.encoders.instances(machine.cpus, enc.device, chosen.one_ms if chosen else None)
            mv.history_encoder = HistoryEncoder(mv.adapter, enc, input_names(mv.manifest, "user_encoder", enc))
            mv.batcher = DynamicBatcher(name, mv.history_encoder.run, cfg.encoders.max_batch_size, cfg.encoders.max_wait_ms,
                                        cfg.encoders.queue_size, metrics, cfg.encoders.max_queue_wait_ms / 1000.0,
                                        instances=mv.encoder_instances)
        return mv

    # ---- loading: index backend and engines chosen for this machine ----
    def _load_index(self, files: VersionFiles, cfg: ServeConfig, machine: Machine) -> Catalogue:
        try:
            backend = choose_backend(machine, self.index_type, cfg.index_backend)
            index = backend.load(files.index_path, self.manifest.index, files.item_vectors)
        except Exception as exc:
            raise VersionError(f"{self.path}: cannot load {F.ITEMS_INDEX} ({type(exc).__name__}: {exc})") from exc
        n = len(files.item_ids)
        if index.ntotal != n or index.dim != self.dim:
            raise VersionError(f"{self.path}: {F.ITEMS_INDEX} holds {index.ntotal} x {index.dim}, expected {n} x {self.dim}")
        self.index_backend = backend.name
        return Catalogue.exported(index, files.item_ids, files.item_vectors, files.item_titles, backend.exact)

    def _encoder(self, role: str, files: VersionFiles, cfg: ServeConfig, machine: Machine,
                 fallback: Callable[[Encoder], list[dict[str, np.ndarray]]], instances: int = 1) -> Encoder:
        """The engine that serves `role`: the fastest candidate passing the quality gate (server/gate.py)."""
        requested = cfg.encoders.engine if cfg.encoders.engine != "auto" else self.manifest.engine_hint
        try:
            cands = engine_candidates(machine, requested, cfg.encoders.engine_int8)
        except ValueError as exc:
            raise VersionError(f"{self.path}: {role}: {exc}") from None
        ref = encoder_reference(self.path, self.manifest.encoders[role])
        try:
            encoder, trials = select(role, files.encoders[role], cands, ref, files.item_vectors, cfg.encoders.ort_threads,
                                     cfg.gate, fallback, instances)
        except Exception as exc:
            raise VersionError(f"{self.path}: {role} cannot be served: {exc}") from exc
        self.engines[role] = f"{encoder.name}:{encoder.precision}"
        self.gate_trials[role] = trials
        return encoder

    def _history_fallback(self, encoder: Encoder) -> list[dict[str, np.ndarray]]:
        """Reference inputs for a version exported without any: a few real history prompts."""
        cat = self._catalogue
        n = len(cat.base.ids)
        payloads = [self.adapter.payload(None, list(range(min(k, n))), cat.vectors) for k in (1, 3, 8)]
        if self.user_ids:
            payloads.append(self.adapter.payload(0, [int(r) for r in self.user_seen(0)][-8:] or [0], cat.vectors))
        names = input_names(self.manifest, "user_encoder", encoder)
        return [self.adapter.feeds([p], names) for p in payloads] + [self.adapter.feeds(payloads, names)]

    def _item_fallback(self, files: VersionFiles) -> Callable[[Encoder], list[dict[str, np.ndarray]]]:
        def cases(encoder: Encoder) -> list[dict[str, np.ndarray]]:
            texts = [t for t in files.item_titles[:8] if t] or ["warm up"]
            captured: list[dict[str, np.ndarray]] = []
            ItemTextEncoder(self.manifest, _Recorder(encoder, captured), files.tokenizer).encode(texts)
            return captured

        return cases

    # ---- lifetime ----
    def acquire(self) -> None:
        with self._state_lock:
            self._inflight += 1

    def release(self) -> None:
        with self._state_lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self.close()

    def retire(self) -> None:
        with self._state_lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self.close()

    def close(self) -> None:
        """Stops the worker and drops the encoders now, rather than whenever the last stray
        reference (a log record, a finished future) happens to go."""
        if self.batcher is not None:
            self.batcher.close()
        self.item_encoder = None
        self.history_encoder = None
        log.info("version closed", model=self.name, version=self.version)

    @property
    def healthy(self) -> bool:
        return self.batcher is None or self.batcher.available

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    # ---- known users ----
    def user_vector(self, row: int) -> np.ndarray:
        """float32 even when the version stores float16 vectors (a copy of one row, off the memory map)."""
        return np.asarray(self.user_vectors[row], dtype=np.float32)

    def user_seen(self, row: int) -> np.ndarray:
        return self._hist_indices[self._hist_indptr[row]:self._hist_indptr[row + 1]]

    # ---- encoders ----
    def history_payload(self, user_row: int | None, history_rows: Sequence[int], catalogue: Catalogue) -> Any:
        return self.adapter.payload(user_row, history_rows, catalogue.vectors)

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
    def apply_journal(self, items: Sequence[ItemState], through: int, vectors: dict[str, np.ndarray] | None = None,
                      fresh: bool = False) -> tuple[int, int, int]:
        """Brings each item to its journal state (server/item_journal.py chooses which) and records `through` as
        applied; returns (added, replaced, deleted). `fresh`: rebuild from the exported catalogue. `vectors`
        may hold already-encoded vectors of some upserted items. Deleted items get their vector too: histories
        may still name them."""
        floor = self.folded_through if fresh else max(self.applied_seq, self.folded_through)
        upserts = [s for s in items if s.upsert_seq > floor and s.text]
        if upserts and self.item_encoder is None:
            log.warning("journalled upserts skipped: this version has no text item encoder", model=self.name,
                        version=self.version, items=len(upserts))
            upserts = []
        known = {s.item_id: vectors[s.item_id] for s in upserts if vectors and s.item_id in vectors}
        todo = [s for s in upserts if s.item_id not in known]
        t0 = time.perf_counter()
        if todo:
            known.update(zip((s.item_id for s in todo), self.encode_texts([s.text for s in todo]), strict=True))
        if self._id_part is not None:
            for s in upserts:
                row = self._catalogue.base.rows.get(s.item_id)
                if row is not None and row < len(self._id_part):
                    known[s.item_id] = known[s.item_id] + self._id_part[row]
        with self._change_lock:
            before = Catalogue(self._catalogue.base) if fresh else self._catalogue
            cat, added, replaced, deleted = before.applied(items, known)
            self._catalogue = cat
            self.applied_seq = max(through, self.folded_through) if fresh else max(self.applied_seq, through)
        if self._metrics is not None:
            if upserts:
                self._metrics.upserted.labels(model=self.name).inc(len(upserts))
                self._metrics.stage.labels(stage="upsert", model=self.name).observe(time.perf_counter() - t0)
            if deleted:
                self._metrics.deleted.labels(model=self.name).inc(deleted)
        return added, replaced, deleted

    def components(self) -> list[tuple[str, str, str]]:
        """(component, engine, precision) of what serves this version, for the engine-info metric."""
        out = [(role, *self.engines[role].split(":", 1)) for role in ("user_encoder", "item_encoder")
               if role in self.engines]
        return [*out, ("index", self.index_backend, self.index_type)]

    def info(self) -> dict[str, Any]:
        cat = self._catalogue
        return {"version": self.version, "kind": self.kind, "user_tower": self.user_tower,
                "item_tower": self.item_tower, "dim": self.dim, "num_items": cat.num_items,
                "num_users": len(self.user_ids), "index_type": self.index_type, "loaded_at": self.loaded_at,
                "pinned": self.pinned, "capabilities": {"user_id": self.can_user, "history": self.can_history,
                                                        "upsert_items": self.can_upsert},
                "journal_seq": self.applied_seq, "deleted_items": len(cat.deleted), "serving": self.healthy,
                "engine": self.engines.get("user_encoder", ""), "item_engine": self.engines.get("item_encoder", ""),
                "index_backend": self.index_backend, "encoder_instances": self.encoder_instances}

    def warm_up(self, users: int = 3) -> None:
        """Real requests through every path before the version is swapped in: a broken graph or a
        wrong dimension is found here, not by a client."""
        cat = self._catalogue
        k = min(10, cat.num_items)
        if k == 0:
            raise VersionError(f"{self.path}: the catalogue is empty")
        for row in range(min(users, len(self.user_ids)) if self.can_user else 0):
            self._check_vector(self.user_vector(row), F.USER_VECTORS)
            if not cat.search(self.user_vector(row), k, set()):
                raise VersionError(f"{self.path}: FAISS returned nothing for a known user")
        if self.history_encoder is not None and self.batcher is not None:
            hist = list(range(min(3, len(cat.base.ids))))
            payloads = [self.probe_payload(),
                        self.history_payload(0 if self.user_ids else None, hist[:1], cat)]
            t0 = time.perf_counter()
            try:
                out = self.history_encoder.run(payloads)
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


class _Recorder:
    """Passes feeds to an encoder and keeps them: the item-encoder reference inputs of an old version are
    whatever the real text path feeds the graph."""

    def __init__(self, encoder: Encoder, captured: list[dict[str, np.ndarray]]) -> None:
        self._encoder, self._captured = encoder, captured
        self.name, self.precision, self.device = encoder.name, encoder.precision, encoder.device
        self.input_names, self.output_name = encoder.input_names, encoder.output_name

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self._captured.append(feeds)
        return self._encoder.run(feeds)
