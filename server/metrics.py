"""Prometheus metrics of one server instance, in its own CollectorRegistry (tests run several servers
in one process). Labels are model/version/method/code/stage only: never user or item ids.

The metrics port also answers /healthz and /readyz, for tools that speak HTTP but not grpc.health.v1
(compose health checks, load balancers, uptime monitors). /healthz is the liveness check: it fails once
the process cannot recover by itself (the watchdog gave up on a hung encoder), so that it is replaced."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from repository.journal import Cursor

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Why a replica rebuilt from its journal, as a bounded label. `compacted`: the journal has a new identity,
# as compaction gives it (so does replacing it with another journal), the planned case. `truncated`: it now
# ends before what was read (cut, removed, restored from an older backup, a Redis that lost its data).
# `rewritten`: it goes as far, but not with the records that were read (restored, then written to; edited).
# The last two mean acknowledged changes may be lost.
REBUILD_REASONS = ("compacted", "truncated", "rewritten")


def rebuild_reason(read: Cursor, now: Cursor) -> str:
    """The label for a rebuild, from how far the replica had read and what the journal holds now (the log
    line keeps the backend's own explanation: a compacted file also shrank, so that text cannot decide)."""
    if now.identity and now.identity != read.identity:
        return "compacted"
    return "truncated" if now.last_seq < read.last_seq else "rewritten"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_requests", "RPCs by method, model and status code",
                                ["method", "model", "code"], registry=r)
        self.received = Counter("recsys_rpcs_received", "RPCs handed over by the transport, before their message "
                                "is read (any service); minus recsys_requests = dropped before the servicer ran",
                                ["method"], registry=r)
        self.latency = Histogram("recsys_request_latency_seconds", "RPC latency", ["method", "model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("recsys_stage_seconds", "time per serving stage (queue, encode, search)",
                               ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("recsys_batch_size", "user-encoder batch sizes", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        # Read at scrape time, summed over every version of a model (loaded or still draining): a gauge set by
        # each batcher was overwritten by whichever version's batcher moved last.
        self.queue_depths: Callable[[], dict[str, int]] = dict
        r.register(_QueueDepth(lambda: self.queue_depths()))
        self.request_log_dropped = Counter("recsys_request_log_dropped", "request-log entries dropped because "
                                           "the disk fell behind (bounded queue full)", registry=r)
        self.watchdog_gave_up = Gauge("recsys_watchdog_gave_up", "1 once the watchdog stopped restarting a model's "
                                      "hung encoder (/healthz then fails)", ["model"], registry=r)
        self.loaded = Gauge("recsys_loaded_version", "1 for each loaded model version", ["model", "version"],
                            registry=r)
        self.reloads = Counter("recsys_reloads", "version loads by result (success/failure)",
                               ["model", "result"], registry=r)
        self.upserted = Counter("recsys_upserted_items", "items added or replaced by UpsertItems", ["model"],
                                registry=r)
        self.deleted = Counter("recsys_deleted_items", "items hidden by DeleteItems", ["model"], registry=r)
        self.worker_restarts = Counter("recsys_worker_restarts", "encoder workers replaced by the watchdog, by "
                                       "reason (died/stalled)", ["model", "reason"], registry=r)
        self.engine_info = Gauge("recsys_engine_info", "1 for what serves each component of a loaded version: "
                                 "user/item encoder engine and precision, index backend and type",
                                 ["model", "version", "component", "engine", "precision"], registry=r)
        self.model_serving = Gauge("recsys_model_serving", "1 while a model's grpc.health status is SERVING "
                                   "(model \"\" = the whole server)", ["model"], registry=r)
        self.journal_seq = Gauge("recsys_journal_seq", "last item-journal sequence number read", ["model"],
                                 registry=r)
        self.journal_corrupt = Counter("recsys_journal_corrupt_records", "item-journal records skipped as corrupt",
                                       ["model"], registry=r)
        self.journal_apply_failures = Counter("recsys_journal_apply_failures", "journal records that could not be "
                                              "applied to a loaded version (retried)", ["model"], registry=r)
        self.journal_rebuilds = Counter("recsys_journal_rebuilds", "times the item journal stopped continuing what "
                                        "this replica had read, so every loaded version of the model was rebuilt "
                                        "from its export and the whole journal; reason: " + ", ".join(REBUILD_REASONS),
                                        ["model", "reason"], registry=r)
        self._http: WSGIServer | None = None

    def init_model(self, name: str) -> None:
        """Creates a model's counters at zero, so that rate() and increase() see the first event (and
        dashboards show 0 rather than no data)."""
        for reason in ("died", "stalled"):
            self.worker_restarts.labels(model=name, reason=reason)
        for counter in (self.upserted, self.deleted, self.journal_corrupt, self.journal_apply_failures):
            counter.labels(model=name)
        for reason in REBUILD_REASONS:
            self.journal_rebuilds.labels(model=name, reason=reason)

    def is_serving(self) -> bool:
        """The overall health as last set on the `recsys_model_serving{model=""}` gauge."""
        return self.registry.get_sample_value("recsys_model_serving", {"model": ""}) == 1

    def serve_http(self, port: int, host: str = "0.0.0.0", ready: Callable[[], bool] | None = None,
                   alive: Callable[[], bool] | None = None) -> int:
        """Starts /metrics, /healthz and /readyz on a daemon thread; returns the bound port (0 picks a free
        one). `ready` decides /readyz (default: the overall serving gauge), `alive` /healthz (default: yes)."""
        app = _dispatcher(make_wsgi_app(self.registry), ready or self.is_serving, alive or (lambda: True))

        class Server(ThreadingWSGIServer):
            address_family = _family(host, port)

        self._http = make_server(host, port, app, Server, handler_class=_QuietHandler)
        threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True).start()
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QueueDepth:
    """recsys_queue_depth{model}, from the batchers themselves at scrape time."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("recsys_queue_depth", "pending user-encoder requests (all versions of a model)",
                                   labels=["model"])
        for model, depth in sorted(self._depths().items()):
            family.add_metric([model], depth)
        yield family


def _dispatcher(metrics_app: Wsgi, ready: Callable[[], bool], alive: Callable[[], bool]) -> Wsgi:
    """/metrics -> prometheus_client's app; /healthz: 200 while `alive()`, else 503; /readyz: 200 only while
    `ready()`, else 503; anything else 404 (prometheus_client alone answers every path with metrics)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            status, body = ("200 OK", b"ok\n") if alive() else ("503 Service Unavailable",
                                                               b"unhealthy: an encoder stays hung after restarts\n")
        elif path == "/readyz":
            status, body = ("200 OK", b"ready\n") if ready() else ("503 Service Unavailable", b"not ready\n")
        else:
            status, body = "404 Not Found", b"not found: try /metrics, /healthz or /readyz\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body]

    return app


def _family(host: str, port: int) -> socket.AddressFamily:
    """IPv4 or IPv6, whichever `host` resolves to (WSGIServer alone always binds IPv4)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
