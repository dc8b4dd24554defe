"""Evaluation reports: one JSON file plus a Markdown table beside it, under benchmarks/results/."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


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
    out = Path(results_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "command": payload.get("command", invoking_command())}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown)
    return json_path
