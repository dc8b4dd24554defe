"""Bad input at scale gets a clear one-line message before any work, not a stall: a data file too big for
the memory available (estimated from its size, gzip included), and a history longer than the TCF user
tower's window (said once at training)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from models.data.config import DataConfig
from models.data.formats import memory
from models.data.loaders import load_data
from models.data.splits import Split


def write_csv(path: Path, rows: int) -> Path:
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u % 50},{u % 17},{u}\n" for u in range(rows)))
    return path


def test_a_data_file_too_big_for_memory_is_refused_before_reading(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "big.csv", 2000)
    need = path.stat().st_size * memory.LOAD_BYTES_PER_FILE_BYTE
    monkeypatch.setattr(memory, "available_bytes", lambda: int(need / 2))
    with pytest.raises(DataError) as err:
        load_data(DataConfig(dataset="interactions", path=path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert f"needs about {memory.gib(need)}" in msg and f"{memory.gib(need / 2)} is available" in msg
    monkeypatch.setattr(memory, "available_bytes", lambda: int(need * 2))
    assert load_data(DataConfig(dataset="interactions", path=path)).num_interactions == 2000


def test_a_gzipped_file_is_estimated_from_its_uncompressed_size(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "d.csv", 5000)
    packed = tmp_path / "d.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert packed.stat().st_size < plain.stat().st_size / 2
    assert memory.text_bytes(packed) == plain.stat().st_size
    with pytest.raises(DataError, match=r"d\.csv\.gz"):
        memory.check_loadable(packed, available=int(plain.stat().st_size * 2))


def test_parquet_is_estimated_from_its_row_count(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"user": ["1"] * 1000, "item": ["2"] * 1000}), path)
    assert memory.load_estimate(path) == 1000 * memory.LOAD_BYTES_PER_PARQUET_ROW
    with pytest.raises(DataError, match="needs about"):
        memory.check_loadable(path, available=1000)


def test_histories_longer_than_the_tcf_window_are_said_once_at_training(monkeypatch) -> None:
    from models.tcf import cli as tcf_cli

    split = Split("leave_one_out", 0, 100, [np.arange(30), np.arange(5)], [np.array([40]), np.array([41])],
                  [np.array([50]), np.array([51])], 0)
    # the module's own logger: structlog caches loggers on first use, so capture_logs() would miss it
    # once another test has logged through it
    logs: list[dict] = []
    monkeypatch.setattr(tcf_cli.log, "warning", lambda event, **kw: logs.append({"event": event, **kw}))
    tcf_cli._warn_long_histories(split, window=20)
    tcf_cli._warn_long_histories(split, window=50)
    warned = [e for e in logs if "longer than the user tower's window" in e["event"]]
    assert len(warned) == 1 and warned[0]["users"] == 1 and warned[0]["longest"] == 31


def test_histories_longer_than_the_cllm4rec_prompt_window_are_said_once_at_training(monkeypatch) -> None:
    from models.cllm4rec import cli as cllm_cli

    split = Split("random_80_10_10", 0, 300, [np.arange(130), np.arange(5)], [np.arange(130, 140), np.array([41])],
                  [np.array([250]), np.array([251])], 0)
    logs: list[dict] = []
    monkeypatch.setattr(cllm_cli.log, "warning", lambda event, **kw: logs.append({"event": event, **kw}))
    cllm_cli._warn_long_histories(split, window=128)
    cllm_cli._warn_long_histories(split, window=140)
    warned = [e for e in logs if "longer than the prompt window" in e["event"]]
    assert len(warned) == 1 and warned[0]["users"] == 1 and warned[0]["longest"] == 140 and warned[0]["of"] == 2
