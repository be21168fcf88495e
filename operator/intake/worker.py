"""The intake: a BullMQ worker on `video-queue` that turns each job into a `VideoTranscode`,
relays the CR's progress to the job and finishes the job with the transcode's result.

One processor call per job, all on one event loop; a processor only ever awaits (the API
server, the shared CR cache, Redis), so BullMQ's lock renewal keeps running however long the
transcode takes and hundreds of jobs can wait at once.

    job taken ─ invalid data ──────────────────────────────▶ failed, no retry (UnrecoverableError)
       │
       ├─ create the CR, or adopt the one this job already made (redelivery)
       ├─ supersede: an older running transcode of the lecture with another upload is deleted;
       │  if a newer upload exists, this job is the one superseded (failed, no retry)
       ├─ follow status: progress ─▶ job.updateProgress(int), on change
       ├─ Succeeded ─▶ completed {lectureId, videoUrl} (+ hlsUrl, posterUrl with an HLS ladder)
       ├─ Failed    ─▶ failed with status.message, no retry (the Job already retried the pod)
       ├─ CR deleted ─▶ failed, no retry ("superseded by a newer upload" or "deleted")
       └─ the intake's own trouble (API unreachable past the retry budget) ─▶ plain error:
          BullMQ retries it if the job has attempts left
    SIGTERM: every in-flight job is handed back to the queue (moved to delayed with delay 0,
    no attempt used) and picked up again by the next intake, which adopts its CR.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from bullmq import Job, Worker
from bullmq.custom_errors import DelayedError, UnrecoverableError

from lectern_operator.api.v1alpha1 import FINAL_PHASES
from lectern_operator.settings import Settings
from lectern_transcoder.urlpolicy import INSECURE_LOOPBACK_ENV, parse_insecure_loopback

from . import resources as res
from .kube import Conflict, KubeError, TranscodeApi, TranscodeCache
from .metrics import IntakeMetrics
from .payload import InvalidPayload, JobPayload, parse_payload

log = logging.getLogger("lectern.intake")

T = TypeVar("T")


class IntakeWorker(Worker):
    """bullmq's Worker with job fetches taken one at a time.

    The port's run loop starts `concurrency - active` fetches at once whenever a job arrives;
    unserialised, each is a `moveToActive` Lua call on the one shared Redis connection: with
    a concurrency of 500 that is a burst of ~500 calls (about a second, during which progress
    updates and lock renewals queue behind them) for every job that arrives at an idle queue.
    Serialised, the surplus fetches wait on a lock instead, and the first one to find the
    queue empty does the blocking wait for the next job, as a single fetch would."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fetch_lock = asyncio.Lock()

    async def getNextJob(self, token: str):  # noqa: N802 - bullmq's name
        async with self._fetch_lock:
            if self.closing or self.paused:
                return None
            return await super().getNextJob(token)


class InvalidJobData(UnrecoverableError):
    """The job's data failed validation; nothing was created."""


class TranscodeFailed(UnrecoverableError):
    """The CR reached phase Failed: the transcode itself failed, retrying the job cannot help."""


class Superseded(UnrecoverableError):
    """A newer upload of the same lecture replaced this one."""


class TranscodeDeleted(UnrecoverableError):
    """Someone deleted the CR before it finished (cancelled)."""


class _Release(Exception):
    """Internal: shut down, hand the job back to the queue."""


class _Handover(Exception):
    """Internal: the same job was delivered to this process again (its lock had expired);
    the older delivery steps aside for the newer one."""


@dataclass
class _Active:
    job: Job
    token: str
    name: str | None = None
    handover: asyncio.Event = field(default_factory=asyncio.Event)


