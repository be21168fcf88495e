"""The kopf handlers, registered on a registry built for one `Settings` (so tests inject theirs).

    on.startup   kopf settings (annotations for kopf's own bookkeeping, peering, timeouts),
                 the Mongo/Redis clients, the watch cache of the operator's Jobs and pods
    on.login     in-cluster, else the kubeconfig (lectern_operator.kube: the operator's own
                 calls log in the same way, and again when a token is refused)
    index        the VideoTranscodes in flight by phase (Running/Queued/Pending): the queue
    on.create    validate, phase Queued, admit if a slot is free
    on.event     a transcode in flight: remember its newest body, relay a new progress report
                 at once; final and done: forget it
    (a Job/pod event from the cache runs that transcode's reconcile at once)
    timer        Running, or final with a Lecture write / final notification pending: the
                 slow safety resync (LECTERN_RECONCILE_INTERVAL_SECONDS) of the same reconcile
                 -- level-triggered repair of a lost event; it reads the cache, not the API
    on.resume    Queued (after a restart): admission
    timer        Queued or phase-less: admission every admit interval (level-triggered;
                 paused with peering); a phase-less CR whose create handler never ran (kopf's
                 peering start-up gap) is queued by it
    timer        final and done: deleted after LECTERN_RETENTION_SECONDS (its Job and pods go
                 with it by ownerReferences; the Lecture and the events keep what it decided)
    on.delete    stop the Job; a Lecture this transcode moved to PROCESSING -> FAILED

A reconcile pass reads the transcode's Job and pods from the cache (`lectern_operator.cache`),
and writes the CR status only when something changed; the passes of one transcode never overlap
(a `Flight` per transcode in flight; requests made during a pass coalesce into one more).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from lectern_operator import jobs
from lectern_operator.api import v1alpha1 as api
from lectern_operator.kube import Conflict, Credentials, Kube, KubeError
from lectern_operator.lectures import Lectures
from lectern_operator.notify import Notifier
from lectern_operator.cache import Key, OwnedCache, key_of
from lectern_operator.queue import Admission, Entry, index_entry
from lectern_operator.reconcile import Reconciler, iso, needs_timer, now, parse_time, set_condition
from lectern_operator import metrics
from lectern_operator.settings import Settings

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
log = logging.getLogger("lectern.operator")


LANDED_MEMORY_SECONDS = 600.0


def _rv(body: Any) -> int:
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


@dataclass
class Flight:
    """One transcode in flight: its newest body (from kopf's watch or our own write's
    response, whichever is newer), the per-transcode state the reconcile keeps (pods seen,
    last progress notified), and its one reconcile task."""
    namespace: str
    name: str
    body: dict[str, Any] | None = None
    pods_seen: set[str] = field(default_factory=set)
    last_progress: int | None = None
    last_progress_time: float = 0.0
    dirty: bool = False
    task: asyncio.Task | None = None
    failures: int = 0
    kopf_seen: float = field(default_factory=time.monotonic)

    wake: Any = None  # wake(delay): run a pass again after `delay` s (a throttled progress notification)

    def offer(self, body: Any) -> None:
        if body is not None and (self.body is None or _rv(body) >= _rv(self.body)):
            self.body = dict(body)


class Services:
    """What the handlers share: API client, Mongo, Redis, the admission queue, the watch cache
    of the operator's Jobs and pods, the transcodes in flight."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kube: Kube | None = None
        self.lectures = Lectures(settings)
        self.notifier: Notifier | None = None
        self.reconciler: Reconciler | None = None
        self.admission = Admission(settings, self.start)
        self._retry: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.cache: OwnedCache | None = None
        self.flights: dict[Key, Flight] = {}
        # Transcodes that landed (final and done) -> (resourceVersion of that state, when): a
        # late watch event with an older body must not start a new flight (a pass on it would
        # finish the transcode a second time). Kept LANDED_MEMORY_SECONDS: bounded by the
        # throughput, not the history.
        self.landed: dict[Key, tuple[int, float]] = {}
        # kopf.event() needs kopf's event queue, found through context variables that kopf sets
        # in its per-object tasks: a reconcile started by a Job/pod event runs in a copy of the
        # context of the last kopf handler that ran.
        self._ctx: contextvars.Context | None = None

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(user_agent="lectern-operator")
        return self._kube

    def open(self) -> None:
        self.notifier = Notifier(self.settings)
        self.reconciler = Reconciler(self.settings, lambda: self.kube, self.lectures, self.notifier)
        self.cache = OwnedCache(lambda: self.kube, list(self.settings.namespaces), self.kick,
                                watch_timeout_seconds=self.settings.watch_timeout_seconds)
        self.reconciler.cache = self.cache
        self.cache.start()

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.stop()
        for task in [self._retry, *self._tasks, *(f.task for f in self.flights.values())]:
            if task is not None:
                task.cancel()
        if self.notifier is not None:
            await self.notifier.close()
        if self._kube is not None:
            await self._kube.close()
        self.lectures.close()

    # -- the transcodes in flight ------------------------------------------------------------

    def flight(self, namespace: str, name: str, body: Any = None) -> Flight:
        """The Flight of a transcode in flight (made on first sight; kopf handlers call this,
        so it also records that kopf -- not paused by peering -- handles this transcode)."""
        self._ctx = contextvars.copy_context()
        key = key_of(namespace, name)
        f = self.flights.get(key)
        gone = self.landed.get(key)
        if f is None and gone is not None and body is not None and _rv(body) <= gone[0]:
            return Flight(namespace, name)  # a stale event of a landed transcode: nothing to do
        if f is None or f.name != name:
            f = self.flights[key] = Flight(namespace, name)
            f.wake = lambda delay, key=key: asyncio.get_running_loop().call_later(delay, self.kick, key)
            assert self.cache is not None
            self.cache.track(key)
        f.kopf_seen = time.monotonic()
        f.offer(body)
        return f

    def land(self, namespace: str, name: str, body: Any = None) -> None:
        """Final and done (or deleted): drop it from memory and from the cache."""
        key = key_of(namespace, name)
        t = time.monotonic()
        f = self.flights.get(key)
        rv = max(_rv(body), _rv(f.body if f is not None else None))
        self.landed[key] = (max(rv, self.landed.get(key, (0, 0.0))[0]), t)
        while self.landed:
            first = next(iter(self.landed))
            if t - self.landed[first][1] < LANDED_MEMORY_SECONDS:
                break
            del self.landed[first]
        # A pass in progress is not cancelled: it may be the one that wrote the final status
        # and is about to run admission (kopf can deliver the watch event of that write before
        # the PATCH's own response). It ends by itself: its flight is no longer registered.
        self.flights.pop(key, None)
        if self.cache is not None:
            self.cache.forget(key)

    def kick(self, key: Key) -> None:
        """Run the transcode's reconcile soon (a Job/pod event, a report, a timer tick)."""
        f = self.flights.get(key)
        if f is None or f.body is None:
            return
        # A replica paused by peering runs no kopf handlers: its flights go stale and stop
        # acting (the active replica's handlers own them).
        if time.monotonic() - f.kopf_seen > 3 * self.settings.reconcile_interval_seconds + 30:
            return
        f.dirty = True
        if f.task is None or f.task.done():
            f.task = asyncio.get_running_loop().create_task(self._drain(key, f), context=self._ctx)

    async def reconcile_now(self, f: Flight) -> None:
        """Kick and wait for the pass (the resync timer: kopf's retry/backoff sees errors)."""
        self.kick(key_of(f.namespace, f.name))
        if f.task is not None:
            await asyncio.shield(f.task)

    async def _drain(self, key: Key, f: Flight) -> None:
        while f.dirty and self.flights.get(key) is f:
            f.dirty = False
            try:
                await self._pass(f)
                f.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried with backoff (and by the resync)
                f.failures += 1
                delay = min(30.0, 0.5 * 2 ** min(f.failures, 6))
                log.warning("reconcile of %s/%s failed (again in %.1fs): %s", f.namespace, f.name, delay, exc)
                asyncio.get_running_loop().call_later(delay, self.kick, key)
                return

    async def _pass(self, f: Flight) -> None:
        body = f.body
        if body is None:
            return
        meta, status = body["metadata"], dict(body.get("status") or {})
        if meta.get("deletionTimestamp"):
            return
        rec = self.reconciler
        assert rec is not None
        phase = status.get("phase")
        if phase == "Running":
            changes = await rec.running(body, f, log)
        elif needs_timer(status):
            changes = await rec.finalize(body, status, log)
        else:
            return
        if not changes:
            return
        changes.setdefault("observedGeneration", meta.get("generation"))
        path = Kube.vt_path(f.namespace, f.name) + "/status"
        try:
            written = await self.kube.merge_patch(path, {"status": changes})
        except KubeError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        f.offer(written)
        new_phase = changes.get("phase")
        if phase == "Running" and new_phase in api.FINAL_PHASES:
            # Written before admission runs: the cluster never shows more Running than the cap.
            self.admission.override(f.namespace, f.name, new_phase)
            await self.admit(self._index)
        if not needs_timer((written or {}).get("status")) and (written or {}).get("status", {}).get("phase") in api.FINAL_PHASES:
            self.land(f.namespace, f.name, written)

    _index: Any = None  # the kopf index of the queue, once a handler has seen it

    async def admit(self, index: Any, *, force: bool = True) -> None:
        """Request an admission pass in the background and return at once: a long pass never
        holds up the calling object's own events (e.g. its progress reports). Requests made
        while a pass runs coalesce into one more pass."""
        if index is not None:
            self._index = index
        if not force and not self.admission.due():
            return
        if self.admission.busy:
            await self.admission.admit(index, force=force)  # marks pending
            return
        task = asyncio.create_task(self._admit_now(index, force=force))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_now(self, index: Any, *, force: bool = True) -> None:
        """Never raises: a failed run is retried after LECTERN_ADMIT_INTERVAL_SECONDS."""
        try:
            started = await self.admission.admit(index, force=force)
        except Exception as exc:
            log.warning("admission failed (retrying in %ss): %s", self.settings.admit_interval_seconds, exc)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._admit_later(index))
            return
        if started:
            log.info("admitted %s", ", ".join(e.name for e in started))
        counts = self.admission.last_counts
        if counts.get("Queued") and counts.get("Running", 0) < self.settings.max_concurrent:
            # A slot stayed free while something waits (a 409, a failed start): again later.
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._admit_later(index))

    async def _admit_later(self, index: Any) -> None:
        await asyncio.sleep(self.settings.admit_interval_seconds)
        await self._admit_now(index)

    async def start(self, entry: Entry) -> bool:
        """Queued -> Running for one CR: status first (it is what the cap counts), then the Job.

        The status write is a compare-and-swap on resourceVersion, so only a CR that is still
        Queued starts. A 409 means something else wrote the object meanwhile -- most often
        kopf's own annotation patch after the create handler, milliseconds after our read on
        a real API server -- so it reads the object again and retries."""
        path = Kube.vt_path(entry.namespace, entry.name)
        for _ in range(5):
            body = await self.kube.get(path)
            if body is None:
                return False
            status = body.get("status") or {}
            if status.get("phase") != "Queued" or (body["metadata"].get("deletionTimestamp")):
                return False  # the index lagged: started already, finished, or going away
            meta = body["metadata"]
            job_name = jobs.job_name(meta["name"], meta.get("uid"))
            t = now()
            patch = {
                "phase": "Running", "jobName": job_name, "startedAt": iso(t), "progressAt": iso(t),
                "message": "starting", "observedGeneration": meta.get("generation"),
                "conditions": set_condition(status.get("conditions"), api.COND_ADMITTED, "True", "SlotFree",
                                            f"Job {job_name} started"),
            }
            try:
                written = await self.kube.merge_patch(f"{path}/status", {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                                                                          "status": patch})
                break
            except Conflict:
                continue
        else:
            return False  # still contended: the next admission pass (at most an admit interval away) retries
        queued = parse_time(status.get("queuedAt"))
        waited = (t - queued).total_seconds() if queued else 0.0
        metrics.QUEUE_WAIT.observe(max(waited, 0.0))
        assert self.reconciler is not None and self.cache is not None
        # Tracked (and primed: no object of it exists yet) before its Job is created, so the
        # cache keeps every event of the Job and its pods.
        self.cache.track(key_of(entry.namespace, entry.name), primed=True)
        flight = self.flight(entry.namespace, entry.name, written)
        try:
            await self.reconciler.ensure_job(body)
        except Exception as exc:  # the reconcile creates it on its next pass
            log.warning("Job %s not created yet: %s", job_name, exc)
        kopf.event(body, type="Normal", reason="Started", message=f"slot free after {waited:.1f}s: Job {job_name} started")
        self.kick(key_of(flight.namespace, flight.name))
        return True


