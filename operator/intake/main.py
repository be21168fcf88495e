"""`lectern-intake` / `python -m lectern_operator.intake`: the BullMQ intake worker process.

Reads `LECTERN_*` settings, connects to Redis (by URL string, as the bullmq port expects) and
to the Kubernetes API, serves `/healthz`, `/readyz` on `LECTERN_HEALTH_PORT` and `/metrics` on
`LECTERN_METRICS_PORT`, and on SIGTERM/SIGINT hands in-flight jobs back to the queue and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import redis.asyncio as aioredis

from lectern_operator.kube import Kube
from lectern_operator.logs import setup_logging
from lectern_operator.settings import Settings

from . import resources as res
from .kube import TranscodeApi, TranscodeCache
from .metrics import HealthState, IntakeMetrics, serve
from .worker import Intake, IntakeWorker

log = logging.getLogger("lectern.intake")


def worker_options(settings: Settings) -> dict:
    return {
        # A URL string: the port then builds its own clients with decode_responses=True (a
        # hand-made client without it silently yields empty job data).
        "connection": settings.redis_url.get_secret_value(),
        "prefix": settings.queue_prefix,
        "concurrency": settings.intake_concurrency,
        "lockDuration": settings.intake_lock_duration_ms,
        "stalledInterval": settings.intake_stalled_interval_ms,
        "maxStalledCount": settings.intake_max_stalled_count,
        # After a Redis connection error the fetch loop waits this long before asking again.
        "runRetryDelay": 2000,
        # The idle wait for the next job (BZPOPMIN on the queue's marker) in seconds. With the
        # default 5 s, the port's blocking connection reconnects after an empty wait and leaves
        # a gap of seconds with no BZPOPMIN pending (seen with `redis-cli monitor`, plain bullmq
        # 3.4.4, no Lectern code involved): a job added after 10 s of idling was picked up 2-7 s
        # late (bench/pipeline.py, one run in three). With 1 s it is picked up at once; an idle
        # worker pays one cheap blocking call a second for it.
        "drainDelay": 1,
        "name": f"lectern-intake:{socket.gethostname()}",
        "autorun": False,
    }


async def run(settings: Settings, stop: asyncio.Event | None = None, install_signals: bool = True) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    namespace = settings.intake_namespace or settings.namespaces[0]
    api = TranscodeApi(Kube(user_agent="lectern-intake", pool_size=20), namespace)
    # The shared watch has a client (a session) of its own: a job's call that logs in again
    # after a 401 replaces the session, and a watch streaming on the replaced one hung for good
    # (aiohttp never woke its read), leaving the cache "synced" but deaf.
    watch_api = TranscodeApi(Kube(user_agent="lectern-intake", pool_size=2), namespace)
    cache = TranscodeCache(watch_api, f"{res.LABEL_MANAGED_BY}={res.MANAGED_BY}",
                           watch_timeout=int(getattr(settings, "watch_timeout_seconds", 300)))
    cache.start()
    metrics = IntakeMetrics()
    intake = Intake(settings, api, cache, metrics)

    worker = IntakeWorker(settings.queue_name, intake.process, worker_options(settings))
    intake.worker = worker
    worker.on("completed", intake.on_completed)
    worker.on("failed", intake.on_failed)
    worker.on("error", lambda err, *a: log.warning("bullmq: %s: %s", type(err).__name__, err))
    worker.on("stalled", lambda job_id, *a: log.warning("job %s had stalled and was put back in the queue", job_id))

    pinger = aioredis.from_url(settings.redis_url.get_secret_value(), socket_timeout=3, socket_connect_timeout=3)
    run_task: asyncio.Task | None = None
    health = HealthState(ping_redis=pinger.ping, watch_synced=cache.synced.is_set,
                         worker_running=lambda: worker.running and not worker.closing,
                         alive=lambda: run_task is not None and not run_task.done() and not intake.stopping.is_set())
    health.start()
    runners = await serve(health, metrics, settings.health_port, settings.metrics_port)
    log.info("intake on queue %s:%s, namespace %s, concurrency %d, health :%d, metrics :%d",
             settings.queue_prefix, settings.queue_name, namespace, settings.intake_concurrency,
             settings.health_port, settings.metrics_port)

    run_task = asyncio.create_task(worker.run(), name="bullmq-worker")
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if run_task.done():
        log.error("the BullMQ worker stopped unexpectedly: %r", run_task.exception() if not run_task.cancelled() else "cancelled")
        code = 1
    stop_task.cancel()

    log.info("shutting down: handing %d in-flight job(s) back to the queue", len(intake.active))
    intake.begin_shutdown()
    close = asyncio.ensure_future(worker.close())
    try:
        await asyncio.wait_for(asyncio.shield(close), settings.intake_shutdown_grace_seconds)
    except asyncio.TimeoutError:
        log.warning("in-flight jobs did not return within %ss; forcing the worker closed",
                    settings.intake_shutdown_grace_seconds)
        await worker.close(force=True)
    try:
        await asyncio.wait_for(run_task, 5)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001
        run_task.cancel()
    for runner in runners:
        await runner.cleanup()
    await health.stop()
    await cache.stop()
    await watch_api.close()
    await api.close()
    await pinger.aclose()
    log.info("intake stopped")
    return code


def main() -> None:
    settings = Settings()
    setup_logging(settings)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
