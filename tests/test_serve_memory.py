"""`llmrec bench serve-memory` on a tiny size: both formats load through the server's code, the format-2
one memory-mapped, and every asked user resolves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.serve_memory import ServeMemoryConfig, asked_ids, markdown, run_serve_memory, write_version
from repository.arrays import UserIdLookup
from repository.reader import load_files, read_known_users


def test_synthetic_versions_hold_the_same_users_in_both_formats(tmp_path: Path) -> None:
    cfg = ServeMemoryConfig(users=[500], dim=8, items=50, requests=20, work=tmp_path)
    mapped, whole = (load_files(write_version(tmp_path, 500, cfg, fmt)) for fmt in ("mmap", "whole"))
    assert isinstance(mapped.user_ids, UserIdLookup) and isinstance(mapped.user_vectors, np.memmap)
    assert isinstance(whole.user_ids, dict) and not isinstance(whole.user_vectors, np.memmap)
    for user in asked_ids(500, 20, 0):
        row = mapped.user_ids.get(user)
        assert row is not None and row == whole.user_ids[user]
        np.testing.assert_array_equal(mapped.user_vectors[row], whole.user_vectors[row])
    ids, indptr, indices = read_known_users(mapped.path)
    assert ids == read_known_users(whole.path)[0] and len(indptr) == 501 and len(indices) == indptr[-1]


def test_report_has_a_row_per_size_and_format(tmp_path: Path) -> None:
    cfg = ServeMemoryConfig(users=[300], dim=8, items=50, requests=50, work=tmp_path / "w")
    result = run_serve_memory(cfg)
    rows = {r["format"]: r for r in result["rows"]}
    assert set(rows) == {"mmap", "whole"} and rows["mmap"]["mapped"] and not rows["whole"]["mapped"]
    assert all(r["checked"] and r["requests"] == 50 and r["after_load"]["rss"] > 0 for r in rows.values())
    assert "memory-mapped (format 2)" in markdown(result) and not (tmp_path / "w" / "users300-mmap").exists()
    with pytest.raises(ValueError, match="formats are mmap, whole"):
        run_serve_memory(ServeMemoryConfig(users=[10], formats=["csv"], work=tmp_path))
