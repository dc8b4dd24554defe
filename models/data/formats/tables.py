"""CSV / TSV (optionally gzipped) / Parquet tables with a header, read as (line number, row) so that
the interactions and the items file of the `interactions` format report mistakes the same way."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from common.errors import DataError
from models.data.formats.memory import check_loadable
from models.data.formats.shared import check_file, lines

# Extension -> field separator of the text tables (each may also end in .gz).
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
TABLE_TYPES = ".csv, .tsv, .tab, .txt (each optionally .gz), .parquet"

Rows = Iterator[tuple[int, list[str]]]


def _delimiter(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    found = next((SEPARATORS[s] for s in suffixes if s in SEPARATORS), None)
    if found is not None:
        return found
    hint = "; review JSON lines load with --data.dataset amazon" if {".json", ".jsonl"} & set(suffixes) else ""
    raise DataError(
        f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'!r}; accepted: {TABLE_TYPES}{hint}"
    )


def _read_parquet(path: Path) -> tuple[list[str], Rows]:
    import pyarrow as pa  # imported here: only Parquet users pay for pyarrow's import
    import pyarrow.parquet as pq

    check_file(path)
    check_loadable(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = list(table.column_names)
    cols = [table.column(n).to_pylist() for n in names]

    def parquet_rows() -> Rows:
        for i, row in enumerate(zip(*cols, strict=True)):
            yield i + 2, ["" if v is None else str(v) for v in row]

    return names, parquet_rows()


def _check_separator(path: Path, names: list[str], delimiter: str) -> None:
    """A one-column header holding another separator means the file type (extension) is wrong:
    say so, instead of a missing-column error about a header like 'user;item;rating'."""
    other = next((d for d in (",", "\t", ";", "|") if d != delimiter and len(names) == 1 and d in names[0]), None)
    if other is None:
        return
    kind = "comma-separated (.csv)" if delimiter == "," else "tab-separated (.tsv/.tab/.txt)"
    raise DataError(
        f"{path}:1: header {names[0]!r} looks separated by {other!r}, but the extension says {kind}; "
        f"expected {delimiter!r} between fields (save tab-separated files as .tsv, comma-separated ones as .csv)"
    )


def read_table(path: Path) -> tuple[list[str], Rows]:
    """Header + (line number, row) for a CSV/TSV (optionally gzipped) or Parquet file.

    Rows of the wrong width raise with the file and line; Parquet rows are numbered from 2 as
    if the file had a header line, so messages read the same for every format.
    """
    if ".parquet" in [s.lower() for s in path.suffixes]:
        return _read_parquet(path)
    delimiter = _delimiter(path)
    reader = csv.reader(lines(path), delimiter=delimiter)
    names = next(reader, None)
    if names is None:
        raise DataError(f"{path}:1: empty file; expected a header line naming the columns")
    _check_separator(path, names, delimiter)

    def rows() -> Rows:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(names):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(names)} fields separated by "
                    f"{delimiter!r} (header {names}), got {len(row)}"
                )
            yield reader.line_num, row

    return names, rows()
