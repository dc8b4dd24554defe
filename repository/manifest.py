"""`manifest.json`, typed: what a version folder holds and how to serve it (docs/model-repository.md).

The exporter builds a `Manifest` and writes it with `to_dict()`; the server reads one with
`Manifest.from_dict()`, which checks every field it relies on and says in one line what is wrong
(`VersionError`), so a bad manifest is refused at load time rather than failing mid-request. Keys a
reader does not know are kept in `extra` and written back unchanged: the exporter may add
informational keys without a format change, and a round trip never loses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repository.arrays import read_json
from repository.errors import VersionError
from repository.files import MANIFEST
from repository.kinds import check_kind

FORMAT_VERSION = 2  # 2: known users as memory-mapped .npy files (`known_users` section)
READABLE_FORMATS = (1, 2)  # 1: user_ids.json + user_history.npz, still read (whole, as before)
METRIC = "inner_product"
INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
ENCODER_NAMES = ("user_encoder", "item_encoder")

# Keys a reader needs to serve a version; a manifest missing any of them is refused.
REQUIRED_KEYS = (
    "format_version", "name", "version", "kind", "user_tower", "item_tower", "dim", "metric",
    "num_items", "num_users", "capabilities", "files", "index", "encoders",
)

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def _field(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """d[key] checked against `types` (bool is not accepted as an int); `default` when absent, if given."""
    if key not in d:
        if default is ...:
            raise VersionError(f"{where}: missing key {key!r}")
        return default
    value = d[key]
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise VersionError(f"{where}: {key!r} must be {wanted}, got {json.dumps(value)[:60]}")
    return value


def _object(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise VersionError(f"{where}: expected an object, got {json.dumps(d)[:60]}")
    return d


def _rest(d: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def _drop_none(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Optional keys are left out when unset, as the exporter has always written them."""
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


@dataclass
class FileEntry:
    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, d: Any, where: str) -> FileEntry:
        d = _object(d, where)
        return cls(_field(d, "sha256", str, where), _field(d, "bytes", int, where))


@dataclass
class Capabilities:
    """What the server may do with this version."""

    user_id: bool = False  # known-user requests (user_vectors.npy)
    history: bool = False  # history requests through user_encoder.onnx
    upsert_items: bool = False  # add items by text through item_encoder.onnx

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Capabilities:
        d = _object(d, where)
        return cls(*(_field(d, k, bool, where, False) for k in ("user_id", "history", "upsert_items")))


@dataclass
class IndexSection:
    type: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)  # the values used (nlist, nprobe, M, ef_search, ...)
    warnings: list[str] | None = None
    recall_vs_exact: dict[str, Any] | None = None  # approximate indexes: measured recall@k vs exact search

    @classmethod
    def from_dict(cls, d: Any, where: str) -> IndexSection:
        d = _object(d, where)
        kind = _field(d, "type", str, where)
        if kind not in INDEX_TYPES:
            raise VersionError(f"{where}: index type {kind!r}; accepted: {', '.join(INDEX_TYPES)}")
        return cls(kind, _field(d, "params", dict, where, {}), _field(d, "warnings", (list, type(None)), where, None),
                   _field(d, "recall_vs_exact", (dict, type(None)), where, None))

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"type": self.type, "params": self.params, "warnings": self.warnings or None,
                           "recall_vs_exact": self.recall_vs_exact}, "warnings", "recall_vs_exact")


@dataclass
class EncoderSpec:
    """One ONNX graph of the version and how to feed it."""

    path: str
    inputs: list[dict[str, Any]]  # [{"name", "dtype", "shape"}], in the order the graph declares them
    output: dict[str, Any]
    opset: int | None = None
    precision: str = "fp32"  # or "int8-dynamic"
    graph_optimization: str = "none"
    external_data: str | None = None  # graphs over 2 GB only
    reference: dict[str, Any] | None = None  # reference_<encoder>.npz entry: file, cases, probe users, metric
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("path", "inputs", "output", "opset", "precision", "graph_optimization", "external_data", "reference")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> EncoderSpec:
        d = _object(d, where)
        inputs = _field(d, "inputs", list, where, [])
        for i, spec in enumerate(inputs):
            _field(_object(spec, f"{where}.inputs[{i}]"), "name", str, f"{where}.inputs[{i}]")
        return cls(_field(d, "path", str, where), inputs, _field(d, "output", dict, where, {}),
                   _field(d, "opset", (int, type(None)), where, None), _field(d, "precision", str, where, "fp32"),
                   _field(d, "graph_optimization", str, where, "none"),
                   _field(d, "external_data", (str, type(None)), where, None),
                   _field(d, "reference", (dict, type(None)), where, None), _rest(d, cls.KNOWN))

    @property
    def input_names(self) -> list[str]:
        return [str(spec["name"]) for spec in self.inputs]

    @property
    def reference_file(self) -> str | None:
        return (self.reference or {}).get("file")

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.KNOWN}
        return {**_drop_none(out, "external_data", "reference"), **self.extra}


