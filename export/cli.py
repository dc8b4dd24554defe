"""`llmrec export`: checkpoint -> new version in a model repository, parity-checked.

Exit codes: 0 written; 1 export refused (parity failure, bad bundle, corrupt checkpoint); 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import logs
from common.config import parse, to_dict
from common.errors import reading_checkpoint
from export.config import ExportConfig
from repository.manifest import Manifest, read_manifest


def export_bundle(bundle: Any, repository: Path, name: str, cfg: ExportConfig | None = None,
                  source_checkpoint: Path | None = None) -> Path:
    """Python API (tests, demo): ServingBundle -> new version folder. See export.writer.export_bundle."""
    from export.writer import export_bundle as _export_bundle

    return _export_bundle(bundle, repository, name, cfg, source_checkpoint)


def summary(manifest: Manifest) -> dict[str, Any]:
    """The numbers worth a glance (and a report): parity, quantization, index recall."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "kind": manifest.kind,
        "user_tower": manifest.user_tower,
        "item_tower": manifest.item_tower,
        "num_items": manifest.num_items,
        "num_users": manifest.num_users,
        "dim": manifest.dim,
        "index": manifest.index.to_dict(),
        "parity": {k: {x: v[x] for x in ("max_abs_err", "cases", "k", "topk_identical", "topk_identical_up_to_ties")}
                   for k, v in manifest.parity.items()},
        "encoders": {k: {"precision": v.precision, "graph_optimization": v.graph_optimization}
                     for k, v in manifest.encoders.items()},
        "quantization": manifest.quantization,
        "known_users": manifest.known_users.to_dict() if manifest.known_users else None,
        "bytes": sum(f.bytes for f in manifest.files.values()),
    }


def write_export_report(version_dir: Path, cfg: ExportConfig) -> Path:
    from models.reports import markdown_table, write_report

    s = summary(read_manifest(version_dir))
    rows = [[enc, p["max_abs_err"], p["cases"], p["topk_identical"], s["encoders"][enc]["precision"],
             s["encoders"][enc]["graph_optimization"]] for enc, p in s["parity"].items()]
    md = f"# Export {s['name']} v{s['version']} ({s['kind']}, {s['user_tower']}/{s['item_tower']})\n\n"
    md += markdown_table(["encoder", "max abs err", "cases", f"top-{cfg.parity.k} identical", "precision", "ORT opt"],
                         rows, digits=8)
    rec = s["index"].get("recall_vs_exact")
    md += f"\nIndex: {s['index']['type']} {s['index']['params']}"
    md += f", recall@{rec['k']} vs exact {rec['recall']:.4f} over {rec['users']} users\n" if rec else "\n"
    for enc, q in (s["quantization"] or {}).items():
        md += f"\nint8 {enc}: {q['status']}, " + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in q.items() if k not in ("status", "method"))
        md += "\n"
    known = s["known_users"]
    if known:
        q = known.get("quality") or {}
        md += f"\nKnown users: {s['num_users']}, vectors {known['vectors_dtype']}"
        md += (f" (float16 {q['status']}: top-20 overlap {q.get('top20_overlap', float('nan')):.4f}"
               + (f", {q['metric']} {q['fp32']:.4f} -> {q['fp16']:.4f}" if "metric" in q else "") + ")\n"
               if q else "\n")
        c = known.get("compute") or {}
        if c:
            g = c.get("quality") or {}
            md += f"Known-user pass: {c['precision']} on {c['engine']} ({c.get('decided', '')})"
            md += (f"; bf16 gate {g['status']}: top-20 overlap {g.get('top20_overlap', float('nan')):.4f}"
                   + (f", {g['metric']} {g['fp32']:.4f} -> {g['bf16']:.4f}" if "metric" in g else "")
                   + f"; on the same {g.get('users_timed')} users fp32 {g.get('fp32_seconds')} s, bf16 "
                   f"{g.get('bf16_seconds')} s ({g.get('bf16_speedup')}x)\n" if g else "\n")
    return write_report(f"export-{s['name']}", {"config": to_dict(cfg), "version_dir": str(version_dir), **s}, md)


def main(argv: list[str]) -> int:
    cfg = parse(ExportConfig, argv, prog="llmrec export",
                description="Export a checkpoint as a new version of a model repository (ONNX + FAISS).")
    missing = [f"--{f}" for f in ("checkpoint", "repository", "name") if not getattr(cfg, f)]
    if missing:
        print(f"llmrec export: error: {', '.join(missing)} required", file=sys.stderr)
        return 2
    logs.setup()
    import torch

    from export.parity import ParityError
    from export.writer import BundleError, IndexRecallError
    from models.bundle import load_bundle
    from repository.errors import VersionError

    torch.set_num_threads(cfg.threads)
    try:
        with reading_checkpoint(Path(cfg.checkpoint), "llmrec train cllm4rec|tcf"):
            bundle = load_bundle(Path(cfg.checkpoint))
        version_dir = export_bundle(bundle, Path(cfg.repository), cfg.name, cfg, source_checkpoint=Path(cfg.checkpoint))
    except (ParityError, BundleError, IndexRecallError, VersionError, FileNotFoundError, ValueError) as exc:
        print(f"llmrec export: refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"version_dir": str(version_dir), **summary(read_manifest(version_dir))}, indent=2))
    if cfg.report:
        print(f"report: {write_export_report(version_dir, cfg)}")
    return 0
