"""Renders benchmarks/results/images.json as images.md beside it.

Three writers fill that JSON (scripts/build-images.sh: sizes and build times; tests/containers: start-up,
memory and stop times; scripts/compose-flow.sh: the compose flow's timings), each merging its own part, so
one renderer keeps the Markdown in step whichever of them ran last. Standard library only: the build
script runs it with the host's python3, outside the project's venv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return lines


def render(data: dict[str, Any]) -> str:
    out = ["# Container images", "", f"Regenerate: `{data.get('command', 'scripts/build-images.sh')}`.", ""]
    images = data.get("images", {})
    if images:
        out += ["## Build", ""]
        out += _table(
            ["target", "image", "size MB", "build s", "layer cache", "build s measured at", "base", "engine", "cores",
             "last built at"],
            [[t, e["image"], e["size_mb"], e.get("build_s"), "reused" if e.get("layer_cache") else "none",
              e.get("build_s_measured_at", e["built_at"]), f"`{e['base']}`", e["engine"], e["cores"], e["built_at"]]
             for t, e in images.items()],
        )
        cpus = {e["cpu"] for e in images.values()}
        out += ["", "CPU: " + "; ".join(sorted(cpus)), ""]
        if "train" in images:
            out += [f"train: torch from the {'local wheel folder' if images['train'].get('torch_wheel') == 'local' else 'CPU index'}.", ""]
    base = data.get("local_base")
    if base:
        out += [f"Local base `{base['image']}` (mmdebstrap, Debian 12, Python 3.11): made in {base['make_s']} s "
                f"({base['made_at']}).", ""]
    runs = data.get("runs", {})
    if runs:
        out += ["## Run (tests/containers, tiny exported repository mounted at /models)", ""]
        out += _table(
            ["run", "image", "/readyz 200 after start s", "RSS MB (serving)", "SIGTERM to exit s", "exit code",
             "measured at"],
            [[k, r["image"], r["ready_s"], r["rss_mb"], r["stop_s"], r["exit_code"], r["measured_at"]]
             for k, r in runs.items()],
        )
        out.append("")
    suite = data.get("suite")
    if suite:
        fresh = not any(suite.get("images_present_at_start", {}).values())
        out += [f"Container suite (`pytest tests/containers`): {suite['tests']} tests, {suite['failed']} failed, "
                f"{suite['wall_s']} s wall time, {'on an empty image store (builds everything)' if fresh else 'with images present at start (layer cache)'}; "
                f"measured at {suite['measured_at']}.", ""]
    compose = data.get("compose")
    if compose:
        out += ["## Compose flow (scripts/compose-flow.sh)", ""]
        out += _table(["step", "seconds"], [[k, v] for k, v in compose.get("steps_s", {}).items()])
        out += ["", f"Alert fired: `{compose.get('alert')}` {compose.get('alert_after_stop_s')} s after the server "
                f"stopped (rule `for: {compose.get('alert_for')}`); measured at {compose.get('measured_at')}.", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "benchmarks/results/images.json")
    path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
