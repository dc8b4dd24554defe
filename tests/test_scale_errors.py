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


def _tcf_cli():
    from models.tcf import cli
    return cli


def _cllm4rec_cli():
    from models.cllm4rec import cli
    return cli


@pytest.mark.parametrize("cli, message, train, valid, window", [
    # TCF trains on whole histories and scores their last `window` items (30 train + 1 valid: 31)
    (_tcf_cli, "longer than the user tower's window", 30, 1, 20),
    # CLLM4Rec's prompt holds the last `window` of a user's train + valid items (130 + 10: 140)
    (_cllm4rec_cli, "longer than the prompt window", 130, 10, 128)])
def test_histories_longer_than_the_window_are_said_once_at_training(monkeypatch, cli, message, train, valid,
                                                                     window) -> None:
    module = cli()
    split = Split("random_80_10_10", 0, 300, [np.arange(train), np.arange(5)],
                  [np.arange(train, train + valid), np.array([41])], [np.array([250]), np.array([251])], 0)
    # the module's own logger: structlog caches loggers on first use, so capture_logs() would miss it
    # once another test has logged through it
    logs: list[dict] = []
    monkeypatch.setattr(module.log, "warning", lambda event, **kw: logs.append({"event": event, **kw}))
    module._warn_long_histories(split, window=window)
    module._warn_long_histories(split, window=train + valid)  # every history fits: nothing said
    warned = [e for e in logs if message in e["event"]]
    assert len(warned) == 1 and warned[0]["users"] == 1 and warned[0]["of"] == 2
    assert warned[0]["longest"] == train + valid
