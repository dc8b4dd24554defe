"""Request adapters: how a request (a known user and/or a history of item rows) becomes the inputs of a
model kind's user encoder. One module per (kind, user tower) plus one line in ADAPTERS, one for each
model kind of the repository format (repository.kinds.KINDS, which the exporter validates against and
the manifest reader enforces; tests/test_repository_format.py checks that every kind has its adapter).

An adapter class declares
- `kind`, `user_tower`: the manifest fields it serves (the registry key),
and is built from a version's manifest (`__init__(path, manifest)`, raising VersionError when a field it
needs is missing), then gives `payload(user_row, history_rows, item_vectors)` for one request and
`feeds(payloads, input_names)` for a batch of them; an adapter whose inputs vary in length may also give
`length(payload)`, and a batch then runs in groups of similar length (server.encoders.length_groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from repository.manifest import Manifest
from server.adapters.cllm4rec_lm import Cllm4recPrompt
from server.adapters.student_sasrec import StudentSequence
from server.adapters.tcf_dssm import KnownUsersOnly
from server.adapters.tcf_sasrec import SasrecSequence


class RequestAdapter(Protocol):
    kind: ClassVar[str]
    user_tower: ClassVar[str]

    def __init__(self, path: Path, manifest: Manifest) -> None: ...

    def payload(self, user_row: int | None, history_rows: Sequence[int],
                item_vectors: Callable[[Sequence[int]], np.ndarray]) -> Any: ...

    def feeds(self, payloads: Sequence[Any], input_names: Sequence[str]) -> dict[str, np.ndarray]: ...


ADAPTERS: dict[tuple[str, str], type[RequestAdapter]] = {
    (a.kind, a.user_tower): a for a in (Cllm4recPrompt, SasrecSequence, KnownUsersOnly, StudentSequence)
}


def adapter_for(kind: str, user_tower: str) -> type[RequestAdapter]:
    """The adapter of a model kind the manifest reader has accepted (so one exists: see the docstring)."""
    return ADAPTERS[(kind, user_tower)]
