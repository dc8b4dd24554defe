"""Assembles one server instance: gRPC (Recommender + health + reflection), /metrics, the reloader.
Several instances can live in one process (tests): nothing here is global except FAISS's thread count."""

from __future__ import annotations

import time
from concurrent import futures

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmrec import logs
from recsys.v1 import recommender_pb2 as pb
from recsys.v1 import recommender_pb2_grpc as pb_grpc
from server.config import ServeConfig
from server.metrics import Metrics
from server.registry import Registry
from server.reload import Reloader
from server.service import RecommenderService

log = logs.get("server.app")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"


class RecommenderServer:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        # One FAISS thread per query: concurrency comes from gRPC threads (performance-notes.md).
        faiss.omp_set_num_threads(1)
        self.metrics = Metrics()
        self.registry = Registry()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.reloader = Reloader(cfg, self.registry, self.metrics, self._on_health)
        self.service = RecommenderService(cfg, self.registry, self.reloader, self.metrics)
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="rpc"),
                                       options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_RecommenderServicer_to_server(self.service, self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc_server)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = 0
        self.metrics_port = -1
        self._stopped = False

    def _on_health(self, name: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._stopped:
            return
        self.health.set(name, status)
        self.metrics.serving.labels(model=name).set(int(serving))
        if name == "":
            self.health.set(SERVICE_NAME, status)

    def start(self) -> RecommenderServer:
        address = f"{self.cfg.host}:{self.cfg.port}"
        if self.cfg.tls_cert is not None and self.cfg.tls_key is not None:
            creds = grpc.ssl_server_credentials([(self.cfg.tls_key.read_bytes(), self.cfg.tls_cert.read_bytes())])
            self.port = self.grpc_server.add_secure_port(address, creds)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC to {address}")
        self.grpc_server.start()
        if self.cfg.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(self.cfg.metrics_port, self.cfg.host)
        log.info("server listening", grpc_port=self.port, metrics_port=self.metrics_port,
                 repository=str(self.cfg.repository), tls=self.cfg.tls_cert is not None)
        self.reloader.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """True once the first repository scan is done (whatever it found)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.registry.ready:
                return True
            time.sleep(0.02)
        return False

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first (load balancers stop sending), then drain in-flight RPCs."""
        if self._stopped:
            return
        self.health.enter_graceful_shutdown()
        self._stopped = True
        self.reloader.stop()
        self.grpc_server.stop(self.cfg.grace_seconds if grace is None else grace).wait()
        self.registry.close_all()
        self.metrics.stop_http()
        log.info("server stopped")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()
