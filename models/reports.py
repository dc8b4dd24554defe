"""Evaluation reports: one JSON file plus a Markdown table beside it.

A run's reports go to ./llmrec-results/ (the working directory, never the installed package) unless
a command's --results-dir says otherwise. benchmarks/results/ holds the reference results shipped
with the repository (MovieLens-100K on this project's machines); they are rewritten only by naming
that folder with --results-dir, never by default, since the figures differ between CPUs.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the reference results shipped with the repository: read by `llmrec bench readme` and the tests, written
# only when a command names this folder with --results-dir
SHIPPED_RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
# where a run writes when no --results-dir is given; relative: under the working directory at write time
RUN_RESULTS_DIR = Path("llmrec-results")
DATASET_TITLES = {"ml-100k": "MovieLens-100K"}


def dataset_tag(name: str) -> str:
    """A data set's name as it appears in report file names: "ml-100k" -> "ml100k"."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def report_file_name(template: str, data_name: str) -> str:
    """A report name with "{data}" replaced by the data set's tag, so reports on a user's data are
    never named (or written over) as the MovieLens ones."""
    return template.replace("{data}", dataset_tag(data_name))


def dataset_title(name: str) -> str:
    """The data set's name as a report title says it ("MovieLens-100K"; a user's own data by its name)."""
    return DATASET_TITLES.get(name, name)


def invoking_command() -> str:
    """The command line that produced a report, as a user would retype it."""
    from common.command import current_command

    if (dispatched := current_command()) is not None:
        return dispatched
    argv = list(sys.argv)
    if argv and argv[0].endswith(("llmrec", "__main__.py")):
        argv[0] = "llmrec"
    return " ".join(shlex.quote(a) for a in argv)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_results_dir(results_dir: Path | None) -> Path:
    """The folder a run writes its report and every file beside it (plots) into: --results-dir, else
    RUN_RESULTS_DIR. One rule for all of a report's files, so none of them lands in the shipped folder
    unless it was named."""
    return Path(results_dir) if results_dir is not None else RUN_RESULTS_DIR


def write_report(name: str, payload: dict[str, Any], markdown: str, results_dir: Path | None = None) -> Path:
    """Writes <results_dir>/<name>.json and <name>.md; returns the JSON path."""
    out = run_results_dir(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "command": payload.get("command", invoking_command())}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown)
    return json_path


def explicit_argv(cfg: Any, preset_field: str | None = "schedule") -> list[str]:
    """Every field of a parsed command config as an explicit flag, the way tyro reads it back.

    A command as typed (`--schedule default --train.seed 1`) trains whatever the preset says on the
    day it is rerun; spelled out field by field it trains what it trained then, whatever later
    changes the presets or the dataclass defaults (flags always win over both: common.config). The
    preset's name comes first, for the reader; it no longer decides anything."""
    import dataclasses

    out: list[str] = []
    if preset_field is not None and hasattr(cfg, preset_field):
        out += [f"--{preset_field.replace('_', '-')}", str(getattr(cfg, preset_field))]

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            if not prefix and f.name == preset_field:
                continue
            value = getattr(obj, f.name)
            name = prefix + f.name.replace("_", "-")
            if dataclasses.is_dataclass(value):
                walk(value, name + ".")
            elif isinstance(value, bool):
                out.append(f"--{name}" if value else f"--{prefix}no-{f.name.replace('_', '-')}")
            elif value is None:
                out.extend([f"--{name}", "None"])
            elif isinstance(value, list | tuple):
                out.extend([f"--{name}", *(str(v) for v in value)])
            else:
                out.extend([f"--{name}", repr(value) if isinstance(value, float) else str(value)])

    walk(cfg, "")
    return out


def explicit_command(prog: str, cfg: Any, preset_field: str | None = "schedule") -> str:
    """`prog` and every field of `cfg` as explicit flags (explicit_argv), quoted for a shell."""
    return " ".join(shlex.quote(a) for a in [*prog.split(), *explicit_argv(cfg, preset_field)])
