"""The user-facing error types: what `llmrec` reports as one line and an exit code, not a traceback.

A mistake in what the user gave (a data file, a flag value, a config file, a checkpoint folder)
raises one of these with a message that says what was wrong and what is accepted; the entry point
(`llmrec.cli`) prints it as `llmrec <command>: <message>` and exits with `exit_code`. Any other
exception is a bug and keeps its traceback; LLMREC_DEBUG=1 shows the traceback of these too, for
bug reports. Each type also derives from the builtin its callers caught before (ValueError,
FileNotFoundError), so library code and tests that catch those keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix; the message names it and what is accepted."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A flag value or config file that cannot be used."""


class DataError(UserError, ValueError):
    """A data file that cannot be read as the chosen format (message: `<file>:<line>: ...`)."""


class DataFileNotFound(UserError, FileNotFoundError):
    """A data or items file that does not exist."""


class CheckpointError(UserError, ValueError):
    """A folder given as a checkpoint that is not one this version can read."""


@contextmanager
def reading_checkpoint(folder: Path, written_by: str) -> Iterator[None]:
    """Turns a failure to read `folder` as a checkpoint into one CheckpointError that names the
    folder and what is expected. The checkpoint readers raise plain OSError/ValueError/KeyError
    (a missing file, a corrupt JSON, a hash mismatch, a missing key); here, where the folder came
    from the user, those are the user's to fix. The original stays chained (LLMREC_DEBUG=1)."""
    expected = f"expected a checkpoint folder written by `{written_by}`"
    if not Path(folder).is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; {expected}")
    try:
        yield
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder} is not a readable checkpoint ({exc}); {expected}") from exc
