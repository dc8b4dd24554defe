"""Server settings: defaults < `--config FILE` < `RECSYS_*` environment variables < flags.

Environment variables let a container image be configured without a command line
(e.g. RECSYS_ADMIN_TOKEN keeps the token out of `ps`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

from common.config import from_dict, load_file
from repository.files import is_version_name


@dataclass
class ServeConfig:
    repository: Path = Path("work/model-repository")
    """model repository root: <repository>/<name>/<version>/manifest.json"""
    host: str = "0.0.0.0"
    port: int = 50051
    """gRPC port (0 = pick a free one)"""
    metrics_port: int = 9095
    """Prometheus /metrics HTTP port (0 = pick a free one, -1 = off)"""
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
    max_batch_ids: int = 65536
    """most item ids (histories + exclusions, all requests together) in one RecommendBatch; beyond it:
    INVALID_ARGUMENT (split the batch)"""
    max_message_mb: float = 4.0
    """largest request message accepted, in MiB; beyond it gRPC answers RESOURCE_EXHAUSTED before parsing"""
    max_concurrent_rpcs: int = 1000
    """RPCs in progress at once on the whole server (0 = no limit); beyond it: RESOURCE_EXHAUSTED"""
    max_streams_per_connection: int = 0
    """concurrent HTTP/2 streams one client connection may open (0 = gRPC's default, no limit); a client that
    opens more before it has read this setting gets them refused (UNAVAILABLE, safe to retry), so prefer
    max_concurrent_rpcs as the server's limit"""
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
    index_backend: str = "auto"
    """item index backend: auto (faiss-gpu where a GPU and the index type allow, else faiss-cpu), faiss-cpu, faiss-gpu"""
    gate_min_cosine: float = 0.99
    """an engine serves only if its outputs' mean cosine to the version's fp32 reference is at least this"""
    gate_min_overlap: float = 0.99
    """... and its top-20 recommendations overlap the reference's by at least this, on average"""
    gate_rows: int = 32
    """probe users each candidate engine is checked on at load (plus the export's parity inputs)"""
    gate_repeats: int = 2
    """timing passes over the smallest and largest reference inputs when choosing the fastest engine"""
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
    encoder_stall_seconds: float = 30.0
    """an encoder batch running longer than this counts as stuck: the worker is replaced"""
    watchdog_seconds: float = 1.0
    """how often encoder workers are checked (0 = never)"""
    restart_backoff_seconds: float = 1.0
    """wait before re-restarting an encoder whose last restart did not recover; doubles per failed restart up
    to restart_backoff_max_seconds (a permanently hung encoder abandons a thread per restart)"""
    restart_backoff_max_seconds: float = 60.0
    """longest wait between encoder restarts"""
    max_failed_restarts: int = 5
    """after this many restarts in a row without a successful probe, restarts stop and /healthz answers 503,
    so the orchestrator replaces the pod (0 = never give up)"""
    max_top_k: int = 1000
    max_history_len: int = 1000
    """longest history accepted (the encoders keep only their most recent max_history/max_seq_len)"""
    max_id_len: int = 256
    max_batch_requests: int = 256
    """most requests in one RecommendBatch call"""
    max_upsert_items: int = 1000
    """most items in one UpsertItems or DeleteItems call"""
    max_text_len: int = 10000
    """longest item text accepted by UpsertItems, in characters"""
    poll_seconds: float = 10.0
    """rescan the repository this often (0 = only on ReloadModels)"""
    journal_poll_seconds: float = 1.0
    """read item changes other replicas appended to the item journals this often (0 = never)"""
    admin_token: str = ""
    """token for UpsertItems/ReloadModels (metadata `authorization: Bearer <token>`); empty = admin off"""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    pins: tuple[str, ...] = ()
    """extra versions to keep loaded, as name:version (e.g. ml100k-tcf:2)"""
    grace_seconds: float = 10.0
    """on SIGTERM/SIGINT: how long in-flight requests may take to finish"""
    warmup_users: int = 3
    request_log: Path | None = None
    """write served Recommend requests as JSON lines to this file (off when unset; what is logged and what the
    hashed user ids protect: docs/serving.md#request-log-and-privacy)"""
    request_log_sample: float = 1.0
    """share of requests logged, 0..1"""
    request_log_max_mb: float = 100.0
    """rotate the request log at this size"""
    request_log_backups: int = 5
    """rotated request-log files kept"""
    request_log_user_ids: Literal["hash", "plain", "omit"] = "hash"
    """user ids in the request log: hash (salted SHA-256 prefix), plain, or omit"""
    request_log_salt: str = ""
    """salt of the hashed user ids (also RECSYS_REQUEST_LOG_SALT); keep it secret and stable. Empty: read
    request_log_salt_file, else a random salt generated once and kept beside the log (.<log name>.salt, mode 0600)"""
    request_log_salt_file: Path | None = None
    """file holding the salt (e.g. a mounted secret shared by replicas, so their hashes agree)"""
    request_log_queue: int = 10000
    """request-log entries waiting for the disk; beyond it entries are dropped and counted
    (recsys_request_log_dropped_total), never queued without bound"""
    log_json: bool = False
    """JSON-lines logs (also RECSYS_LOG_JSON=1)"""

    def __post_init__(self) -> None:
        problems = []
        for name in ("threads", "ort_threads", "max_batch_size", "queue_size", "max_top_k", "max_history_len",
                     "max_upsert_items", "max_text_len", "max_id_len", "max_batch_requests", "admin_threads", "batch_threads",
                     "max_batch_ids", "request_log_queue"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("max_wait_ms", "instances_min_encode_ms", "poll_seconds", "journal_poll_seconds",
                     "max_queue_wait_ms", "watchdog_seconds", "grace_seconds", "restart_backoff_seconds",
                     "restart_backoff_max_seconds", "read_queue_size", "admin_queue_size", "batch_queue_size", "max_concurrent_rpcs",
                     "max_failed_restarts", "max_streams_per_connection"):
            if float(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.encoder_instances < 0:
            problems.append(f"encoder_instances must be >= 0, 0 = auto (got {self.encoder_instances})")
        if not 0.0 <= self.request_log_sample <= 1.0:
            problems.append(f"request_log_sample must be in [0, 1] (got {self.request_log_sample})")
        if self.max_message_mb <= 0:
            problems.append(f"max_message_mb must be > 0 (got {self.max_message_mb})")
        if self.encoder_stall_seconds <= 0:
            problems.append(f"encoder_stall_seconds must be > 0 (got {self.encoder_stall_seconds})")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("TLS needs both tls_cert and tls_key")
        for pin in self.pins:
            name, _, ver = pin.rpartition(":")
            if not name or not is_version_name(ver):
                problems.append(f"pin {pin!r} is not name:version with a positive integer version")
        if problems:
            raise ValueError("invalid server config: " + "; ".join(problems))

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

    def pinned(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for pin in self.pins:
            name, _, ver = pin.rpartition(":")
            out.setdefault(name, set()).add(int(ver))
        return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServeConfig):
        raw = env.get(f"RECSYS_{f.name.upper()}")
        if raw is None or raw == "":
            continue
        default = getattr(ServeConfig, f.name, None)
        if isinstance(default, bool):
            values[f.name] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int | float):
            try:
                values[f.name] = type(default)(raw)
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ValueError(f"RECSYS_{f.name.upper()}={raw!r} is not {kind}") from None
        elif isinstance(default, tuple):
            values[f.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
        elif f.name in ("repository", "tls_cert", "tls_key", "request_log", "request_log_salt_file"):
            values[f.name] = Path(raw)
        else:
            values[f.name] = raw
    if "log_json" not in values and env.get("RECSYS_LOG_JSON"):
        values["log_json"] = env["RECSYS_LOG_JSON"] == "1"
    return values


def load(argv: list[str], env: Mapping[str, str] | None = None) -> ServeConfig:
    env = os.environ if env is None else env
    rest: list[str] = []
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            values.update(load_file(Path(argv[i + 1])))
            i += 2
            continue
        if argv[i].startswith("--config="):
            values.update(load_file(Path(argv[i].split("=", 1)[1])))
        else:
            rest.append(argv[i])
        i += 1
    values.update(_from_env(env))
    for key in ("pins",):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    default = from_dict(ServeConfig, values) if values else None
    return tyro.cli(ServeConfig, args=rest, default=default, prog="llmrec serve",
                    description="Serve a model repository over gRPC (health, reflection, /metrics, hot reload).")