@dataclass
class PromptSection:
    """The `cllm4rec` section: how to build the rec prompt from ids, without a tokenizer."""

    vocab_size: int
    user_token_offset: int  # user row i -> token id user_token_offset + i
    item_token_offset: int  # item row j -> token id item_token_offset + j
    anonymous_user_token: int  # used when the request has no known user
    max_history: int  # keep the most recent items; the template's suffix is never cut
    template: list[dict[str, Any]]  # parts concatenated in order: {"user"}, {"ids"}, {"history", "separator_ids"}
    pad_token_id: int = 0
    padding_side: str = "right"
    # Format 2: the graph holds no user rows. The user slot of the prompt carries the anonymous token and
    # the graph input `user_input` [batch, hidden] replaces its embedding with the user's row from the
    # file `user_rows` (last row: the anonymous user). Both null: a model without user tokens.
    user_rows: str | None = None
    user_input: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("vocab_size", "user_token_offset", "item_token_offset", "anonymous_user_token", "pad_token_id",
             "max_history", "template", "padding_side", "user_rows", "user_input")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> PromptSection:
        d = _object(d, where)
        ints = {k: _field(d, k, int, where) for k in ("vocab_size", "user_token_offset", "item_token_offset",
                                                      "anonymous_user_token", "max_history")}
        template = _field(d, "template", list, where)
        for i, part in enumerate(template):
            _object(part, f"{where}.template[{i}]")
        rows, user_input = (_field(d, k, (str, type(None)), where, None) for k in ("user_rows", "user_input"))
        if (rows is None) != (user_input is None):
            raise VersionError(f"{where}: 'user_rows' and 'user_input' go together (got {rows!r}, {user_input!r})")
        return cls(**ints, template=template, pad_token_id=_field(d, "pad_token_id", int, where, 0),
                   padding_side=_field(d, "padding_side", str, where, "right"), user_rows=rows,
                   user_input=user_input, extra=_rest(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {**_drop_none({k: getattr(self, k) for k in self.KNOWN}, "user_rows", "user_input"), **self.extra}


@dataclass
class TcfSection:
    """The `tcf` section: the SASRec window and the item encoder's tokenizer."""

    max_seq_len: int = 20  # SASRec reads the user's last max_seq_len items
    text_max_length: int | None = None  # item_encoder token length; null for ID item towers
    tokenizer: str | None = None  # tokenizer.json; null for ID item towers
    pad_token_id: int = 0
    id_part: str | None = None  # hybrid towers: the file of each exported item's trained ID part
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("max_seq_len", "text_max_length", "tokenizer", "pad_token_id", "id_part")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TcfSection:
        d = _object(d, where)
        return cls(_field(d, "max_seq_len", int, where, 20), _field(d, "text_max_length", (int, type(None)), where, None),
                   _field(d, "tokenizer", (str, type(None)), where, None), _field(d, "pad_token_id", int, where, 0),
                   _field(d, "id_part", (str, type(None)), where, None), _rest(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {**_drop_none({k: getattr(self, k) for k in self.KNOWN}, "id_part"), **self.extra}


@dataclass
class StudentSection:
    """The `student` section: the history window of a distilled student's SASRec user encoder."""

    max_seq_len: int  # the encoder reads a history's most recent max_seq_len item rows, left-padded
    pad_row: int = 0  # item row written at padded positions (masked)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the teacher it was distilled from

    KNOWN = ("max_seq_len", "pad_row")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> StudentSection:
        d = _object(d, where)
        seq = _field(d, "max_seq_len", int, where)
        if seq < 1:
            raise VersionError(f"{where}: 'max_seq_len' must be >= 1, got {seq}")
        return cls(seq, _field(d, "pad_row", int, where, 0), _rest(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {"max_seq_len": self.max_seq_len, "pad_row": self.pad_row, **self.extra}


@dataclass
class JournalFold:
    """The item journal records already in this version's catalogue (`llmrec export --fold-journal`)."""

    file: str
    folded_through: int
    folded_upserts: int
    # items deleted as of folded_through: their rows are in the catalogue (histories may name them) but never
    # recommended; None in versions folded before folds carried them (servers then re-apply every deletion)
    hidden: list[str] | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> JournalFold:
        d = _object(d, where)
        hidden = _field(d, "hidden", (list, type(None)), where, None)
        if hidden is not None and not all(isinstance(x, str) for x in hidden):
            raise VersionError(f"{where}: hidden must be a list of item id strings")
        return cls(_field(d, "file", str, where), _field(d, "folded_through", int, where),
                   _field(d, "folded_upserts", int, where, 0), hidden)


VECTOR_DTYPES = ("float32", "float16")  # numpy dtype names of user_vectors.npy


@dataclass
class KnownUsers:
    """The `known_users` section (format 2): which files hold the known users and how the vectors are
    stored. `quality` is the measured cost of float16 vectors (top-k overlap and probe metric vs float32);
    `compute` says how the exporter computed vectors an encoder produces (engine, precision, and the bf16
    gate's measurement when it ran). A reader that predates `compute` keeps it in `extra`."""

    vectors_dtype: str = "float32"
    layout: str = "npy-mmap"
    quality: dict[str, Any] | None = None
    compute: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = ("vectors_dtype", "layout", "quality", "compute")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> KnownUsers:
        d = _object(d, where)
        dtype, layout = _field(d, "vectors_dtype", str, where, "float32"), _field(d, "layout", str, where, "npy-mmap")
        if dtype not in VECTOR_DTYPES:
            raise VersionError(f"{where}: vectors_dtype {dtype!r}; accepted: {', '.join(VECTOR_DTYPES)}")
        if layout != "npy-mmap":
            raise VersionError(f"{where}: layout {layout!r}; accepted: npy-mmap")
        return cls(dtype, layout, _field(d, "quality", (dict, type(None)), where, None),
                   _field(d, "compute", (dict, type(None)), where, None), _rest(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return {**_drop_none({k: getattr(self, k) for k in self.KNOWN}, "quality", "compute"), **self.extra}


SECTIONS: dict[str, type[PromptSection] | type[TcfSection] | type[StudentSection]] = {
    "cllm4rec": PromptSection, "tcf": TcfSection, "student": StudentSection}


@dataclass
class Manifest:
    name: str
    kind: str  # repository.kinds.KINDS
    user_tower: str
    item_tower: str
    dim: int
    num_items: int
    num_users: int
    capabilities: Capabilities
    files: dict[str, FileEntry]
    index: IndexSection
    encoders: dict[str, EncoderSpec]
    section: PromptSection | TcfSection | StudentSection | None = None  # kind-specific, written under the kind's name
    version: int | None = None  # set when the version is published
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    parity: dict[str, Any] = field(default_factory=dict)  # per encoder: ONNX Runtime vs PyTorch
    quantization: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, its hash, export time
    package_versions: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None
    journal: JournalFold | None = None
    known_users: KnownUsers | None = None  # format 2; None: format 1 files (user_ids.json, user_history.npz)
    serving: dict[str, Any] | None = None  # optional hints, e.g. {"engine": "openvino-cpu:bf16"}
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cllm4rec(self) -> PromptSection | None:
        return self.section if isinstance(self.section, PromptSection) else None

    @property
    def tcf(self) -> TcfSection | None:
        return self.section if isinstance(self.section, TcfSection) else None

    @property
    def folded_through(self) -> int:
        return self.journal.folded_through if self.journal else 0

    @property
    def engine_hint(self) -> str:
        return str((self.serving or {}).get("engine", "auto"))

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> Manifest:
        """The typed manifest; VersionError names the first field that is missing or of the wrong type."""
        d = _object(d, where)
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise VersionError(f"{where}: missing key(s) {', '.join(missing)}")
        if d["format_version"] not in READABLE_FORMATS or isinstance(d["format_version"], bool):
            raise VersionError(f"{where}: format_version {d['format_version']!r} is not supported; "
                               f"accepted: {', '.join(map(str, READABLE_FORMATS))}")
        kind, user_tower = _field(d, "kind", str, where), _field(d, "user_tower", str, where)
        item_tower = _field(d, "item_tower", str, where)
        check_kind(kind, user_tower, item_tower, where)
        if d["metric"] != METRIC:
            raise VersionError(f"{where}: metric {d['metric']!r}; only {METRIC} is served")
        files = _field(d, "files", dict, where)
        if not files:
            raise VersionError(f"{where}: 'files' must be a non-empty object")
        section_cls = SECTIONS.get(kind)
        section = (section_cls.from_dict(d[kind], f"{where}: {kind}")
                   if section_cls is not None and d.get(kind) is not None else None)
        journal = d.get("journal")
        known = (*REQUIRED_KEYS, *((kind,) if section_cls is not None else ()), "parity", "quantization", "source", "package_versions", "opset", "journal",
                 "serving", "known_users")
        m = cls(
            name=_field(d, "name", str, where), kind=kind, user_tower=user_tower, item_tower=item_tower,
            dim=_field(d, "dim", int, where), num_items=_field(d, "num_items", int, where),
            num_users=_field(d, "num_users", int, where),
            capabilities=Capabilities.from_dict(d["capabilities"], f"{where}: capabilities"),
            files={n: FileEntry.from_dict(e, f"{where}: files.{n}") for n, e in files.items()},
            index=IndexSection.from_dict(d["index"], f"{where}: index"),
            encoders={n: EncoderSpec.from_dict(e, f"{where}: encoders.{n}")
                      for n, e in _field(d, "encoders", dict, where).items()},
            section=section, version=_field(d, "version", (int, type(None)), where),
            metric=METRIC, format_version=d["format_version"],
            parity=_field(d, "parity", dict, where, {}),
            quantization=_field(d, "quantization", (dict, type(None)), where, None),
            source=_field(d, "source", dict, where, {}),
            package_versions=_field(d, "package_versions", dict, where, {}),
            opset=_field(d, "opset", (int, type(None)), where, None),
            journal=JournalFold.from_dict(journal, f"{where}: journal") if journal is not None else None,
            known_users=(KnownUsers.from_dict(d.get("known_users") or {}, f"{where}: known_users")
                         if d["format_version"] >= 2 else None),
            serving=_field(d, "serving", (dict, type(None)), where, None),
            extra=_rest(d, known),
        )
        m.check_consistency(where)
        return m

    def check_consistency(self, where: str) -> None:
        """Paths the manifest names stay inside the version folder; a capability needs the tower that serves it."""
        for role, enc in self.encoders.items():
            _confined(enc.path, f"{where}: encoders.{role}.path")
            if enc.reference_file is not None:
                _confined(enc.reference_file, f"{where}: encoders.{role}.reference.file")
        if self.capabilities.upsert_items and self.item_tower not in ("text", "hybrid"):
            raise VersionError(f"{where}: upsert_items needs a text item tower (got {self.item_tower})")
        tcf = self.tcf
        for label, name in (("tcf.tokenizer", tcf and tcf.tokenizer), ("tcf.id_part", tcf and tcf.id_part)):
            if name:
                _confined(name, f"{where}: {label}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (key order as docs/model-repository.md shows it)."""
        out: dict[str, Any] = {
            "format_version": self.format_version, "name": self.name, "version": self.version, "kind": self.kind,
            "user_tower": self.user_tower, "item_tower": self.item_tower, "dim": self.dim, "metric": self.metric,
            "num_items": self.num_items, "num_users": self.num_users,
            "capabilities": {"user_id": self.capabilities.user_id, "history": self.capabilities.history,
                             "upsert_items": self.capabilities.upsert_items},
            "files": {n: {"sha256": e.sha256, "bytes": e.bytes} for n, e in self.files.items()},
            "index": self.index.to_dict(),
            "encoders": {n: e.to_dict() for n, e in self.encoders.items()},
        }
        if self.section is not None:
            out[self.kind] = self.section.to_dict()
        out.update(parity=self.parity, quantization=self.quantization, source=self.source,
                   package_versions=self.package_versions, opset=self.opset)
        if self.journal is not None:
            out["journal"] = {"file": self.journal.file, "folded_through": self.journal.folded_through,
                              "folded_upserts": self.journal.folded_upserts}
            if self.journal.hidden is not None:
                out["journal"]["hidden"] = self.journal.hidden
        if self.known_users is not None:
            out["known_users"] = self.known_users.to_dict()
        if self.serving is not None:
            out["serving"] = self.serving
        return {**out, **self.extra}


def _confined(name: str, where: str) -> None:
    """A path taken from the manifest must name a file inside the version folder."""
    p = Path(name)
    if not name or p.is_absolute() or ".." in p.parts:
        raise VersionError(f"{where}: {name!r} points outside the version folder")


def read_manifest(version_dir: Path) -> Manifest:
    """The typed manifest of a version folder (files not checked: see repository.versions.verify_version)."""
    path = Path(version_dir) / MANIFEST
    if not path.is_file():
        raise VersionError(f"{version_dir}: no {MANIFEST} (an incomplete or foreign folder)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise VersionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return Manifest.from_dict(data, f"{version_dir}/{MANIFEST}")
