"""ServingBundle -> one new, verified version folder in a model repository (docs/model-repository.md).

Order matters: the expensive and fallible steps (ONNX export, parity) run first; every file is
written into a staging folder; the manifest is written last; the folder is verified and renamed to
the next free version number. Any exception removes the staging folder, so a failed export leaves
the repository exactly as it was.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export import manifest as M
from export.config import ExportConfig
from export.index import build_index, recall_vs_exact, sample_rows, save_index
from export.journal import JOURNAL
from export.journal_fold import fold_journal
from export.onnx_graphs import (
    check_graph,
    consolidate_external_data,
    export_graph,
    external_data_files,
    io_spec,
    optimize_offline,
)
from export.parity import ParityError, check_parity, torch_outputs
from export.quantize import evaluate as evaluate_quantization
from export.quantize import quantize_graph
from export.reference import ReferenceData, write_reference
from export.repository import (
    checkpoint_sha256,
    file_entries,
    package_versions,
    publish,
    staging_folder,
    utc_now_iso,
    write_json,
    write_user_history,
)
from llmrec import logs
from models.bundle import EncoderExport, QualityProbe, ServingBundle
from server.adapters import accepted as accepted_adapters
from server.adapters import adapter_for

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
    adapter = adapter_for(b.kind, b.user_tower)  # the server's own registry: what it cannot serve is not written
    if adapter is None:
        raise BundleError(f"bundle kind/user_tower = {b.kind}/{b.user_tower}; accepted: {accepted_adapters()}")
    if b.item_tower not in adapter.item_towers:
        raise BundleError(f"bundle.item_tower = {b.item_tower!r}; accepted for {b.kind}/{b.user_tower}: "
                          f"{', '.join(adapter.item_towers)}")
    iv, uv = np.asarray(b.item_vectors), np.asarray(b.user_vectors)
    n_items, n_users = len(b.item_ids), len(b.user_ids)
    if iv.shape != (n_items, b.dim) or n_items == 0:
        raise BundleError(f"item_vectors has shape {iv.shape}; expected ({n_items} item ids, dim {b.dim}), non-empty")
    if uv.shape != (n_users, b.dim):
        raise BundleError(f"user_vectors has shape {uv.shape}; expected ({n_users} user ids, dim {b.dim})")
    for what, arr in (("item_vectors", iv), ("user_vectors", uv)):
        if not np.isfinite(arr).all():
            raise BundleError(f"{what} contains NaN or inf")
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
    unknown = set(b.encoders) - set(M.ENCODER_NAMES)
    if unknown:
        raise BundleError(f"unknown encoder(s) {sorted(unknown)}; accepted: {', '.join(M.ENCODER_NAMES)}")
    if adapter.history and "user_encoder" not in b.encoders:
        raise BundleError(f"a {b.user_tower} user tower needs a user_encoder")
    if b.item_tower in ("text", "hybrid") and "item_encoder" in b.encoders and M.TOKENIZER not in b.assets:
        raise BundleError(f"a text item_encoder needs the asset {M.TOKENIZER}")
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
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, list[str]]:
    """(encoder entry, parity entry, quantization entry or None, files written) for one encoder."""
    refs = torch_outputs(enc)
    plain = export_graph(enc, work / f"{name}.plain.onnx", opset=cfg.opset)
    consolidate_external_data(plain)
    check_graph(plain, enc.input_names, enc.output_name)
    item_vectors = np.asarray(bundle.item_vectors, dtype=np.float32)

    def parity(graph: Path) -> dict[str, Any]:
        return check_parity(enc, graph, item_vectors, refs, atol=cfg.parity_atol, k=cfg.parity_k, rtol=cfg.parity_rtol,
                            label=name)

    chosen, level, note, par = plain, "none", None, None
    if cfg.ort_optimize != "none":
        try:
            opt = optimize_offline(plain, work / f"{name}.opt.onnx", cfg.ort_optimize)
            par = parity(opt)
            chosen, level = opt, cfg.ort_optimize
        except ParityError as exc:
            note = f"ORT {cfg.ort_optimize} optimization broke parity, kept the plain graph: {exc}"
        except Exception as exc:  # an optimizer failure is not fatal: the plain graph is fine
            note = f"ORT {cfg.ort_optimize} optimization failed, kept the plain graph: {exc}"
        if note:
            log.warning("graph optimization not kept", encoder=name, reason=note)
    if par is None:
        par = parity(plain)  # raises ParityError: nothing will be written
    inputs, output = io_spec(enc, refs[0])
    entry: dict[str, Any] = {"path": f"{name}.onnx", "inputs": inputs, "output": output, "opset": cfg.opset,
                             "precision": "fp32", "graph_optimization": level}
    if note:
        entry["graph_optimization_note"] = note
    quant = None
    final = chosen
    if cfg.quantize == "int8":
        int8 = quantize_graph(chosen, work / f"{name}.int8.onnx")
        probe = bundle.probe if name == "user_encoder" else None
        quant = evaluate_quantization(enc, chosen, int8, item_vectors, probe, cfg.quantize_min_overlap,
                                      cfg.quantize_max_metric_drop)
        if quant["status"] == "accepted":
            final, entry["precision"] = int8, "int8-dynamic"
        else:
            log.warning("int8 quantization refused, keeping fp32", encoder=name, reason=quant["reason"])
            warnings.warn(f"{name}: int8 quantization refused ({quant['reason']})", stacklevel=2)
    files = _place_graph(final, out_dir / f"{name}.onnx")
    if len(files) > 1:
        entry["external_data"] = files[1]
    ref_file = out_dir / f"reference_{name}.npz"
    entry["reference"] = write_reference(ref_file, reference_data(
        enc, refs, bundle.probe if name == "user_encoder" else None, cfg.reference_users))
    files.append(ref_file.name)
    log.info("encoder exported", encoder=name, max_abs_err=par["max_abs_err"], cases=par["cases"],
             optimization=level, precision=entry["precision"])
    return entry, par, quant, files


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
) -> Path:
    """Writes a new version of `<repository>/<name>` and returns its folder."""
    cfg = cfg or ExportConfig()
    validate_name(name)
    validate_bundle(bundle)
    model_dir = Path(repository) / name
    item_vectors = np.ascontiguousarray(bundle.item_vectors, dtype=np.float32)
    user_vectors = np.ascontiguousarray(bundle.user_vectors, dtype=np.float32)
    with staging_folder(model_dir) as tmp:
        work = tmp / "_work"
        work.mkdir()
        files: list[str] = []
        encoders, parity, quantization = {}, {}, {}
        for enc_name in M.ENCODER_NAMES:
            if enc_name in bundle.encoders:
                entry, par, quant, written = export_encoder(enc_name, bundle.encoders[enc_name], bundle, tmp, work, cfg)
                encoders[enc_name], parity[enc_name] = entry, par
                if quant is not None:
                    quantization[enc_name] = quant
                files += written
        shutil.rmtree(work)

        item_ids = [str(i) for i in bundle.item_ids]
        item_titles = [t or "" for t in bundle.item_titles]
        journal_entry = None
        if cfg.fold_journal:
            has_text = "item_encoder" in encoders and M.TOKENIZER in bundle.assets
            id_file = bundle.model_config.get("id_part")
            item_ids, item_vectors, item_titles, journal_entry = fold_journal(
                model_dir / JOURNAL, tmp / "item_encoder.onnx" if has_text else None,
                bundle.assets.get(M.TOKENIZER), bundle.model_config, encoders.get("item_encoder"), item_ids,
                item_vectors, item_titles, np.load(bundle.assets[id_file]) if id_file else None)
            log.info("item journal folded", **journal_entry)

        params = cfg.index_params()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            index, used = build_index(item_vectors, params)
        save_index(index, tmp / M.ITEMS_INDEX)
        index_entry: dict[str, Any] = {"type": params.type, "params": used}
        if caught:
            index_entry["warnings"] = [str(w.message) for w in caught]
        if params.type != "flat":
            queries, source = (user_vectors, "user_vectors") if len(user_vectors) else (item_vectors, "item_vectors")
            q = queries[sample_rows(len(queries), cfg.recall_users, cfg.seed)]
            index_entry["recall_vs_exact"] = {**recall_vs_exact(index, item_vectors, q, cfg.recall_k), "queries": source}
            log.info("index recall", **index_entry["recall_vs_exact"])
            recall = index_entry["recall_vs_exact"]["recall"]
            if recall is not None and recall < cfg.min_index_recall:
                raise IndexRecallError(
                    f"{params.type} index recall@{cfg.recall_k} vs exact search is {recall:.3f} < "
                    f"min_index_recall {cfg.min_index_recall}: nothing written; use --index flat, a larger "
                    f"--ef-search / --nprobe, or lower --min-index-recall"
                )

        np.save(tmp / M.ITEM_VECTORS, item_vectors)
        np.save(tmp / M.USER_VECTORS, user_vectors)
        write_json(tmp / M.ITEM_IDS, item_ids)
        write_json(tmp / M.ITEM_TITLES, item_titles)
        write_json(tmp / M.USER_IDS, [str(u) for u in bundle.user_ids])
        write_user_history(tmp / M.USER_HISTORY, bundle.user_histories)
        files += [M.ITEMS_INDEX, M.ITEM_VECTORS, M.USER_VECTORS, M.ITEM_IDS, M.ITEM_TITLES, M.USER_IDS, M.USER_HISTORY]
        for asset, path in bundle.assets.items():
            shutil.copyfile(path, tmp / asset)
            files.append(asset)

        source: dict[str, Any] = {"checkpoint": str(source_checkpoint) if source_checkpoint else None,
                                  "exported_at": utc_now_iso()}
        if source_checkpoint:
            source["checkpoint_sha256"], source["checkpoint_files"] = checkpoint_sha256(Path(source_checkpoint))
        manifest: dict[str, Any] = {
            "format_version": M.FORMAT_VERSION,
            "name": name,
            "version": None,  # set by publish()
            "kind": bundle.kind,
            "user_tower": bundle.user_tower,
            "item_tower": bundle.item_tower,
            "dim": int(bundle.dim),
            "metric": M.METRIC,
            "num_items": len(item_ids),
            "num_users": len(bundle.user_ids),
            "capabilities": {
                "user_id": len(bundle.user_ids) > 0,
                "history": "user_encoder" in encoders,
                "upsert_items": "item_encoder" in encoders and bundle.item_tower in ("text", "hybrid"),
            },
            "files": file_entries(tmp, files),
            "index": index_entry,
            "encoders": encoders,
            bundle.kind: bundle.model_config,
            "parity": parity,
            "quantization": quantization or None,
            "source": source,
            "package_versions": package_versions(),
            "opset": cfg.opset,
        }
        if journal_entry is not None:
            manifest["journal"] = journal_entry
        version_dir = publish(tmp, model_dir, manifest)
    log.info("version written", path=str(version_dir), version=manifest["version"])
    return version_dir