def _int_progress(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return max(0, min(100, int(value)))
    return None


def _rv_int(obj: dict | None) -> int | None:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def _newer(a: dict | None, b: dict | None) -> dict | None:
    """The later of two states of the same object (by resourceVersion when both are numbers)."""
    if a is None or b is None:
        return a or b
    ra, rb = _rv_int(a), _rv_int(b)
    if ra is not None and rb is not None:
        return a if ra >= rb else b
    return a


class Intake:
    def __init__(self, settings: Settings, api: TranscodeApi, cache: TranscodeCache,
                 metrics: IntakeMetrics | None = None):
        self.settings = settings
        self.api = api
        self.cache = cache
        self.metrics = metrics or IntakeMetrics()
        self.queue = res.queue_key(settings.queue_prefix, settings.queue_name)
        self.allowed_hosts = list(settings.allowed_hosts)
        # Test-only, never set by the chart: the transcoder's escape for the local Cloudinary
        # emulator (plain http to named loopback ports), honoured here too so the same URLs pass.
        self.insecure_loopback = parse_insecure_loopback(os.environ.get(INSECURE_LOOPBACK_ENV))
        self.worker = None  # set by the runner: the bullmq Worker, for lock re-tracking
        self.stopping = asyncio.Event()
        self.active: dict[str, _Active] = {}
        # A waiting job wakes up at least this often: to re-read its CR directly, to notice a
        # shutdown, and to make sure its lock is still being renewed.
        lock_quarter = settings.intake_lock_duration_ms / 4000
        self.tick = max(0.2, min(settings.intake_resync_seconds, lock_quarter))

    # --- the processor --------------------------------------------------------------------------
    async def process(self, job: Job, token: str) -> dict:
        if self.stopping.is_set():
            await self._release(job, token)
        self.metrics.taken.inc()
        entry = _Active(job, token)
        previous = self.active.get(job.id)
        self.active[job.id] = entry
        self.metrics.active.set(len(self.active))
        try:
            # Compared by identity, not token: the port hands every fetch of a worker the
            # same token (a closure binds the loop variable late).
            if previous is not None:
                log.warning("job %s delivered again while still followed here (its lock expired); "
                            "taking over", job.id)
                previous.handover.set()
                self._wake(previous.name)
            return await self._process(entry)
        except _Release:
            await self._release(job, token)
        except _Handover:
            raise DelayedError()  # the newer delivery owns the job now; touch nothing in Redis
        finally:
            if self.active.get(job.id) is entry:
                del self.active[job.id]
            self.metrics.active.set(len(self.active))

    # Outcomes are counted from the worker's events, i.e. once BullMQ has recorded them (a
    # completion whose moveToCompleted failed because the lock was lost is not one).
    @staticmethod
    def failure_reason(err: BaseException) -> str:
        if isinstance(err, InvalidJobData):
            return "invalid"
        if isinstance(err, Superseded):
            return "superseded"
        if isinstance(err, TranscodeDeleted):
            return "deleted"
        if isinstance(err, TranscodeFailed):
            return "transcode_failed"
        return "error"

    def on_completed(self, job: Job, result: Any, *_: Any) -> None:
        self.metrics.completed.inc()
        log.info("job %s completed: %s", job.id, result)

    def on_failed(self, job: Job, err: BaseException, *_: Any) -> None:
        reason = self.failure_reason(err)
        self.metrics.failed.labels(reason).inc()
        log.info("job %s failed (%s): %s", getattr(job, "id", "?"), reason, err)

    async def _process(self, entry: _Active) -> dict:
        job = entry.job
        try:
            payload = parse_payload(job.data, self.allowed_hosts, self.insecure_loopback)
        except InvalidPayload as exc:
            self.metrics.invalid.inc()
            raise InvalidJobData(str(exc)) from None
        name = res.cr_name(payload.lecture_id, job.id, job.timestamp, self.queue)
        entry.name = name
        self.cache.track(name)
        try:
            obj = await self._ensure(entry, payload, name)
            await self._supersede(entry, payload, name, obj)
            return await self._follow(entry, payload, name, obj)
        finally:
            self.cache.untrack(name)

    # --- create or adopt --------------------------------------------------------------------------
    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient API errors with backoff within `intake_kube_retry_seconds`."""
        deadline = time.monotonic() + self.settings.intake_kube_retry_seconds
        delay = 0.5
        while True:
            try:
                return await call()
            except KubeError as exc:
                self.metrics.kube_errors.inc()
                if self.stopping.is_set():
                    raise _Release() from exc
                if isinstance(exc, Conflict):
                    raise  # the caller's business (adopt)
                if not exc.transient:
                    raise UnrecoverableError(str(exc)) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise  # the intake's own failure: BullMQ retries it if attempts are left
                log.warning("%s (retrying in %.1fs)", exc, min(delay, remaining))
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 10.0)

    async def _ensure(self, entry: _Active, payload: JobPayload, name: str) -> dict:
        job = entry.job
        existing = await self._retrying("read VideoTranscode", lambda: self.api.get(name))
        if existing is None:
            # Don't start a transcode a newer upload has already replaced.
            await self._supersede(entry, payload, name, None)
            body = res.cr_body(payload, name=name, namespace=self.api.namespace, job_id=job.id,
                               job_timestamp=job.timestamp, queue=self.queue)
            try:
                obj = await self._retrying("create VideoTranscode", lambda: self.api.create(body))
                self.metrics.created.inc()
                log.info("job %s: created VideoTranscode %s for lecture %s", job.id, name, payload.lecture_id)
                self.cache.put(obj)
                return obj
            except Conflict:
                log.info("job %s: VideoTranscode %s was created meanwhile (another replica?); adopting it",
                         job.id, name)
                existing = await self._retrying("read VideoTranscode", lambda: self.api.get(name))
                if existing is None:
                    raise KubeError(0, f"VideoTranscode {name} conflicted on create but is gone")  # status 0: transient
        if not res.belongs_to(existing, payload, job.id, self.queue):
            raise UnrecoverableError(
                f"VideoTranscode {name} already exists for another job or upload; refusing to adopt it")
        meta = existing.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            self._raise_deleted(name, existing)
        self.metrics.adopted.inc()
        log.info("job %s: adopted VideoTranscode %s (phase %s)", job.id, name,
                 (existing.get("status") or {}).get("phase"))
        return existing

    # --- supersede ----------------------------------------------------------------------------------
    async def _supersede(self, entry: _Active, payload: JobPayload, name: str, own: dict | None) -> None:
        """Newer upload wins. Compares this job with every other CR the intake made for the same
        lecture and a different `rawVideoUrl`: if one is newer (by the time the API enqueued the
        upload), this job is superseded; older ones still running are deleted. Both sides run
        this after creating their CR, so two intakes racing on two uploads still end with only
        the newer one running."""
        job = entry.job
        selector = f"{res.LABEL_LECTURE}={res.label_value(payload.lecture_id)}"
        items, _ = await self._retrying("list VideoTranscodes", lambda: self.api.list(selector))
        mine = (*res.job_order(job.timestamp, job.id), name)
        newer: dict | None = None
        older: list[dict] = []
        for item in items:
            meta = item.get("metadata") or {}
            spec = item.get("spec") or {}
            other = meta.get("name")
            if other == name or res.ANN_JOB_ID not in (meta.get("annotations") or {}):
                continue
            if spec.get("lectureId") != payload.lecture_id or spec.get("rawVideoUrl") == payload.raw_video_url:
                continue  # another lecture (label digest clash), or the same upload enqueued twice
            if meta.get("deletionTimestamp"):
                continue
            if (*res.upload_order(item), other) > mine:
                if newer is None or (*res.upload_order(item), other) > (*res.upload_order(newer), newer["metadata"]["name"]):
                    newer = item
            elif ((item.get("status") or {}).get("phase")) not in FINAL_PHASES:
                older.append(item)
        if newer is not None:
            newer_name = newer["metadata"]["name"]
            if own is not None and (own.get("status") or {}).get("phase") not in FINAL_PHASES:
                await self._delete_superseded(own, newer_name)  # a finished one stays as history
            raise Superseded(f"superseded by a newer upload of lecture {payload.lecture_id} "
                             f"(VideoTranscode {newer_name})")
        for item in older:
            if await self._delete_superseded(item, name):
                self.metrics.superseded.inc()
                log.info("job %s: superseded older VideoTranscode %s of lecture %s", job.id,
                         item["metadata"]["name"], payload.lecture_id)

    async def _delete_superseded(self, obj: dict, by: str) -> bool:
        meta = obj.get("metadata") or {}
        target = meta["name"]
        marked = await self._retrying("mark superseded VideoTranscode",
                                      lambda: self.api.annotate(target, {res.ANN_SUPERSEDED_BY: by}))
        if marked is None:
            return False
        return await self._retrying("delete superseded VideoTranscode",
                                    lambda: self.api.delete(target, meta.get("uid")))

    # --- follow the CR ------------------------------------------------------------------------------
    def _wake(self, name: str | None) -> None:
        if name:
            self.cache._notify(name)

    def _raise_deleted(self, name: str, last: dict | None) -> None:
        ann = ((last or {}).get("metadata") or {}).get("annotations") or {}
        by = ann.get(res.ANN_SUPERSEDED_BY)
        if by:
            lecture = ann.get(res.ANN_LECTURE_ID) or ((last or {}).get("spec") or {}).get("lectureId")
            raise Superseded(f"superseded by a newer upload of lecture {lecture} (VideoTranscode {by})")
        raise TranscodeDeleted(f"VideoTranscode {name} was deleted before the transcode finished")

    def _ensure_lock_tracked(self, entry: _Active) -> None:
        lm = getattr(self.worker, "lockManager", None)
        if lm is None or lm.closed:
            return
        tracked = lm.tracked_jobs.get(entry.job.id)
        if tracked is None or tracked.get("token") != entry.token:
            lm.track_job(entry.job.id, entry.token, int(time.time() * 1000))

    async def _relay_progress(self, job: Job, progress: int) -> bool:
        try:
            await job.updateProgress(progress)
            self.metrics.progress_updates.inc()
            log.debug("job %s: progress %d", job.id, progress)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the next change retries
            log.warning("job %s: could not update progress to %s: %s", job.id, progress, exc)
            return False

    async def _follow(self, entry: _Active, payload: JobPayload, name: str, obj: dict) -> dict:
        job = entry.job
        uid = (obj.get("metadata") or {}).get("uid")
        last_progress = _int_progress(job.progress)
        last_direct = time.monotonic()
        warned_no_url = False
        while True:
            if entry.handover.is_set():
                raise _Handover()
            if self.stopping.is_set():
                raise _Release()
            self._ensure_lock_tracked(entry)

            cached = self.cache.get(name)
            if cached is not None and (cached.get("metadata") or {}).get("uid") in (uid, None):
                obj = _newer(cached, obj)
            elif cached is None:
                tomb = self.cache.deleted(name)
                if tomb is not None and (tomb.get("metadata") or {}).get("uid") == uid:
                    self._raise_deleted(name, _newer(tomb, obj))
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                self._raise_deleted(name, obj)

            status = obj.get("status") or {}
            phase = status.get("phase")
            progress = _int_progress(status.get("progress"))
            if phase == "Succeeded":
                result = res.job_result(payload.lecture_id, status)
                if result:
                    if last_progress != 100:
                        await self._relay_progress(job, 100)
                    return result
                if not warned_no_url:
                    warned_no_url = True
                    log.warning("VideoTranscode %s succeeded without a videoUrl; waiting for it", name)
            elif phase == "Failed":
                raise TranscodeFailed(status.get("message") or f"transcode failed (VideoTranscode {name})")
            elif progress is not None and progress != last_progress:
                if await self._relay_progress(job, progress):
                    last_progress = progress

            await self.cache.wait(name, obj, timeout=self.tick)
            # Re-read directly while the shared watch is down, and now and then regardless.
            since = time.monotonic() - last_direct
            resync = self.settings.intake_resync_seconds
            if since >= 10 * resync or (since >= resync and not self.cache.synced.is_set()):
                last_direct = time.monotonic()
                try:
                    fresh = await self.api.get(name)
                except KubeError as exc:
                    self.metrics.kube_errors.inc()
                    log.warning("job %s: could not re-read VideoTranscode %s: %s", job.id, name, exc)
                    continue
                if fresh is None or (fresh.get("metadata") or {}).get("uid") != uid:
                    tomb = self.cache.deleted(name)
                    self._raise_deleted(name, _newer(tomb, obj) if tomb else obj)
                obj = _newer(fresh, obj)

    # --- shutdown -----------------------------------------------------------------------------------
    async def _release(self, job: Job, token: str) -> None:
        """Hand the job back to the queue: moved to delayed with no delay and no attempt used,
        so the next intake takes it at once and adopts its CR. If Redis cannot be reached the
        job simply stays active and comes back through the stalled-job check."""
        try:
            await asyncio.wait_for(job.moveToDelayed(int(time.time() * 1000), token), timeout=5)
            self.metrics.released.inc()
            log.info("job %s handed back to the queue for the next intake", job.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s could not be handed back (%s); it returns after its lock expires", job.id, exc)
        raise DelayedError()

    def begin_shutdown(self) -> None:
        self.stopping.set()
        for entry in list(self.active.values()):
            self._wake(entry.name)
