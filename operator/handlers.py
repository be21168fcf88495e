"""The kopf handlers, registered on a registry built for one `Settings` (so tests inject theirs).

    on.startup   kopf settings (annotations for kopf's own bookkeeping, peering, timeouts),
                 the Mongo/Redis clients
    on.login     in-cluster, else the kubeconfig (lectern_operator.kube: the operator's own
                 calls log in the same way, and again when a token is refused)
    index        every VideoTranscode's phase/priority/creation time: the queue
    on.create    validate, phase Queued, admit if a slot is free
    timer        Running: Job + pods + report -> status, Lecture, notifications, watchdog;
                 final: pending Lecture write / final notification until done
    on.resume    Queued (after a restart): admission
    on.event     Running: relay a new progress report at once
    timer        Queued: admission every admit interval (level-triggered; paused with peering)
    (admission also runs at once whenever a transcode is created, finishes or is deleted,
    and after a restart)
    on.delete    stop the Job; a Lecture this transcode moved to PROCESSING -> FAILED
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from lectern_operator import jobs
from lectern_operator.api import v1alpha1 as api
from lectern_operator.kube import Conflict, Credentials, Kube, KubeError
from lectern_operator.lectures import Lectures
from lectern_operator.notify import Notifier
from lectern_operator.queue import Admission, Entry, entry_from_body
from lectern_operator.reconcile import Reconciler, iso, needs_timer, now, parse_time, set_condition
from lectern_operator import metrics
from lectern_operator.settings import Settings

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
log = logging.getLogger("lectern.operator")


class Services:
    """What the handlers share: API client, Mongo, Redis, the admission queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kube: Kube | None = None
        self.lectures = Lectures(settings)
        self.notifier: Notifier | None = None
        self.reconciler: Reconciler | None = None
        self.admission = Admission(settings, self.start)
        self._retry: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(user_agent="lectern-operator")
        return self._kube

    def open(self) -> None:
        self.notifier = Notifier(self.settings)
        self.reconciler = Reconciler(self.settings, lambda: self.kube, self.lectures, self.notifier)

    async def close(self) -> None:
        for task in [self._retry, *self._tasks]:
            if task is not None:
                task.cancel()
        if self.notifier is not None:
            await self.notifier.close()
        if self._kube is not None:
            await self._kube.close()
        self.lectures.close()

    async def admit(self, index: Any, *, force: bool = True) -> None:
        """Request an admission pass in the background and return at once: a long pass never
        holds up the calling object's own events (e.g. its progress reports). Requests made
        while a pass runs coalesce into one more pass."""
        if not force and not self.admission.due():
            return
        if self.admission.busy:
            await self.admission.admit(index.get("all", ()) if index is not None else (), force=force)  # marks pending
            return
        task = asyncio.create_task(self._admit_now(index, force=force))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_now(self, index: Any, *, force: bool = True) -> None:
        """Never raises: a failed run is retried after LECTERN_ADMIT_INTERVAL_SECONDS."""
        try:
            started = await self.admission.admit(index.get("all", ()) if index is not None else (), force=force)
        except Exception as exc:
            log.warning("admission failed (retrying in %ss): %s", self.settings.admit_interval_seconds, exc)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._admit_later(index))
            return
        if started:
            log.info("admitted %s", ", ".join(e.name for e in started))

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
                await self.kube.merge_patch(f"{path}/status", {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                                                                "status": patch})
                break
            except Conflict:
                continue
        else:
            return False  # still contended: the next admission pass (at most an admit interval away) retries
        queued = parse_time(status.get("queuedAt"))
        waited = (t - queued).total_seconds() if queued else 0.0
        metrics.QUEUE_WAIT.observe(max(waited, 0.0))
        assert self.reconciler is not None
        try:
            await self.reconciler.ensure_job(body)
        except Exception as exc:  # the Running timer creates it on its next tick
            log.warning("Job %s not created yet: %s", job_name, exc)
        kopf.event(body, type="Normal", reason="Started", message=f"slot free after {waited:.1f}s: Job {job_name} started")
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
        return {"all": entry_from_body(body)}

    # Not id="queue": kopf keeps handler progress in the annotation `<GROUP>/<id>`, and
    # `media.lectern.dev/queue` is the intake's (the BullMQ queue the CR came from).
    @kopf.on.create(*RESOURCE, id="admit", registry=reg, backoff=2)
    async def created(body: kopf.Body, status: kopf.Status, meta: kopf.Meta, name: str, namespace: str,
                      vt_queue: kopf.Index, **_: Any) -> None:
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

    @kopf.timer(*RESOURCE, id="reconcile", interval=s.reconcile_interval_seconds, registry=reg,
                backoff=max(1.0, 5 * s.reconcile_interval_seconds),
                when=lambda status, **_: needs_timer(status))
    async def reconcile(body: kopf.Body, status: kopf.Status, meta: kopf.Meta, name: str, namespace: str,
                        memo: kopf.Memo, patch: kopf.Patch, logger: logging.Logger, vt_queue: kopf.Index,
                        **_: Any) -> None:
        if meta.get("deletionTimestamp"):
            return
        rec = svc.reconciler
        assert rec is not None
        phase = status.get("phase")
        if phase == "Running":
            changes = await rec.running(body, memo, logger)
        else:
            changes = await rec.finalize(body, dict(status), logger)
        if changes:
            changes.setdefault("observedGeneration", meta.get("generation"))
        new_phase = changes.get("phase")
        if phase == "Running" and new_phase in api.FINAL_PHASES:
            # The final phase is written now, not by kopf after this handler returns: admission
            # starts the next transcode at once, and the cluster must never show more Running
            # than the cap (the bench on the real API server saw 101 of 100 for a moment).
            await svc.kube.merge_patch(Kube.vt_path(namespace, name) + "/status", {"status": changes})
            svc.admission.override(namespace, name, new_phase)
            await svc.admit(vt_queue)
        else:
            if changes:
                patch.status.update(changes)
            await svc.admit(vt_queue, force=False)  # periodic safety net, at most every admit interval

    # Level-triggered admission: while anything waits, every admit interval the queue is
    # compared with the cap again, whatever happened or was missed (a lost event, a 409, a start
    # that failed), even when nothing runs whose timer would do it. A kopf timer, not a free task,
    # so a standby replica paused by peering never admits.
    @kopf.timer(*RESOURCE, id="admit-waiting", interval=s.admit_interval_seconds, registry=reg,
                when=lambda status, **_: (status or {}).get("phase") == "Queued")
    async def admit_waiting(vt_queue: kopf.Index, **_: Any) -> None:
        await svc.admit(vt_queue, force=False)

    @kopf.on.event(*RESOURCE, id="progress", registry=reg,
                   when=lambda status, **_: (status or {}).get("phase") == "Running")
    async def progress(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, logger: logging.Logger,
                       **_: Any) -> None:
        """Relay a new progress report at once (the timer also does, at its interval)."""
        report = status.get("report") or {}
        value = report.get("progress")
        if isinstance(value, int) and value != getattr(memo, "last_progress", None):
            assert svc.reconciler is not None
            await svc.reconciler.notify_progress(body, {**dict(status), "progress": value}, memo, logger)

    @kopf.on.resume(*RESOURCE, id="requeue", registry=reg, backoff=2,
                    when=lambda status, **_: (status or {}).get("phase") == "Queued")
    async def requeue(vt_queue: kopf.Index, **_: Any) -> None:
        """After an operator restart: queued CRs get their slot (the index is complete by now)."""
        await svc.admit(vt_queue, force=False)

    @kopf.on.delete(*RESOURCE, id="cancel", registry=reg, retries=30, backoff=2)
    async def deleted(body: kopf.Body, name: str, namespace: str, logger: logging.Logger,
                      vt_queue: kopf.Index, **_: Any) -> None:
        assert svc.reconciler is not None
        await svc.reconciler.cancel(body, logger)
        svc.admission.override(namespace, name, "Deleted")
        await svc.admit(vt_queue)

    return reg
