"""`llmrec bench scale|encoders|grpc|resilience|train-speed|train-memory|coldstart|pipeline|journal|bpr-refit`: each writes a report under --results-dir, by default
./llmrec-results/ (bench_<what>[_<tag>], serving_resilience_<tag>, train_speed: .json + .md); the shipped ones
in benchmarks/results/ are rewritten only when that folder is named."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchmarks.coldstart import ColdStartConfig
from benchmarks.encoders import EncoderBenchConfig
from benchmarks.grpc_load import GrpcBenchConfig
from benchmarks.journal import main as _journal
from benchmarks.pipeline import PipelineConfig
from benchmarks.resilience import ResilienceConfig
from benchmarks.scale import ScaleConfig
from benchmarks.serve_memory import main as _serve_memory
from benchmarks.train_speed import TrainSpeedConfig
from common import config as cfgmod
from models.reports import SHIPPED_RESULTS_DIR, invoking_command, run_results_dir, write_report

C = TypeVar("C")


@dataclass
class ScaleArgs:
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = ""  # appended to the report name


@dataclass
class EncoderArgs:
    bench: EncoderBenchConfig
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = ""  # default: the model name


@dataclass
class TrainSpeedArgs:
    bench: TrainSpeedConfig = field(default_factory=TrainSpeedConfig)
    results_dir: Path | None = None  # None: ./llmrec-results
    name: str = "train_speed"  # report file name (without .json / .md)


@dataclass
class GrpcArgs:
    bench: GrpcBenchConfig
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = ""


@dataclass
class ColdStartArgs:
    bench: ColdStartConfig
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = "ml100k"


@dataclass
class ResilienceArgs:
    bench: ResilienceConfig = field(default_factory=ResilienceConfig)
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = "ml100k"


def _machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "python": platform.python_version()}


def _report(name: str, title: str, result: dict, md_body: str, results_dir: Path | None) -> int:
    result["machine"] = _machine()
    md = f"# {title}\n\n{md_body}"
    print(md)
    print(f"wrote {write_report(name, result, md, results_dir)}")
    return 0


@dataclass
class BenchArgs(Generic[C]):
    """The flags of a bench whose only settings are its config (`--bench.*`), a results folder and a tag."""

    bench: C
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = ""  # appended to the report name (bench_<what>[_<tag>])


def bench_main(argv: list[str], what: str, config: type[C], run: Callable[[C], dict[str, Any]],
               markdown: Callable[[dict[str, Any]], str], title: str, description: str | None = None) -> int:
    """`llmrec bench <what>`: parse, run, write bench_<what>[_<tag>].json/.md."""
    args = cfgmod.parse(BenchArgs[config], argv, prog=f"llmrec bench {what}", description=description or title)
    result = run(args.bench)
    name = f"bench_{what.replace('-', '_')}" + (f"_{args.tag}" if args.tag else "")
    return _report(name, title, result, markdown(result), args.results_dir)


def _scale(argv: list[str]) -> int:
    from benchmarks.scale import markdown, run_scale

    args = cfgmod.parse(ScaleArgs, argv, prog="llmrec bench scale")
    result = run_scale(args.scale)
    name = "bench_scale" + (f"_{args.tag}" if args.tag else "")
    title = "Catalog scale: FAISS vs PyTorch matmul + topk (one query, one thread)"
    return _report(name, title, result, markdown(result), args.results_dir)


def _encoders(argv: list[str]) -> int:
    from benchmarks.encoders import markdown, run_encoders

    args = cfgmod.parse(EncoderArgs, argv, prog="llmrec bench encoders")
    result = run_encoders(args.bench)
    name = "bench_encoders_" + (args.tag or result["model"])
    title = "Encoder + search latency: ONNX Runtime + FAISS vs PyTorch eager"
    return _report(name, title, result, markdown(result), args.results_dir)


def _grpc(argv: list[str]) -> int:
    from benchmarks.grpc_load import markdown, plot, run_grpc

    args = cfgmod.parse(GrpcArgs, argv, prog="llmrec bench grpc")
    result = run_grpc(args.bench)
    name = "bench_grpc" + (f"_{args.tag}" if args.tag else "")
    out = run_results_dir(args.results_dir)  # the plots go beside the report, wherever that is
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = [p.name for p in plot(result, out / name)]
    md = markdown(result) + "".join(f"\n![{p}]({p})\n" for p in result["plots"])
    title = ("gRPC server under concurrent load: several models, paired" if "models" in result
             else "gRPC server under concurrent load, per engine")
    return _report(name, title, result, md, args.results_dir)


def _resilience(argv: list[str]) -> int:
    from benchmarks.resilience import markdown, run_resilience

    args = cfgmod.parse(ResilienceArgs, argv, prog="llmrec bench resilience")
    result = run_resilience(args.bench)
    name = "serving_resilience" + (f"_{args.tag}" if args.tag else "")
    title = "Serving resilience: deadline storm, flooded model, swaps, replicas, kill -9"
    return _report(name, title, result, markdown(result), args.results_dir)


def _coldstart(argv: list[str]) -> int:
    from benchmarks.coldstart import from_checkpoint, markdown

    args = cfgmod.parse(ColdStartArgs, argv, prog="llmrec bench coldstart")
    result = from_checkpoint(args.bench)
    name = "bench_coldstart" + (f"_{args.tag}" if args.tag else "")
    return _report(name, "New items served live: held-out items added by text, replayed over gRPC", result,
                   markdown(result), args.results_dir)


def _train_speed(argv: list[str]) -> int:
    from benchmarks.train_speed import markdown, run_train_speed

    args = cfgmod.parse(TrainSpeedArgs, argv, prog="llmrec bench train-speed")
    result = run_train_speed(args.bench)
    title = "Training speed: seconds per epoch through the training engine (fp32 vs bf16, backbone depth)"
    return _report(args.name, title, result, markdown(result), args.results_dir)


def _bpr_refit(argv: list[str]) -> int:
    from benchmarks.bpr_refit import main

    return main(argv)


def _train_memory(argv: list[str]) -> int:
    from benchmarks.train_memory import main  # torch and the model only when asked for

    return main(argv)


@dataclass
class PipelineArgs:
    bench: PipelineConfig = field(default_factory=PipelineConfig)
    results_dir: Path | None = None  # None: ./llmrec-results
    tag: str = ""  # appended to the report name (bench_pipeline[_<tag>])


def _pipeline(argv: list[str]) -> int:
    from benchmarks.pipeline import markdown, plot, run_pipeline

    args = cfgmod.parse(PipelineArgs, argv, prog="llmrec bench pipeline")
    name = "bench_pipeline" + (f"_{args.tag}" if args.tag else "")
    out = run_results_dir(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = "The whole path at several data sizes: each step's wall time, CPU seconds, peak RSS, output and growth"

    def write(result: dict) -> None:  # after every step: a stopped run keeps what it measured
        result.update(command=invoking_command(), machine=_machine())
        write_report(name, result, f"# {title}\n\n{markdown(result)}", args.results_dir)

    result = run_pipeline(args.bench, write)
    result["plots"] = [p.name for p in plot(result, out / name)]
    result.update(command=invoking_command(), machine=_machine())
    md = markdown(result) + "".join(f"\n![{p}]({p})\n" for p in result["plots"])
    return _report(name, title, result, md, args.results_dir)


@dataclass
class ReadmeArgs:
    readme: Path = Path(__file__).resolve().parent.parent / "README.md"
    results_dir: Path | None = None  # default benchmarks/results


def _readme(argv: list[str]) -> int:
    from benchmarks.readme import update

    args = cfgmod.parse(ReadmeArgs, argv, prog="llmrec bench readme")
    changed = update(args.readme, Path(args.results_dir or SHIPPED_RESULTS_DIR))
    print(f"{args.readme}: performance section {'rewritten' if changed else 'already up to date'}")
    return 0


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"scale": _scale, "encoders": _encoders, "grpc": _grpc,
                                                      "resilience": _resilience, "train-speed": _train_speed,
                                                      "coldstart": _coldstart, "readme": _readme,
                                                      "pipeline": _pipeline, "serve-memory": _serve_memory,
                                                      "journal": _journal, "train-memory": _train_memory,
                                                      "bpr-refit": _bpr_refit}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: llmrec bench {{{'|'.join(SUBCOMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]](argv[1:])
