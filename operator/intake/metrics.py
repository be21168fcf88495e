"""Prometheus metrics of the intake and its health endpoints (aiohttp, on the event loop)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, GCCollector, PlatformCollector, ProcessCollector,
                               CollectorRegistry, Counter, Gauge, generate_latest)


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:  # process_* (CPU, memory, fds), python_info, python_gc_*
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        p = "lectern_intake_"
        self.taken = Counter(p + "jobs_taken", "BullMQ jobs the intake started processing (redeliveries included).", registry=r)
        self.invalid = Counter(p + "jobs_invalid", "Jobs failed without retry because their data was invalid.", registry=r)
        self.completed = Counter(p + "jobs_completed", "Jobs completed with {lectureId, videoUrl}.", registry=r)
        self.failed = Counter(p + "jobs_failed", "Jobs failed, by reason: invalid, transcode_failed, superseded, "
                              "deleted, error (the intake's own failure; BullMQ may retry it).", ["reason"], registry=r)
        self.released = Counter(p + "jobs_released", "In-flight jobs handed back to the queue on shutdown.", registry=r)
        self.active = Gauge(p + "jobs_active", "Jobs the intake is following right now.", registry=r)
        self.created = Counter(p + "transcodes_created", "VideoTranscodes created.", registry=r)
        self.adopted = Counter(p + "transcodes_adopted", "VideoTranscodes that already existed for a redelivered job.", registry=r)
        self.superseded = Counter(p + "transcodes_superseded", "Older running VideoTranscodes deleted for a newer upload.", registry=r)
        self.progress_updates = Counter(p + "progress_updates", "job.updateProgress calls.", registry=r)
        self.kube_errors = Counter(p + "kube_errors", "Failed Kubernetes API calls (retried or not).", registry=r)
        for reason in ("invalid", "transcode_failed", "superseded", "deleted", "error"):
            self.failed.labels(reason)


class HealthState:
    """Liveness: the event loop answers and the worker task has not died (a Redis or API
    server outage is not a reason to restart the pod: it reconnects by itself). Readiness:
    Redis answered a PING recently, the CR watch is synced and the worker is fetching jobs."""

    def __init__(self, ping_redis: Callable[[], "asyncio.Future"], watch_synced: Callable[[], bool],
                 worker_running: Callable[[], bool], alive: Callable[[], bool] | None = None,
                 interval: float = 5.0):
        self.ping_redis = ping_redis
        self.watch_synced = watch_synced
        self.worker_running = worker_running
        self.alive = alive or worker_running
        self.interval = interval
        self.redis_ok_at = 0.0
        self.redis_error: str | None = None
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.ping_redis(), timeout=max(1.0, self.interval))
                self.redis_ok_at = time.monotonic()
                self.redis_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.redis_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="intake-redis-ping")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def ready(self) -> tuple[bool, dict]:
        redis_ok = time.monotonic() - self.redis_ok_at < 3 * self.interval + 2
        detail = {"redis": "ok" if redis_ok else (self.redis_error or "no answer yet"),
                  "kubernetes": "ok" if self.watch_synced() else "watch not synced",
                  "worker": "running" if self.worker_running() else "stopped"}
        return redis_ok and self.watch_synced() and self.worker_running(), detail


async def serve(health: HealthState, metrics: IntakeMetrics, health_port: int, metrics_port: int,
                host: str = "0.0.0.0") -> list[web.AppRunner]:
    async def healthz(_: web.Request) -> web.Response:
        ok = health.alive()
        return web.json_response({"status": "ok" if ok else "stopped"}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, detail = health.ready()
        return web.json_response({"status": "ok" if ok else "not ready", **detail}, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    health_app = web.Application()
    health_app.router.add_get("/healthz", healthz)
    health_app.router.add_get("/livez", healthz)
    health_app.router.add_get("/readyz", readyz)
    runners = []
    if metrics_port == health_port:
        health_app.router.add_get("/metrics", metrics_view)
        apps = [(health_app, health_port)]
    else:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", metrics_view)
        apps = [(health_app, health_port), (metrics_app, metrics_port)]
    for app, port in apps:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    return runners
