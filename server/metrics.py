"""Prometheus metrics of one server instance, in its own CollectorRegistry (tests run several servers
in one process). Labels are model/version/method/code/stage only: never user or item ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.queue_depth = Gauge("recsys_queue_depth", "pending user-encoder requests", ["model"], registry=r)
        self.loaded = Gauge("recsys_loaded_version", "1 for each loaded model version", ["model", "version"],
                            registry=r)
        self.reloads = Counter("recsys_reloads", "version loads by result (success/failure)",
                               ["model", "result"], registry=r)
        self.upserted = Counter("recsys_upserted_items", "items added or replaced by UpsertItems", ["model"],
                                registry=r)
        self.deleted = Counter("recsys_deleted_items", "items hidden by DeleteItems", ["model"], registry=r)
        self.worker_restarts = Counter("recsys_worker_restarts", "encoder workers replaced by the watchdog, by "
                                       "reason (died/stalled)", ["model", "reason"], registry=r)
        self.model_serving = Gauge("recsys_model_serving", "1 while a model's grpc.health status is SERVING "
                                   "(model \"\" = the whole server)", ["model"], registry=r)
        self.journal_seq = Gauge("recsys_journal_seq", "last item-journal sequence number read", ["model"],
                                 registry=r)
        self.journal_corrupt = Counter("recsys_journal_corrupt_records", "item-journal records skipped as corrupt",
                                       ["model"], registry=r)
        self.journal_apply_failures = Counter("recsys_journal_apply_failures", "journal records that could not be "
                                              "applied to a loaded version (retried)", ["model"], registry=r)
        self._http = None

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Starts /metrics; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
