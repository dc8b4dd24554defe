"""The model kinds a repository may hold: (kind, user tower) -> its item towers and what it can encode.

One registry for both sides: the exporter refuses to write a bundle that is not listed here, the
server has one request adapter per entry (server/adapters; a test checks that every entry has one),
and a manifest naming anything else is refused on read. A new model kind is one module on each side
plus one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from repository.errors import VersionError


@dataclass(frozen=True)
class ModelKind:
    item_towers: tuple[str, ...]  # "id": trained rows; "text": an item encoder over text; "hybrid": both added
    history: bool  # the user tower encodes a history (a version then needs user_encoder.onnx)


KINDS: dict[tuple[str, str], ModelKind] = {
    ("cllm4rec", "lm"): ModelKind(("id",), history=True),  # CLLM4Rec: the LM over the rec prompt
    ("tcf", "sasrec"): ModelKind(("id", "text", "hybrid"), history=True),  # TCF: SASRec over item vectors
    ("tcf", "dssm"): ModelKind(("id", "text", "hybrid"), history=False),  # TCF: a user table, known users only
    ("student", "sasrec"): ModelKind(("id",), history=True),  # CLLM4Rec distilled: SASRec over item rows
}


def accepted() -> str:
    return ", ".join(f"{k}/{t}" for k, t in sorted(KINDS))


def check_kind(kind: str, user_tower: str, item_tower: str, where: str) -> ModelKind:
    """The registered model kind of (kind, user_tower, item_tower); VersionError when there is none."""
    spec = KINDS.get((kind, user_tower))
    if spec is None:
        raise VersionError(f"{where}: model kind/user tower {kind}/{user_tower} is not known; accepted: {accepted()}")
    if item_tower not in spec.item_towers:
        raise VersionError(f"{where}: item tower {item_tower!r} is not known for {kind}/{user_tower}; "
                           f"accepted: {', '.join(spec.item_towers)}")
    return spec