def configure(kopf_settings: kopf.OperatorSettings, s: Settings) -> None:
    # kopf's own bookkeeping goes to annotations: status holds only what users read.
    # Own prefix (`operator.media.lectern.dev/<handler>`): never collides with the intake's
    # `media.lectern.dev/*` annotations and labels.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"operator.{api.GROUP}")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=f"operator.{api.GROUP}", key="last-handled-configuration")
    kopf_settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    kopf_settings.posting.level = logging.WARNING  # kopf's own warnings; our transition events use kopf.event
    kopf_settings.watching.server_timeout = s.watch_timeout_seconds
    kopf_settings.watching.client_timeout = s.watch_timeout_seconds + 5
    kopf_settings.watching.connect_timeout = 10
    kopf_settings.networking.request_timeout = 30
    kopf_settings.scanning.disabled = True  # explicit namespaces; no cluster-wide listing
    kopf_settings.peering.name = s.peering_name
    kopf_settings.peering.standalone = s.standalone
    kopf_settings.peering.mandatory = not s.standalone
    kopf_settings.peering.clusterwide = False
    kopf_settings.queueing.error_delays = (1, 2, 5, 10, 30)


def build_registry(settings: Settings | None = None, services: Services | None = None) -> kopf.OperatorRegistry:
    s = settings or Settings()
    svc = services or Services(s)
    reg = kopf.OperatorRegistry()

    @kopf.on.startup(id="startup", registry=reg)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, s)
        if not s.cloudinary_cloud_name:
            log.error("no Cloudinary cloud name is configured (chart value cloudinary.cloudName, "
                      "LECTERN_CLOUDINARY_CLOUD_NAME): every finished transcode will fail, because no "
                      "reported video URL can be checked against it")
        svc.open()
        memo.services = svc

    @kopf.on.cleanup(id="cleanup", registry=reg)
    async def cleanup(**_: Any) -> None:
        await svc.close()

    @kopf.on.login(id="login", registry=reg)
    def login(**_: Any) -> kopf.ConnectionInfo:
        """Called at start and again whenever the API server refuses kopf's token."""
        return Credentials.load().connection_info()

    @kopf.on.probe(id="queue", registry=reg)
    def probe(**_: Any) -> dict[str, int]:
        return dict(svc.admission.last_counts)

    @kopf.index(*RESOURCE, id="vt_queue", registry=reg)
    def vt_queue(body: kopf.Body, **_: Any) -> dict[str, Entry]:
        return index_entry(body)

    # Not id="queue": kopf keeps handler progress in the annotation `<GROUP>/<id>`, and
    # `media.lectern.dev/queue` is the intake's (the BullMQ queue the CR came from).
    @kopf.on.create(*RESOURCE, id="admit", registry=reg, backoff=2)
    async def created(body: kopf.Body, vt_queue: kopf.Index, **_: Any) -> None:
        await queue_new(body, vt_queue)

    async def queue_new(body: kopf.Body, vt_queue: kopf.Index) -> None:
        """Validate a new transcode and queue it (or fail it: invalid spec)."""
        meta, status = body["metadata"], body.get("status") or {}
        name, namespace = meta["name"], meta["namespace"]
        path = Kube.vt_path(namespace, name) + "/status"
        if status.get("phase"):
            return  # already handled (e.g. created while a previous operator instance ran)
        try:
            spec = api.VideoTranscodeSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            msg = f"invalid spec: {where}: {first.get('msg')}"
            await svc.kube.merge_patch(path, {"status": {
                "phase": "Failed", "message": msg, "completedAt": iso(now()),
                "observedGeneration": meta.get("generation"),
                "conditions": set_condition(None, api.COND_FAILED, "True", "InvalidSpec", msg)}})
            kopf.event(body, type="Warning", reason="InvalidSpec", message=msg)
            return
        queued_at = iso(now())
        rv = meta.get("resourceVersion")
        for _ in range(5):  # compare-and-swap: never overwrite a phase set meanwhile (e.g. a retry)
            try:
                await svc.kube.merge_patch(path, {"metadata": {"resourceVersion": rv}, "status": {
                    "phase": "Queued", "queuedAt": queued_at, "progress": 0, "attempts": 0,
                    "observedGeneration": meta.get("generation"),
                    "conditions": set_condition(None, api.COND_ADMITTED, "False", "Queued", "waiting for a free slot")}})
                break
            except KubeError as exc:
                if exc.status != 409:
                    raise
                fresh = await svc.kube.get(Kube.vt_path(namespace, name))
                if fresh is None or (fresh.get("status") or {}).get("phase"):
                    return
                rv = fresh["metadata"].get("resourceVersion")
        else:
            raise kopf.TemporaryError("the object keeps changing; retrying", delay=1)
        kopf.event(body, type="Normal", reason="Queued", message=f"waiting for a slot (priority {spec.priority})")
        svc.admission.override(namespace, name, "Queued", queued_at)
        await svc.admit(vt_queue)

    # The slow safety resync: the same reconcile a Job/pod event or a report runs at once,
    # every reconcile interval, whatever happened or was missed. It reads the cache, and writes
    # only what changed: a transcode that is simply running costs the API server nothing.
    @kopf.timer(*RESOURCE, id="reconcile", interval=s.reconcile_interval_seconds, registry=reg,
                backoff=max(1.0, s.reconcile_interval_seconds),
                when=lambda status, **_: needs_timer(status))
    async def reconcile(body: kopf.Body, meta: kopf.Meta, name: str, namespace: str, vt_queue: kopf.Index,
                        **_: Any) -> None:
        if meta.get("deletionTimestamp"):
            return
        await svc.reconcile_now(svc.flight(namespace, name, body))
        await svc.admit(vt_queue, force=False)  # periodic safety net, at most every admit interval

    # Level-triggered admission: a pass runs when a transcode is created, finishes or is deleted,
    # after a restart, from every Running transcode's resync (at most every admit interval), and
    # again an admit interval after a pass that left a slot free while something waited (a 409,
    # a start that failed). Not a timer per Queued CR: kopf keeps the whole body of every object
    # with a timer, so 1,000 waiting CRs cost ~60 MB that way.
    # A phase-less CR gets a timer: one created while two peering replicas settled may never get
    # its create handler (kopf's start-up gap); an admit interval later, this queues it.
    @kopf.timer(*RESOURCE, id="admit-waiting", interval=s.admit_interval_seconds, registry=reg,
                initial_delay=s.admit_interval_seconds,
                when=lambda status, **_: not (status or {}).get("phase"))
    async def admit_waiting(body: kopf.Body, status: kopf.Status, vt_queue: kopf.Index, **_: Any) -> None:
        if not status.get("phase") and not body.get("metadata", {}).get("deletionTimestamp"):
            await queue_new(body, vt_queue)

    @kopf.on.event(*RESOURCE, id="progress", registry=reg,
                   when=lambda status, **_: needs_timer(status))
    async def progress(body: kopf.Body, status: kopf.Status, name: str, namespace: str, logger: logging.Logger,
                       **_: Any) -> None:
        """Remember the newest body of a transcode in flight; relay a new progress report at
        once; once it is final and done, forget it."""
        flight = svc.flight(namespace, name, body)
        if status.get("phase") != "Running":
            svc.kick(key_of(namespace, name))  # final, with a Lecture write / notification pending
            return
        report = status.get("report") or {}
        value = report.get("progress")
        if isinstance(value, int) and value != flight.last_progress:
            assert svc.reconciler is not None
            await svc.reconciler.notify_progress(body, {**dict(flight.body.get("status") or status), "progress": value},
                                                 flight, logger)
        # Any change of the CR (a report, a write of ours) gets a pass: the report's progress,
        # message and cost reach the status now (the intake relays status.progress). A pass
        # that finds nothing to change writes nothing.
        svc.kick(key_of(namespace, name))

    @kopf.on.event(*RESOURCE, id="landed", registry=reg,
                   when=lambda status, **_: (status or {}).get("phase") in api.FINAL_PHASES and not needs_timer(status))
    async def landed(body: kopf.Body, name: str, namespace: str, vt_queue: kopf.Index, **_: Any) -> None:
        """Final and done: nothing of it stays in the operator's memory (index, flights, cache);
        its slot is free (admission; coalesced with the one its final write started)."""
        if key_of(namespace, name) in svc.flights:
            svc.land(namespace, name, body)
            await svc.admit(vt_queue)

    # History that does not weigh: a finished transcode (Lecture written, final notification
    # sent) is deleted after the retention period; its Job and pods go with it (ownerReferences).
    @kopf.timer(*RESOURCE, id="expire", interval=s.retention_check_interval(), registry=reg,
                when=lambda status, **_: (status or {}).get("phase") in api.FINAL_PHASES and not needs_timer(status))
    async def expire(body: kopf.Body, status: kopf.Status, meta: kopf.Meta, name: str, namespace: str,
                     logger: logging.Logger, **_: Any) -> None:
        if meta.get("deletionTimestamp"):
            return
        done = parse_time(status.get("completedAt")) or parse_time(meta.get("creationTimestamp"))
        if done is None or (now() - done).total_seconds() < s.retention_seconds:
            return
        if await svc.kube.delete(Kube.vt_path(namespace, name), uid=meta.get("uid")):
            logger.info("retention: deleted (%s %ss ago)", status.get("phase"), int((now() - done).total_seconds()))
            metrics.EXPIRED.inc()

    @kopf.on.resume(*RESOURCE, id="requeue", registry=reg, backoff=2,
                    when=lambda status, **_: (status or {}).get("phase") == "Queued")
    async def requeue(vt_queue: kopf.Index, **_: Any) -> None:
        """After an operator restart: queued CRs get their slot (the index is complete by now)."""
        await svc.admit(vt_queue, force=False)

    @kopf.on.delete(*RESOURCE, id="cancel", registry=reg, retries=30, backoff=2)
    async def deleted(body: kopf.Body, name: str, namespace: str, logger: logging.Logger,
                      vt_queue: kopf.Index, **_: Any) -> None:
        assert svc.reconciler is not None
        final = (body.get("status") or {}).get("phase") in api.FINAL_PHASES
        await svc.reconciler.cancel(body, logger)
        svc.land(namespace, name, body)
        if not final:  # a finished one held no slot
            svc.admission.override(namespace, name, "Deleted")
            await svc.admit(vt_queue)

    return reg
