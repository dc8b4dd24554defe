"""ServingBundle -> one new, verified version folder in a model repository (docs/model-repository.md).

Order matters: the expensive and fallible steps (ONNX export, parity) run first; every file is
written into a staging folder; the manifest is written last; the folder is verified and renamed to
the next free version number. Any exception removes the staging folder, so a failed export leaves
the repository exactly as it was, except for the known-user shards (export/user_vectors.py), kept
under <repository>/<name>/.export-work/ so that a re-run resumes them; a published version removes them.

Known users are written as format 2 (docs/model-repository.md, "Known users"): .npy files the server
memory-maps, and a CLLM4Rec version's user rows as a data file beside a graph that holds none.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from common import logs
from common.cpu import cpu_flags as machine_cpu_flags
from common.openvino import installed as openvino_installed
from export.config import ExportConfig
from export.flops import matmul_weights
from export.index import build_index, recall_vs_exact, sample_rows, save_index
from export.journal_fold import fold_journal, journal_source
from export.onnx_graphs import (
    check_graph,
    consolidate_external_data,
    external_data_files,
    io_spec,
    optimize_offline,
)
from export.parity import ParityError, check_parity, torch_outputs
from export.provenance import checkpoint_sha256, package_versions, utc_now_iso
from export.quantize import compare_user_vectors, evaluate_fp16, quantize_graph
from export.quantize import evaluate as evaluate_quantization
from export.user_vectors import BatchFn, OrtBatchFn, OvBf16BatchFn, ShardStore, compute_shards, pass_precision
from models.bundle import EncoderExport, QualityProbe, ServingBundle
from models.onnx_trace import export_graph
from repository import files as F
from repository.arrays import write_json, write_user_history_csr, write_user_ids
from repository.errors import VersionError
from repository.kinds import KINDS, accepted
from repository.manifest import (
    ENCODER_NAMES,
    SECTIONS,
    Capabilities,
    EncoderSpec,
    IndexSection,
    KnownUsers,
    Manifest,
    TcfSection,
)
from repository.reference import ReferenceData, write_reference
from repository.versions import file_entries, publish, staging_folder

log = logs.get(__name__)


class IndexRecallError(RuntimeError):
    """The approximate index misses too many of the exact top-K: serving it would lose quality."""


class BundleError(ValueError):
    """The bundle handed to the exporter is inconsistent; the message says what and what is expected."""


def validate_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise BundleError(f"bad model name {name!r}: use a non-empty folder name without '/' that does not start with '.'")


def validate_bundle(b: ServingBundle) -> None:
    """Refuses bundles the server could not serve consistently, before any work is done."""
    spec = KINDS.get((b.kind, b.user_tower))  # the format's registry: what no server can serve is not written
    if spec is None:
        raise BundleError(f"bundle kind/user_tower = {b.kind}/{b.user_tower}; accepted: {accepted()}")
    if b.item_tower not in spec.item_towers:
        raise BundleError(f"bundle.item_tower = {b.item_tower!r}; accepted for {b.kind}/{b.user_tower}: "
                          f"{', '.join(spec.item_towers)}")
    iv = np.asarray(b.item_vectors)
    uv = np.asarray(b.user_vectors) if b.user_vectors is not None else None
    n_items, n_users = len(b.item_ids), len(b.user_ids)
    if iv.shape != (n_items, b.dim) or n_items == 0:
        raise BundleError(f"item_vectors has shape {iv.shape}; expected ({n_items} item ids, dim {b.dim}), non-empty")
    if uv is None:
        inputs = b.known_user_inputs
        if inputs is None or "user_encoder" not in b.encoders:
            raise BundleError("user_vectors is None: the bundle needs known_user_inputs and a user_encoder to compute them")
        if inputs.count != n_users:
            raise BundleError(f"known_user_inputs has {inputs.count} users for {n_users} user ids")
    elif uv.shape != (n_users, b.dim):
        raise BundleError(f"user_vectors has shape {uv.shape}; expected ({n_users} user ids, dim {b.dim})")
    for what, arr in (("item_vectors", iv), ("user_vectors", uv)):
        if arr is not None and not np.isfinite(arr).all():
            raise BundleError(f"{what} contains NaN or inf")
    section = b.model_config.get("user_rows") if b.kind == "cllm4rec" and isinstance(b.model_config, dict) else None
    if section is not None and (b.user_rows is None or np.asarray(b.user_rows).shape[0] != n_users + 1):
        shape = None if b.user_rows is None else np.asarray(b.user_rows).shape
        raise BundleError(f"model_config names {section} but user_rows has shape {shape}; expected "
                          f"({n_users} users + 1 anonymous, hidden)")
    if len(b.item_titles) != n_items:
        raise BundleError(f"{len(b.item_titles)} item titles for {n_items} items")
    if len(b.user_histories) != n_users:
        raise BundleError(f"{len(b.user_histories)} user histories for {n_users} users")
    for what, ids in (("item_ids", b.item_ids), ("user_ids", b.user_ids)):
        if len(set(ids)) != len(ids):
            raise BundleError(f"{what} has duplicates")
    for u, h in enumerate(b.user_histories):
        h = np.asarray(h)
        if len(h) and (h.min() < 0 or h.max() >= n_items):
            raise BundleError(f"user row {u} history has item rows outside [0, {n_items})")
    unknown = set(b.encoders) - set(ENCODER_NAMES)
    if unknown:
        raise BundleError(f"unknown encoder(s) {sorted(unknown)}; accepted: {', '.join(ENCODER_NAMES)}")
    if spec.history and "user_encoder" not in b.encoders:
        raise BundleError(f"a {b.user_tower} user tower needs a user_encoder")
    if b.item_tower in ("text", "hybrid") and "item_encoder" in b.encoders and F.TOKENIZER not in b.assets:
        raise BundleError(f"a text item_encoder needs the asset {F.TOKENIZER}")
    for name, enc in b.encoders.items():
        if not enc.sample_inputs:
            raise BundleError(f"{name} has no sample_inputs (needed for tracing and parity)")
        if any(len(case) != len(enc.input_names) for case in enc.sample_inputs):
            raise BundleError(f"{name}: every sample case must have one tensor per input name {enc.input_names}")
    for asset, path in b.assets.items():
        if not Path(path).is_file():
            raise BundleError(f"asset {asset} -> {path} is not a file")
    if not isinstance(b.model_config, dict) or not b.model_config:
        raise BundleError(f"model_config (the manifest's {b.kind!r} section) must be a non-empty dict")
    if b.kind in SECTIONS:
        try:
            SECTIONS[b.kind].from_dict(b.model_config, f"model_config (the manifest's {b.kind!r} section)")
        except VersionError as exc:
            raise BundleError(str(exc)) from None


def _place_graph(src: Path, dst: Path) -> list[str]:
    """Copies the chosen graph to its final name; external data gets `<name>.onnx.data`."""
    if external_data_files(src):
        model = onnx.load(str(src), load_external_data=True)
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
        return [dst.name, dst.name + ".data"]
    shutil.copyfile(src, dst)
    return [dst.name]


def export_encoder(
    name: str, enc: EncoderExport, bundle: ServingBundle, out_dir: Path, work: Path, cfg: ExportConfig
) -> tuple[EncoderSpec, dict[str, Any], dict[str, Any] | None, list[str], Path]:
    """(encoder entry, parity entry, quantization entry or None, files written, the parity-checked fp32
    graph in `work`) for one encoder."""
    refs = torch_outputs(enc)
    plain = export_graph(enc, work / f"{name}.plain.onnx", opset=cfg.graph.opset)
    consolidate_external_data(plain)
    check_graph(plain, enc.input_names, enc.output_name)
    item_vectors = np.asarray(bundle.item_vectors, dtype=np.float32)

    def parity(graph: Path) -> dict[str, Any]:
        return check_parity(enc, graph, item_vectors, refs, atol=cfg.parity.atol, k=cfg.parity.k, rtol=cfg.parity.rtol,
                            label=name)

    chosen, level, note, par = plain, "none", None, None
    optimize = cfg.graph.ort_optimize
    if optimize != "none":
        try:
            opt = optimize_offline(plain, work / f"{name}.opt.onnx", optimize)
            par = parity(opt)
            chosen, level = opt, optimize
        except ParityError as exc:
            note = f"ORT {optimize} optimization broke parity, kept the plain graph: {exc}"
        except Exception as exc:  # an optimizer failure is not fatal: the plain graph is fine
            note = f"ORT {optimize} optimization failed, kept the plain graph: {exc}"
        if note:
            log.warning("graph optimization not kept", encoder=name, reason=note)
    if par is None:
        par = parity(plain)  # raises ParityError: nothing will be written
    inputs, output = io_spec(enc, refs[0])
    entry = EncoderSpec(F.encoder_file(name), inputs, output, cfg.graph.opset, "fp32", level)
    if note:
        entry.extra["graph_optimization_note"] = note
    quant = None
    final = chosen
    if cfg.quantize.mode == "int8":
        int8 = quantize_graph(chosen, work / f"{name}.int8.onnx")
        probe = bundle.probe if name == "user_encoder" else None
        quant = evaluate_quantization(enc, chosen, int8, item_vectors, probe, cfg.quantize.min_overlap,
                                      cfg.quantize.max_metric_drop)
        if quant["status"] == "accepted":
            final, entry.precision = int8, "int8-dynamic"
        else:
            log.warning("int8 quantization refused, keeping fp32", encoder=name, reason=quant["reason"])
            warnings.warn(f"{name}: int8 quantization refused ({quant['reason']})", stacklevel=2)
    files = _place_graph(final, out_dir / F.encoder_file(name))
    if len(files) > 1:
        entry.external_data = files[1]
    ref_file = out_dir / F.reference_file(name)
    entry.reference = write_reference(ref_file, reference_data(
        enc, refs, bundle.probe if name == "user_encoder" else None, cfg.reference_users))
    files.append(ref_file.name)
    log.info("encoder exported", encoder=name, max_abs_err=par["max_abs_err"], cases=par["cases"],
             optimization=level, precision=entry.precision)
    return entry, par, quant, files, chosen


# computes the given shards of a store with a batch function, returns how many it computed
ShardEngine = Callable[[ShardStore, Iterable[int], BatchFn], int]


def known_user_vectors(bundle: ServingBundle, graph: Path, model_dir: Path, cfg: ExportConfig,
                       checkpoint_id: str | None, precision: tuple[str, str],
                       engine: ShardEngine = compute_shards) -> tuple[ShardStore, dict[str, Any]]:
    """The known users' vectors through the parity-checked graph, in resumable shards computed by
    `engine` (the single-process one by default), and the manifest's record of how they were computed:
    in bf16 where `precision` (pass_precision's (precision, why) for this CPU) says so and its vectors pass
    the gate, else fp32."""
    inputs = bundle.known_user_inputs
    assert inputs is not None
    enc = bundle.encoders["user_encoder"]
    uc = cfg.user_vectors
    fn: OrtBatchFn = OrtBatchFn(graph, inputs, enc.output_name, uc.batch_size, cfg.threads)
    asked, why = precision
    compute: dict[str, Any] = {"engine": fn.engine, "precision": "fp32", "decided": why}
    if asked == "bf16" and inputs.count:
        low = OvBf16BatchFn(graph, inputs, enc.output_name, uc.batch_size, cfg.threads)
        gate = bf16_gate(fn, low, bundle, cfg)
        if gate["status"] == "accepted":
            fn, compute = low, {"engine": low.engine, "precision": "bf16", "decided": why, "quality": gate}
        else:
            log.warning("bf16 known-user pass refused, computing in fp32", reason=gate["reason"])
            warnings.warn(f"known-user pass: bf16 refused ({gate['reason']})", stacklevel=2)
            compute["quality"] = gate
        fn.positions = fn.tokens = 0  # the gate's users are not part of the pass
    parts = {"checkpoint": checkpoint_id or F.sha256_file(graph), "graph": cfg.graph.__dict__,
             "inputs": inputs.key(), "batch_size": uc.batch_size, "kind": bundle.kind,
             "rows": _array_hash(bundle.user_rows), "precision": fn.precision}
    store = ShardStore.open(model_dir, parts, inputs.count, int(bundle.dim), uc.shard_size)
    log.info("known-user vectors", users=inputs.count, shards=store.num_shards, pending=len(store.pending()),
             engine=fn.engine, precision=fn.precision, folder=str(store.folder))
    wall, cpu = time.perf_counter(), time.process_time()
    computed = engine(store, range(store.num_shards), fn)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if fn.positions:  # computed here (another engine's workers count their own)
        gflop = 2 * matmul_weights(graph) * fn.positions / 1e9
        log.info("known-user vectors computed", shards=computed, seconds=round(wall, 1), cpu_seconds=round(cpu, 1),
                 positions=fn.positions, tokens=fn.tokens, est_gflop=round(gflop, 1),
                 gflop_per_cpu_s=round(gflop / cpu, 1) if cpu > 0 else None)
    return store, compute


def bf16_gate(fp32: OrtBatchFn, bf16: OrtBatchFn, bundle: ServingBundle, cfg: ExportConfig) -> dict[str, Any]:
    """bf16 known-user vectors measured against fp32 before the pass, like float16 storage: top-20
    overlap on `--user-vectors.check-users` sampled known users and the probe metric on the probe's
    validation users. Both engines run the same users here, after one warm-up batch each, so the
    entry also records the speed of each on this machine, measured in the same run."""
    uc = cfg.user_vectors
    count = bundle.known_user_inputs.count  # type: ignore[union-attr]
    sample = sample_rows(count, uc.check_users, cfg.seed)
    probe = bundle.probe
    probe_users = (np.asarray(probe.users, dtype=np.int64) if probe is not None and probe.users is not None
                   else np.empty(0, dtype=np.int64))
    rows = np.union1d(sample, probe_users).astype(np.int64)
    seconds = {}
    vectors = {}
    for fn in (fp32, bf16):
        fn(rows[:1])  # opens the session (OpenVINO compiles the graph) outside the timing
        t = time.perf_counter()
        vectors[fn.precision] = fn(rows)
        seconds[fn.precision] = time.perf_counter() - t
    where = {int(r): i for i, r in enumerate(rows)}

    def lookup(name: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda r: vectors[name][[where[int(x)] for x in r]]

    out = compare_user_vectors(lookup("fp32"), lookup("bf16"), np.asarray(bundle.item_vectors, dtype=np.float32),
                               sample, probe, f"known-user pass in bf16 ({bf16.engine}) vs fp32 ({fp32.engine})",
                               "bf16", uc.min_overlap, uc.max_metric_drop)
    out.update({"users_timed": len(rows), "fp32_seconds": round(seconds["fp32"], 3),
                "bf16_seconds": round(seconds["bf16"], 3),
                "bf16_speedup": round(seconds["fp32"] / seconds["bf16"], 2) if seconds["bf16"] > 0 else None,
                "threads": cfg.threads})
    log.info("bf16 known-user gate", **{k: v for k, v in out.items() if k != "method"})
    return out


def shard_engine(cfg: ExportConfig) -> ShardEngine:
    if cfg.engine == "ray":
        from export.ray_engine import ray_compute_shards

        return functools.partial(ray_compute_shards, cfg=cfg.ray)
    return compute_shards


def _array_hash(arr: np.ndarray | None) -> str | None:
    return None if arr is None else hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()[:16]


def write_known_users(tmp: Path, bundle: ServingBundle, user_vectors: np.ndarray | None,
                      item_vectors: np.ndarray, cfg: ExportConfig,
                      compute: dict[str, Any] | None = None) -> tuple[list[str], KnownUsers]:
    """Format-2 known-user files (float16 vectors only when their measured cost is within the gate).
    `user_vectors` None: the float32 USER_VECTORS file is already in `tmp` (assembled from shards)."""
    out = tmp / F.USER_VECTORS
    if user_vectors is not None:
        np.save(out, np.ascontiguousarray(user_vectors, dtype=np.float32))
    vectors = np.load(out, mmap_mode="r")
    section = KnownUsers(compute=compute)
    uc = cfg.user_vectors
    if uc.dtype == "fp16" and len(vectors):
        sample = sample_rows(len(vectors), cfg.recall.users, cfg.seed)
        quality = evaluate_fp16(vectors, item_vectors, sample, bundle.probe, uc.min_overlap, uc.max_metric_drop)
        if quality["status"] == "accepted":
            half = np.lib.format.open_memmap(tmp / "user_vectors.fp16.npy", mode="w+", dtype=np.float16,
                                             shape=vectors.shape)
            for s in range(0, len(vectors), 1 << 16):
                half[s:s + (1 << 16)] = vectors[s:s + (1 << 16)]
            half.flush()
            del half, vectors
            (tmp / "user_vectors.fp16.npy").replace(out)
            section.vectors_dtype = "float16"
        else:
            log.warning("float16 user vectors refused, keeping float32", reason=quality["reason"])
            warnings.warn(f"user_vectors: float16 refused ({quality['reason']})", stacklevel=2)
        section.quality = quality
    names = [F.USER_VECTORS]
    names += write_user_ids(tmp, [str(u) for u in bundle.user_ids])
    names += write_user_history_csr(tmp, bundle.user_histories)
    if bundle.user_rows is not None:
        np.save(tmp / F.USER_ROWS, np.ascontiguousarray(bundle.user_rows, dtype=np.float32))
        names.append(F.USER_ROWS)
    return names, section


def reference_data(enc: EncoderExport, refs: list[np.ndarray], probe: QualityProbe | None,
                   max_users: int) -> ReferenceData:
    """The parity inputs with their PyTorch fp32 outputs, plus up to `max_users` probe users."""
    def feeds(case: tuple) -> dict[str, np.ndarray]:
        return {n: t.detach().cpu().numpy() for n, t in zip(enc.input_names, case, strict=True)}

    data = ReferenceData([feeds(c) for c in enc.sample_inputs], refs, metric=probe.metric if probe else None)
    if probe is None or max_users <= 0:
        return data
    users = 0
    with torch.no_grad():
        for batch in probe.encoder_inputs:
            if users >= max_users:
                break
            data.probe_cases.append(feeds(batch))
            data.probe_outputs.append(enc.module(*batch).float().cpu().numpy())
            users += len(batch[0])
    data.targets, data.exclude = list(probe.targets[:users]), list(probe.exclude[:users])
    return data


def export_bundle(
    bundle: ServingBundle,
    repository: Path,
    name: str,
    cfg: ExportConfig | None = None,
    source_checkpoint: Path | None = None,
    engine: ShardEngine | None = None,
) -> Path:
    """Writes a new version of `<repository>/<name>` and returns its folder; `engine` computes the
    known-user shards (export/user_vectors.py), by default the one `cfg.engine` names."""
    cfg = cfg or ExportConfig()
    engine = engine or shard_engine(cfg)
    validate_name(name)
    validate_bundle(bundle)
    # decided (and a precision this CPU cannot run refused) now, not after the graph export
    pass_at = (pass_precision(cfg.user_vectors.precision, machine_cpu_flags(), openvino_installed())
               if bundle.user_vectors is None else ("fp32", "vectors given by the bundle"))
    model_dir = Path(repository) / name
    item_vectors = np.ascontiguousarray(bundle.item_vectors, dtype=np.float32)
    source: dict[str, Any] = {"checkpoint": str(source_checkpoint) if source_checkpoint else None,
                              "exported_at": utc_now_iso()}
    if source_checkpoint:
        source["checkpoint_sha256"], source["checkpoint_files"] = checkpoint_sha256(Path(source_checkpoint))
    store: ShardStore | None = None
    compute: dict[str, Any] | None = None
    with staging_folder(model_dir) as tmp:
        work = tmp / "_work"
        work.mkdir()
        files: list[str] = []
        encoders, parity, quantization = {}, {}, {}
        for enc_name in ENCODER_NAMES:
            if enc_name in bundle.encoders:
                entry, par, quant, written, fp32_graph = export_encoder(enc_name, bundle.encoders[enc_name], bundle,
                                                                        tmp, work, cfg)
                encoders[enc_name], parity[enc_name] = entry, par
                if quant is not None:
                    quantization[enc_name] = quant
                files += written
                if enc_name == "user_encoder" and bundle.user_vectors is None:
                    store, compute = known_user_vectors(bundle, fp32_graph, model_dir, cfg,
                                                        source.get("checkpoint_sha256"), pass_at, engine)
        shutil.rmtree(work)
        if store is not None:
            user_vectors: np.ndarray = store.assemble(tmp / F.USER_VECTORS)
        else:
            user_vectors = np.ascontiguousarray(bundle.user_vectors, dtype=np.float32)

        item_ids = [str(i) for i in bundle.item_ids]
        item_titles = [t or "" for t in bundle.item_titles]
        journal_entry = None
        if cfg.fold_journal:
            has_text = "item_encoder" in encoders and F.TOKENIZER in bundle.assets
            tcf = TcfSection.from_dict(bundle.model_config, "tcf section") if bundle.kind == "tcf" else None
            id_file = tcf.id_part if tcf else None
            item_ids, item_vectors, item_titles, journal_entry = fold_journal(
                journal_source(cfg.journal, model_dir), tmp / F.ITEM_ENCODER if has_text else None,
                bundle.assets.get(F.TOKENIZER), tcf, encoders.get("item_encoder"), item_ids,
                item_vectors, item_titles, np.load(bundle.assets[id_file]) if id_file else None)
            log.info("item journal folded", file=journal_entry.file, folded_through=journal_entry.folded_through,
                     folded_upserts=journal_entry.folded_upserts)

        params = cfg.index
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            index, used = build_index(item_vectors, params)
        save_index(index, tmp / F.ITEMS_INDEX)
        index_entry = IndexSection(params.type, used, [str(w.message) for w in caught] or None)
        if params.type != "flat":
            queries, used_queries = ((user_vectors, "user_vectors") if len(user_vectors)
                                     else (item_vectors, "item_vectors"))
            q = np.asarray(queries[sample_rows(len(queries), cfg.recall.users, cfg.seed)], dtype=np.float32)
            index_entry.recall_vs_exact = {**recall_vs_exact(index, item_vectors, q, cfg.recall.k),
                                           "queries": used_queries}
            log.info("index recall", **index_entry.recall_vs_exact)
            recall = index_entry.recall_vs_exact["recall"]
            if recall is not None and recall < cfg.recall.min_recall:
                raise IndexRecallError(
                    f"{params.type} index recall@{cfg.recall.k} vs exact search is {recall:.3f} < "
                    f"min_index_recall {cfg.recall.min_recall} (--recall.min-recall): nothing written; use --index.type flat, a larger "
                    f"--index.ef-search / --index.nprobe, or lower --recall.min-recall"
                )

        np.save(tmp / F.ITEM_VECTORS, item_vectors)
        write_json(tmp / F.ITEM_IDS, item_ids)
        write_json(tmp / F.ITEM_TITLES, item_titles)
        user_files, known = write_known_users(tmp, bundle, None if store is not None else user_vectors,
                                              np.asarray(bundle.item_vectors, dtype=np.float32), cfg, compute)
        del user_vectors
        files += [F.ITEMS_INDEX, F.ITEM_VECTORS, F.ITEM_IDS, F.ITEM_TITLES, *user_files]
        for asset, path in bundle.assets.items():
            shutil.copyfile(path, tmp / asset)
            files.append(asset)

        source["exported_at"] = utc_now_iso()
        section_cls = SECTIONS.get(bundle.kind)
        manifest = Manifest(
            name=name, kind=bundle.kind, user_tower=bundle.user_tower, item_tower=bundle.item_tower,
            dim=int(bundle.dim), num_items=len(item_ids), num_users=len(bundle.user_ids),
            capabilities=Capabilities(
                user_id=len(bundle.user_ids) > 0,
                history="user_encoder" in encoders,
                upsert_items="item_encoder" in encoders and bundle.item_tower in ("text", "hybrid"),
            ),
            files=file_entries(tmp, files),
            index=index_entry,
            encoders=encoders,
            section=(section_cls.from_dict(bundle.model_config, f"{bundle.kind} section")
                     if section_cls is not None else None),
            parity=parity, quantization=quantization or None, source=source,
            package_versions=package_versions(), opset=cfg.graph.opset,
            journal=journal_entry, known_users=known,
        )
        if section_cls is None:  # a kind without a typed section: its model_config is written as it is
            manifest.extra[bundle.kind] = bundle.model_config
        version_dir = publish(tmp, model_dir, manifest)
    if store is not None:
        store.remove()  # published: the shards have served their purpose
        if not any((model_dir / F.EXPORT_WORK).iterdir()):
            (model_dir / F.EXPORT_WORK).rmdir()
    log.info("version written", path=str(version_dir), version=manifest.version)
    return version_dir
