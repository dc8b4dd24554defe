"""`llmrec bench journal`, small: the deletion part searches right with both strategies and the report
renders (the replica part spawns servers and waits for journal polls: run by the command itself)."""

from __future__ import annotations

from benchmarks.journal import JournalBenchConfig, _deletions, markdown


def test_deletion_bench_runs_and_the_report_names_every_case() -> None:
    d = _deletions(JournalBenchConfig(items=2000, deletions=600, dim=16, queries=20))
    assert [s["case"].split(",")[0] for s in d["search"]] == ["no deletion", "600 deleted", "600 deleted"]
    row = {"backend": "file", "replicas": 2, "upsert_p50_ms": 1.0, "upsert_p99_ms": 2.0, "all_serve_p50_ms": 3.0,
           "all_serve_p99_ms": 4.0, "token_read_p50_ms": 5.0, "token_read_p99_ms": 6.0}
    md = markdown({"backends": {"file": "f"}, "replicas": [row], "journal_poll_seconds": 1.0, "deletions": d})
    assert "| file | 2 |" in md and "600 deleted, mask" in md
