"""Server settings, grouped by what they govern: defaults < `--config FILE` < `RECSYS_*` environment
variables < flags.

The flags and the environment variables keep one flat name per setting (`--max-top-k`,
`RECSYS_MAX_TOP_K`): they are the deployment contract (Kubernetes manifests, compose files, recorded
benchmark commands), so grouping the code changed none of them. A config file may use either the
sections (`{"limits": {"max_top_k": 7}}`) or the flat names (`{"max_top_k": 7}`).
Environment variables let a container image be configured without a command line
(e.g. RECSYS_ADMIN_TOKEN keeps the token out of `ps`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from common.config import from_dict, load_file, split_config_flag
from repository.files import is_version_name
from server.gate import GateConfig


def _flag(name: str) -> Any:
    """The setting's flat flag and environment name, where it differs from its field's name."""
    return tyro.conf.arg(name=name)


def _at_least(obj: Any, minimum: float, *names: str, strict: bool = False) -> list[str]:
    """Problems of the fields below `minimum`, named by their flat setting name."""
    out = []
    for name in names:
        value = getattr(obj, name)
        if value < minimum or (strict and value == minimum):
            out.append(f"{flat_name(type(obj), name)} must be {'>' if strict else '>='} {minimum:g} (got {value})")
    return out


@dataclass
class NetworkConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    """gRPC port (0 = pick a free one)"""
    metrics_port: int = 9095
    """Prometheus /metrics HTTP port (0 = pick a free one, -1 = off)"""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_mb: float = 4.0
    """largest request message accepted, in MiB; beyond it gRPC answers RESOURCE_EXHAUSTED before parsing"""
    max_concurrent_rpcs: int = 1000
    """RPCs in progress at once on the whole server (0 = no limit); beyond it: RESOURCE_EXHAUSTED"""
    max_streams_per_connection: int = 0
    """concurrent HTTP/2 streams one client connection may open (0 = gRPC's default, no limit); a client that
    opens more before it has read this setting gets them refused (UNAVAILABLE, safe to retry), so prefer
    max_concurrent_rpcs as the server's limit"""
    grace_seconds: float = 10.0
    """on SIGTERM/SIGINT: how long in-flight requests may take to finish"""

    def problems(self) -> list[str]:
        out = _at_least(self, 0, "max_concurrent_rpcs", "max_streams_per_connection", "grace_seconds")
        out += _at_least(self, 0, "max_message_mb", strict=True)
        if (self.tls_cert is None) != (self.tls_key is None):
            out.append("TLS needs both tls_cert and tls_key")
        return out


@dataclass
class PoolsConfig:
    """The thread pools: reads and admin calls never wait behind each other."""

    threads: int = 4
    """read threads: every request's id lookups, exclusions and index search run here, off the event loop,
    so a large request never stalls the others; requests waiting for an encoder hold no thread"""
    read_queue_size: int = 512
    """requests waiting for a read thread beyond those running; beyond it: RESOURCE_EXHAUSTED (a bounded
    backlog answers at once instead of timing out after holding memory)"""
    batch_threads: int = 2
    """threads for RecommendBatch calls (parsing, rules, searches): their own pool, so a few large batches cannot
    take every read thread from single requests"""
    batch_queue_size: int = 64
    """RecommendBatch calls waiting for a batch thread; beyond it: RESOURCE_EXHAUSTED"""
    admin_threads: int = 2
    """threads for admin calls (item encoding, journal fsync, reloads): their own pool, so a slow disk under
    UpsertItems never delays reads"""
    admin_queue_size: int = 16
    """admin calls waiting for an admin thread; beyond it: RESOURCE_EXHAUSTED"""
    batch_yield_ms: float = 2.0
    """longest a RecommendBatch thread steps aside, before each request of the batch, while single requests are
    in flight (0 = never): single requests first, batches in the gaps"""
    gil_switch_ms: float = 5.0
    """how long a Python thread may hold the interpreter lock while another waits (sys.setswitchinterval,
    set by `llmrec serve` for its process): lower lets a cheap request's short steps cut in between a large
    batch's Python work sooner, at some cost to the batch's throughput (benchmarks/results/serving_resilience_*)"""

    def problems(self) -> list[str]:
        return (_at_least(self, 1, "threads", "batch_threads", "admin_threads")
                + _at_least(self, 0.05, "gil_switch_ms") + _at_least(self, 0, "batch_yield_ms")
                + _at_least(self, 0, "read_queue_size", "batch_queue_size", "admin_queue_size"))


@dataclass
class EncoderConfig:
    """How user and item encoders run: engine, threads, instances and the batching in front of them."""

    ort_threads: int = 1
    """threads per encoder call (ONNX Runtime intra-op, OpenVINO inference threads)"""
    encoder_instances: int = 0
    """user-encoder batches each model version runs at once (worker threads sharing its queue, each with
    its own OpenVINO stream); 0 = auto: on a CPU engine, the cores this process may use (physical cores,
    CPU affinity, container CPU quota) / ort_threads, so every core works under load; 1 on a GPU, or for
    an encoder answering one request in under instances_min_encode_ms"""
    instances_min_encode_ms: float = 5.0
    """auto instances: an encoder faster than this per request (measured at load) gets one worker: the
    server's own Python work per request (~1-2 ms) is then the bottleneck, and more workers only contend
    for it and split the batches (bench_grpc_ml100k-tcf-instances2: 0.89x the QPS of one worker at 8 clients)"""
    engine: str = "auto"
    """encoder engine: auto (the fastest that passes the quality gate on this machine), or ENGINE[:PRECISION]
    e.g. onnxruntime-cpu, openvino-cpu:bf16, onnxruntime-cuda:fp16 (a version's manifest may also name one)"""
    engine_int8: bool = False
    """also try int8-weight engines (OpenVINO + nncf) in auto mode; the quality gate still decides"""
    max_batch_size: int = 16
    """largest user-encoder batch formed from concurrent history requests"""
    max_wait_ms: float = 0.0
    """how long the first request of a batch waits for company; 0 = greedy batching: a batch is whatever
    queued while the encoder was busy, so a lone request never waits (see benchmarks/results/bench_grpc_*)"""
    queue_size: int = 256
    """pending encoder requests per model version; beyond it: RESOURCE_EXHAUSTED"""
    max_queue_wait_ms: float = 5000.0
    """refuse a history request (RESOURCE_EXHAUSTED) when its expected wait for the encoder exceeds this,
    or its own deadline, whichever is shorter (0 = only the deadline)"""

    def problems(self) -> list[str]:
        out = _at_least(self, 1, "ort_threads", "max_batch_size", "queue_size")
        out += _at_least(self, 0, "max_wait_ms", "instances_min_encode_ms", "max_queue_wait_ms")
        if self.encoder_instances < 0:
            out.append(f"encoder_instances must be >= 0, 0 = auto (got {self.encoder_instances})")
        return out

    def instances(self, cpus: int, device: str = "cpu", encode_ms: float | None = None) -> int:
        """The encoder instances to run: the flag, or in auto mode one per `ort_threads` of the usable
        cores for a CPU engine (a lone request runs as fast on one of several OpenVINO streams as on a
        latency-tuned model, so extra instances cost it nothing); 1 for a GPU engine, where one worker
        keeps the device busy and larger batches pay more than parallel ones, and 1 for an encoder whose
        measured time for one request (`encode_ms`) is under instances_min_encode_ms."""
        if self.encoder_instances:
            return self.encoder_instances
        if device != "cpu" or (encode_ms is not None and encode_ms < self.instances_min_encode_ms):
            return 1
        return max(1, cpus // self.ort_threads)


@dataclass
class WatchdogConfig:
    """Encoder workers that hang are replaced; one that never recovers fails /healthz."""

    stall_seconds: Annotated[float, _flag("encoder-stall-seconds")] = 30.0
    """an encoder batch running longer than this counts as stuck: the worker is replaced"""
    interval_seconds: Annotated[float, _flag("watchdog-seconds")] = 1.0
    """how often encoder workers are checked (0 = never)"""
    backoff_seconds: Annotated[float, _flag("restart-backoff-seconds")] = 1.0
    """wait before re-restarting an encoder whose last restart did not recover; doubles per failed restart up
    to restart_backoff_max_seconds (a permanently hung encoder abandons a thread per restart)"""
    backoff_max_seconds: Annotated[float, _flag("restart-backoff-max-seconds")] = 60.0
    """longest wait between encoder restarts"""
    max_failed_restarts: int = 5
    """after this many restarts in a row without a successful probe, restarts stop and /healthz answers 503,
    so the orchestrator replaces the pod (0 = never give up)"""

    def problems(self) -> list[str]:
        out = _at_least(self, 0, "interval_seconds", "backoff_seconds", "backoff_max_seconds", "max_failed_restarts")
        return out + _at_least(self, 0, "stall_seconds", strict=True)


@dataclass
class LimitsConfig:
    """What one request may ask for; beyond it: INVALID_ARGUMENT naming the limit."""

    max_top_k: int = 1000
    max_history_len: int = 1000
    """longest history accepted (the encoders keep only their most recent max_history/max_seq_len)"""
    max_id_len: int = 256
    max_batch_requests: int = 256
    """most requests in one RecommendBatch call"""
    max_batch_ids: int = 65536
    """most item ids (histories + exclusions, all requests together) in one RecommendBatch; beyond it:
    INVALID_ARGUMENT (split the batch)"""
    max_upsert_items: int = 1000
    """most items in one UpsertItems or DeleteItems call"""
    max_text_len: int = 10000
    """longest item text accepted by UpsertItems, in characters"""

    def problems(self) -> list[str]:
        return _at_least(self, 1, *(f.name for f in dataclasses.fields(self)))


@dataclass
class ReloadConfig:
    """Which versions are served, and how soon new versions and catalogue changes are picked up."""

    poll_seconds: float = 10.0
    """rescan the repository this often (0 = only on ReloadModels)"""
    journal_poll_seconds: float = 1.0
    """read item changes other replicas appended to the item journals this often (0 = never)"""
    journal: str = ""
    """where the item journals live: "" = a file beside each model's versions (flock on a shared volume);
    redis://HOST:PORT/DB[?prefix=llmrec&wait=N] = a Redis stream per model (run Redis with appendfsync always)"""
    consistency_wait_seconds: float = 2.0
    """longest a request carrying min_journal_seq waits for this replica to read that far (then UNAVAILABLE)"""
    retry_max_seconds: float = 300.0
    """a version refused because its item journal was unreachable is retried by later scans, waiting one poll
    interval, then twice as long each time, up to this"""
    pins: tuple[str, ...] = ()
    """extra versions to keep loaded, as name:version (e.g. ml100k-tcf:2)"""
    warmup_users: int = 3

    def problems(self) -> list[str]:
        out = _at_least(self, 0, "poll_seconds", "journal_poll_seconds", "consistency_wait_seconds")
        out += _at_least(self, 1, "retry_max_seconds")
        if self.journal and not self.journal.startswith(("redis://", "rediss://", "unix://")):
            out.append(f"journal {self.journal!r}: give \"\" (the file beside the versions) or redis://HOST:PORT/DB")
        for pin in self.pins:
            name, _, ver = pin.rpartition(":")
            if not name or not is_version_name(ver):
                out.append(f"pin {pin!r} is not name:version with a positive integer version")
        return out

    def pinned(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for pin in self.pins:
            name, _, ver = pin.rpartition(":")
            out.setdefault(name, set()).add(int(ver))
        return out


@dataclass
class RequestLogConfig:
    """Served Recommend requests as JSON lines (what is logged and what the hashed user ids protect:
    docs/serving.md#request-log-and-privacy)."""

    path: Annotated[Path | None, _flag("request-log")] = None
    """write served Recommend requests as JSON lines to this file (off when unset)"""
    sample: Annotated[float, _flag("request-log-sample")] = 1.0
    """share of requests logged, 0..1"""
    max_mb: Annotated[float, _flag("request-log-max-mb")] = 100.0
    """rotate the request log at this size"""
    backups: Annotated[int, _flag("request-log-backups")] = 5
    """rotated request-log files kept"""
    user_ids: Annotated[Literal["hash", "plain", "omit"], _flag("request-log-user-ids")] = "hash"
    """user ids in the request log: hash (salted SHA-256 prefix), plain, or omit"""
    salt: Annotated[str, _flag("request-log-salt")] = ""
    """salt of the hashed user ids (also RECSYS_REQUEST_LOG_SALT); keep it secret and stable. Empty: read
    request_log_salt_file, else a random salt generated once and kept beside the log (<request_log>.salt)"""
    salt_file: Annotated[Path | None, _flag("request-log-salt-file")] = None
    """file holding the salt (e.g. a mounted secret shared by replicas, so their hashes agree)"""
    queue: Annotated[int, _flag("request-log-queue")] = 10000
    """request-log entries waiting for the disk; beyond it entries are dropped and counted
    (recsys_request_log_dropped_total), never queued without bound"""

    def problems(self) -> list[str]:
        out = _at_least(self, 1, "queue")
        if not 0.0 <= self.sample <= 1.0:
            out.append(f"request_log_sample must be in [0, 1] (got {self.sample})")
        return out


@dataclass
class ServeConfig:
    repository: Path = Path("work/model-repository")
    """model repository root: <repository>/<name>/<version>/manifest.json"""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pools: PoolsConfig = field(default_factory=PoolsConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    index_backend: str = "auto"
    """item index backend: auto (faiss-gpu where a GPU and the index type allow, else faiss-cpu), faiss-cpu, faiss-gpu"""
    gate: GateConfig = field(default_factory=GateConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    admin_token: str = ""
    """token for UpsertItems/ReloadModels (metadata `authorization: Bearer <token>`); empty = admin off"""
    request_log: RequestLogConfig = field(default_factory=RequestLogConfig)
    log_json: bool = False
    """JSON-lines logs (also RECSYS_LOG_JSON=1)"""

    def __post_init__(self) -> None:
        problems = [p for section in SECTIONS for p in getattr(getattr(self, section), "problems", list)()]
        if problems:
            raise ValueError("invalid server config: " + "; ".join(problems))

    @classmethod
    def flat(cls, **values: Any) -> ServeConfig:
        """A config from flat setting names (`ServeConfig.flat(port=0, max_top_k=7)`), as flags and
        RECSYS_* variables name them."""
        return from_dict(cls, nest(values))


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(ServeConfig)
                             if isinstance(f.default_factory, type)}  # type: ignore[misc]


def flat_name(section: type, field_name: str) -> str:
    """The flag / environment name of a field of a section, with underscores (`stall_seconds` of the
    watchdog -> `encoder_stall_seconds`)."""
    hints = typing.get_type_hints(section, include_extras=True)
    for meta in getattr(hints[field_name], "__metadata__", ()):
        name = getattr(meta, "name", None)
        if name:
            return name.replace("-", "_")
    return field_name


@dataclass(frozen=True)
class Setting:
    section: str | None  # None: a field of ServeConfig itself
    field: str
    type: Any
    default: Any


def _settings() -> Iterator[tuple[str, Setting]]:
    """(flat name, where it lives) of every setting."""
    for cls, section in ((ServeConfig, None), *((c, name) for name, c in SECTIONS.items())):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if section is None and f.name in SECTIONS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            yield flat_name(cls, f.name), Setting(section, f.name, hints[f.name], default)


FLAT = dict(_settings())


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat setting names -> the sections' nesting; section objects pass through as they are."""
    out: dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, Mapping):
            out.setdefault(key, {}).update(value)
        elif key in FLAT:
            s = FLAT[key]
            if s.section is None:
                out[key] = value
            else:
                out.setdefault(s.section, {})[s.field] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown server setting(s) {', '.join(sorted(unknown))}; accepted: the flags of "
                         "`llmrec serve --help` with underscores, or their sections")
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for flat, s in FLAT.items():
        raw = env.get(f"RECSYS_{flat.upper()}")
        if raw is None or raw == "":
            continue
        default = s.default
        if isinstance(default, bool):
            values[flat] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int | float):
            try:
                values[flat] = type(default)(raw)
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ValueError(f"RECSYS_{flat.upper()}={raw!r} is not {kind}") from None
        elif isinstance(default, tuple):
            values[flat] = tuple(x.strip() for x in raw.split(",") if x.strip())
        elif Path in (s.type, *typing.get_args(s.type)):
            values[flat] = Path(raw)
        else:
            values[flat] = raw
    if "log_json" not in values and env.get("RECSYS_LOG_JSON"):
        values["log_json"] = env["RECSYS_LOG_JSON"] == "1"
    return values


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, Mapping) else value
    return out


def load(argv: list[str], env: Mapping[str, str] | None = None) -> ServeConfig:
    env = os.environ if env is None else env
    path, rest = split_config_flag(argv)
    values = nest(load_file(path)) if path else {}
    values = _merge(values, nest(_from_env(env)))
    if isinstance(values.get("reload", {}).get("pins"), list):
        values["reload"]["pins"] = tuple(values["reload"]["pins"])
    default = from_dict(ServeConfig, values) if values else None
    return tyro.cli(ServeConfig, args=rest, default=default, prog="llmrec serve", config=(tyro.conf.OmitArgPrefixes,),
                    description="Serve a model repository over gRPC (health, reflection, /metrics, hot reload).")


def setting(cfg: ServeConfig, flat: str) -> Any:
    """A setting's value by its flat name (`setting(cfg, "max_top_k")`), as flags and RECSYS_* name it."""
    s = FLAT[flat]
    return getattr(cfg if s.section is None else getattr(cfg, s.section), s.field)
