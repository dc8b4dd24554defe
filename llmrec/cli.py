"""One entry point, `llmrec`, routing subcommands to the module that owns them.

Subcommand modules are imported lazily so that `llmrec serve` and `llmrec recommend` never
import torch: the serving image does not have it. A user's mistake (common.errors.UserError) ends
here as one line and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import os
import sys

from common import logs
from common.command import running
from common.errors import UserError
from llmrec import __version__

# command words -> "module:function"; each function takes the remaining argv and returns an exit code.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train", "cllm4rec"): ("models.cllm4rec.cli:train_main", "train CLLM4Rec (ID tokens on a frozen causal LM)"),
    ("train", "tcf"): ("models.tcf.cli:train_main", "train TCF (text item tower + SASRec/DSSM user tower)"),
    ("train", "student"): ("models.student.cli:train_main", "distil a SASRec-sized student from a CLLM4Rec checkpoint"),
    ("eval", "baselines"): ("models.baselines.cli:eval_main",
                            "evaluate most-popular / BPR / ALS / EASE on both protocols"),
    ("eval", "cllm4rec"): ("models.cllm4rec.cli:eval_main", "evaluate a CLLM4Rec checkpoint on the test split"),
    ("eval", "tcf"): ("models.tcf.cli:eval_main", "evaluate a TCF checkpoint on the test split"),
    ("eval", "student"): ("models.student.cli:eval_main", "students vs their teacher, without it, and the baselines"),
    ("data", "synth"): ("models.data.synth:main", "write synthetic interaction logs + item texts (scale tests)"),
    ("export",): ("export.cli:main", "checkpoint -> new version in a model repository (ONNX + FAISS)"),
    ("serve",): ("server.cli:main", "serve a model repository over gRPC"),
    ("recommend",): ("llmrec.client_cli:recommend_main", "ask a running server for recommendations"),
    ("models",): ("llmrec.client_cli:models_main", "list a running server's models and versions"),
    ("upsert",): ("llmrec.client_cli:upsert_main", "add or replace items by text from a CSV/JSONL file (admin)"),
    ("delete",): ("llmrec.client_cli:delete_main", "stop recommending items, on every replica (admin)"),
    ("reload",): ("llmrec.client_cli:reload_main", "make a running server rescan its repository now (admin)"),
    ("journal", "compact"): ("llmrec.client_cli:journal_compact_main",
                             "rewrite a model's item journal as its effective state (replicas rebuild to the same)"),
    ("bench",): ("benchmarks.cli:main", "latency / throughput / quality / scale benchmarks"),
    ("demo",): ("llmrec.demo:main", "the README's main job: data -> train -> export -> serve -> answers"),
}


def _usage() -> str:
    lines = ["usage: llmrec <command> [options]   (llmrec <command> --help for its options)", ""]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<18} {help_text}")
    lines += ["", "Mistakes in files or flags are reported in one line; LLMREC_DEBUG=1 adds the traceback."]
    return "\n".join(lines)


def _suggestion(argv: list[str]) -> str:
    """ "did you mean ..." for a mistyped command word (`llmrec trian`, `llmrec train tfc`)."""
    names = [" ".join(w) for w in COMMANDS]
    group = [n for n in names if n.split()[0] == argv[0]]
    if group:  # the first word is right, the second is not
        return f" (did you mean one of: {', '.join(group)})"
    words = sorted({w[0] for w in COMMANDS})
    close = difflib.get_close_matches(argv[0], words, n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def _resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    for n in (2, 1):
        key = tuple(argv[:n])
        if key in COMMANDS:
            return COMMANDS[key][0], argv[n:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"llmrec {__version__}")
        return 0
    resolved = _resolve(argv)
    if resolved is None:
        print(f"llmrec: unknown command {' '.join(argv[:2])!r}{_suggestion(argv)}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, rest = resolved
    module_name, func_name = target.split(":")
    logs.quiet_libraries()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"llmrec: '{' '.join(argv[:2])}' is not yet available in this build ({exc})", file=sys.stderr)
            return 2
        raise
    try:
        with running(argv):
            return int(getattr(module, func_name)(rest) or 0)
    except UserError as exc:
        if os.environ.get("LLMREC_DEBUG", "0") not in ("", "0"):
            raise
        command = " ".join(itertools.takewhile(lambda a: not a.startswith("-"), argv))  # the words as typed
        print(f"llmrec {command}: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return exc.exit_code
