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

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"  # the shipped reference results
DEFAULT_RESULTS_DIR = Path("llmrec-results")  # relative: under the working directory at write time
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
    from llmrec.cli import current_command

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


def write_report(name: str, payload: dict[str, Any], markdown: str, results_dir: Path | None = None) -> Path:
    """Writes <results_dir>/<name>.json and <name>.md; returns the JSON path."""
    out = Path(results_dir or DEFAULT_RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "command": payload.get("command", invoking_command())}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown)
    return json_path
