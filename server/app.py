"""Assembles one server instance: grpc.aio (Recommender + health + reflection) on its own event-loop
thread, the read and admin thread pools (server/offload.py), /metrics, the reloader, the item-journal
tail and the encoder watchdog.

The public API is synchronous (start / wait_ready / stop / wait) so the CLI and tests drive it like
any object; the event loop lives on a daemon thread. Several instances can live in one process
(tests): nothing here is global except FAISS's thread count.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from common import logs
from server.admin import AdminRpcs
from server.config import ServeConfig
from server.item_journal import ItemJournals
from server.metrics import Metrics
from server.offload import BoundedPool
from server.registry import Registry
from server.reload import Reloader
from server.request_log import RequestLog
from server.service import SERVICE_NAME, ReceivedCounter, RecommenderService
from server.watchdog import Watchdog

log = logs.get("server.app")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RecommenderServer:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        # One FAISS thread per query: concurrency comes from requests (performance-notes in docs/).
        faiss.omp_set_num_threads(1)
        self.metrics = Metrics()
        self.registry = Registry()
        self.metrics.queue_depths = self._queue_depths
        self.reads = BoundedPool("read", cfg.pools.threads, cfg.pools.read_queue_size, "--threads or --read-queue-size")
        self.batches = BoundedPool("batch", cfg.pools.batch_threads, cfg.pools.batch_queue_size,
                                   "--batch-threads or --batch-queue-size")
        self.admin_pool = BoundedPool("admin", cfg.pools.admin_threads, cfg.pools.admin_queue_size,
                                      "--admin-threads or --admin-queue-size")
        self.journals = ItemJournals(cfg.repository, self.registry.loaded, self.metrics, cfg.reload.journal_poll_seconds,
                                     cfg.reload.journal)
        self.reloader = Reloader(cfg, self.registry, self.journals, self.metrics, self.refresh_health)
        self.watchdog = Watchdog(self.registry.loaded, self.metrics, self.refresh_health, cfg.watchdog.interval_seconds,
                                 cfg.watchdog.stall_seconds, draining=self.registry.draining,
                                 backoff_seconds=cfg.watchdog.backoff_seconds,
                                 backoff_max_seconds=cfg.watchdog.backoff_max_seconds,
                                 max_failed_restarts=cfg.watchdog.max_failed_restarts)
        self.request_log = None if cfg.request_log.path is None else RequestLog(
            cfg.request_log.path, cfg.request_log.sample, cfg.request_log.max_mb, cfg.request_log.backups,
            cfg.request_log.user_ids, cfg.request_log.salt, salt_file=cfg.request_log.salt_file,
            max_queue=cfg.request_log.queue, on_drop=self.metrics.request_log_dropped.inc)
        self.admin = AdminRpcs(cfg, self.registry, self.reloader, self.journals, self.admin_pool)
        self.service = RecommenderService(cfg, self.registry, self.metrics, self.reads, self.batches, self.admin,
                                          self.request_log)
        self.health: HealthServicer | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self.port = 0
        self.metrics_port = -1
        self._stopping = False
        self._stopped = threading.Event()

    def _queue_depths(self) -> dict[str, int]:
        """Pending encoder requests per model, over its loaded and draining versions."""
        out: dict[str, int] = {}
        versions = [mv for vs in self.registry.loaded().values() for mv in vs.values()] + self.registry.draining()
        for mv in versions:
            if mv.batcher is not None:
                out[mv.name] = out.get(mv.name, 0) + mv.batcher.depth
        return out

    # ---- health ----
    def refresh_health(self, name: str) -> None:
        """Recomputes the grpc.health status of a model (SERVING while it has loaded versions and every
        encoder worker is up) or, for "", of the whole server (SERVING while any model is loaded)."""
        loaded = self.registry.loaded()
        if name:
            versions = loaded.get(name, {})
            serving = bool(versions) and all(v.healthy for v in versions.values())
            names = [name]
        else:
            serving = bool(loaded)
            names = ["", SERVICE_NAME]
        if name and not loaded.get(name) and not (Path(self.cfg.repository) / name).is_dir():
            with contextlib.suppress(KeyError):  # the model was removed: nothing to alert on any more
                self.metrics.model_serving.remove(name)
        else:
            self.metrics.model_serving.labels(model=name).set(1 if serving else 0)
        if self._stopping or self.health is None:
            return
        for n in names:  # waits, so that whoever changed the state can rely on health reflecting it
            fut = asyncio.run_coroutine_threadsafe(self.health.set(n, _SERVING if serving else _NOT_SERVING),
                                                   self._loop)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                fut.result(timeout=2.0)

    # ---- lifecycle ----
    def start(self) -> RecommenderServer:
        self._loop_thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result(timeout=30)
        except Exception:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        if self.cfg.network.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(self.cfg.network.metrics_port, self.cfg.network.host,
                                                        alive=lambda: self.watchdog.healthy)
        log.info("server listening", grpc_port=self.port, metrics_port=self.metrics_port,
                 repository=str(self.cfg.repository), tls=self.cfg.network.tls_cert is not None)
        self.reloader.start()
        self.journals.start()
        self.watchdog.start()
        return self

    async def _start_grpc(self) -> None:
        self.health = HealthServicer()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, _NOT_SERVING)
        cfg = self.cfg
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0),
                     ("grpc.max_receive_message_length", int(cfg.network.max_message_mb * 1024 * 1024)),
                     *([("grpc.max_concurrent_streams", cfg.network.max_streams_per_connection)]
                       if cfg.network.max_streams_per_connection else [])],
            interceptors=[ReceivedCounter(self.metrics)],
            maximum_concurrent_rpcs=cfg.network.max_concurrent_rpcs or None)
        server.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        address = f"{self.cfg.network.host}:{self.cfg.network.port}"
        try:
            if self.cfg.network.tls_cert is not None and self.cfg.network.tls_key is not None:
                creds = grpc.ssl_server_credentials([(self.cfg.network.tls_key.read_bytes(),
                                                      self.cfg.network.tls_cert.read_bytes())])
                self.port = server.add_secure_port(address, creds)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {address}: the port is in use or the address is not local; "
                          "pick another --port (0 = any free port)")
        await server.start()
        self.grpc_server = server

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """True once the first repository scan is done (whatever it found)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.registry.ready:
                return True
            time.sleep(0.02)
        return False

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first (load balancers stop sending), then drain in-flight RPCs for at most
        `grace` seconds (then they are cancelled). Never waits on a stuck encoder or a load in progress."""
        if self._stopping:
            self._stopped.wait()
            return
        grace = self.cfg.network.grace_seconds if grace is None else grace
        self._stopping = True
        self.metrics.model_serving.clear()
        try:
            if self.health is not None:
                asyncio.run_coroutine_threadsafe(self.health.enter_graceful_shutdown(), self._loop).result(2)
            self.reloader.stop(timeout=1.0)
            self.journals.stop(timeout=1.0)
            self.watchdog.stop(timeout=1.0)
            if self.grpc_server is not None:
                fut = asyncio.run_coroutine_threadsafe(self.grpc_server.stop(grace), self._loop)
                try:
                    fut.result(timeout=grace + 2.0)
                except concurrent.futures.TimeoutError:
                    log.error("gRPC server did not stop within the grace period; leaving it")
            self.registry.close_all()
            self.reads.shutdown()
            self.batches.shutdown()
            self.admin_pool.shutdown()
            self.metrics.stop_http()
            if self.request_log is not None:
                self.request_log.close()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=2.0)
            self._stopped.set()
            log.info("server stopped")

    def wait(self) -> None:
        self._stopped.wait()
