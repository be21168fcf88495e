"""Status reconciliation: Job + pods + the transcoder's report -> CR status, Lecture, notifications.

Everything here works on plain dicts (the CR body as kopf gives it) and returns a *status
merge patch*; kopf applies it after the handler (or the caller patches it itself). Side
effects (Lecture writes, notifications, pod deletions, Kubernetes events) are idempotent or
recorded in the status they return, so running a step twice, or after a restart, is safe.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import kopf

from lectern_operator import jobs, metrics, notify, trust
from lectern_operator.api import v1alpha1 as api
from lectern_operator.cache import OwnedCache, key_of as cache_key
from lectern_operator.kube import Kube, KubeError
from lectern_operator.lectures import FAILED, PROCESSING, READY, LectureUnavailable, Lectures, Outcome
from lectern_operator.settings import Settings

log = logging.getLogger("lectern.operator")

# A failure reason (CR status.message, the Lecture, the notification) is at most this long.
REASON_LIMIT = 500


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def set_condition(conditions: list[Mapping[str, Any]] | None, type_: str, status: str, reason: str,
                  message: str = "") -> list[dict[str, Any]]:
    """The full conditions list with one condition set (merge patches replace lists)."""
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions or []:
        c = dict(c)
        if c.get("type") == type_:
            found = True
            if c.get("status") != status:
                c["lastTransitionTime"] = iso(now())
            c.update(status=status, reason=reason, message=message[:1024])
        out.append(c)
    if not found:
        out.append({"type": type_, "status": status, "reason": reason, "message": message[:1024],
                    "lastTransitionTime": iso(now())})
    return out


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def job_finished(job: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """("Succeeded"|"Failed", condition) when the Job reached a final state."""
    conds = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
             if c.get("status") == "True"}
    for t in ("Complete", "SuccessCriteriaMet"):
        if t in conds:
            return "Succeeded", conds[t]
    for t in ("Failed", "FailureTarget"):
        if t in conds:
            return "Failed", conds[t]
    return None


def termination(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The transcoder container's terminated state, with its JSON message parsed."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") not in (None, jobs.CONTAINER):
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if not term:
            continue
        out = {"exitCode": term.get("exitCode"), "reason": term.get("reason")}
        raw = (term.get("message") or "").strip()
        if raw:
            try:
                parsed = json.loads(raw.splitlines()[-1])
                if isinstance(parsed, dict):
                    out.update({k: v for k, v in parsed.items()
                                if k in ("exitCode", "reason", "videoUrl", "hlsUrl", "posterUrl")})
            except ValueError:
                out["reason"] = raw[-300:]
        return out
    return None


def https_url(value: Any) -> str | None:
    """`value` when it is an https URL the CRD would admit (api.HTTPS_URL_PATTERN), else None."""
    if isinstance(value, str) and len(value) <= 2048 and re.fullmatch(api.HTTPS_URL_PATTERN, value):
        return value
    return None


def hls_result(report: Mapping[str, Any], term: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The HLS outputs of a finished transcode (issue 15): `{hlsUrl, posterUrl}` from where the
    videoUrl comes from (the report, else the termination message: the transcoder puts all
    three in one report update and one message), only https URLs; and what was refused."""
    src = report if report.get("videoUrl") else term
    urls: dict[str, str] = {}
    refused: list[str] = []
    for key in ("hlsUrl", "posterUrl"):
        value = src.get(key)
        if value and https_url(value):
            urls[key] = value
        elif value:
            refused.append(f"{key} {str(value)[:200]!r} is not an https URL")
    return urls, refused


def container_started(pod: Mapping[str, Any]) -> datetime | None:
    """When the transcoder container started running (None: not yet)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if started:
            return parse_time(started)
    return None


# Container waiting reasons that do not clear by themselves (the kubelet's names).
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def pending_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a pending pod is not running, when it will not fix itself soon."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return f"Unschedulable: {c.get('message') or ''}".strip()
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return None


def pod_started(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str((pod.get("status") or {}).get("startTime") or meta.get("creationTimestamp") or "")


def needs_timer(status: Mapping[str, Any] | None) -> bool:
    """Running, or final with a Lecture write or the final notification still to do."""
    status = status or {}
    phase = status.get("phase")
    if phase == "Running":
        return True
    if phase in api.FINAL_PHASES:
        lecture = status.get("lecture") or {}
        notified = status.get("notified") or {}
        failed = condition(status, api.COND_FAILED)
        if failed and failed.get("reason") == "InvalidSpec":
            return False
        lecture_done = lecture.get("superseded") or lecture.get("applied") in (READY, FAILED)
        return not lecture_done or not notified.get("final")
    return False


class Reconciler:
    def __init__(self, settings: Settings, kube_getter, lectures: Lectures, notifier: notify.Notifier) -> None:
        self.settings = settings
        self._kube_getter = kube_getter
        self.lectures = lectures
        self.notifier = notifier
        self.cache: OwnedCache | None = None  # None: read the Job and pods directly (no watches)

    @property
    def kube(self) -> Kube:
        return self._kube_getter()

    # -- Job ------------------------------------------------------------------------------

    async def ensure_job(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        manifest = jobs.build_job(body, self.settings)
        ns = manifest["metadata"]["namespace"]
        job, created = await self.kube.create(Kube.jobs_path(ns), manifest)
        if self.cache is not None:
            self.cache.put_job(job)
        return job, created

    async def read_job(self, namespace: str, name: str, job_name: str) -> dict[str, Any] | None:
        """The transcode's Job: from the watch cache (a direct read only to prime it once)."""
        if self.cache is None:
            return await self.kube.get(Kube.jobs_path(namespace, job_name))
        key = cache_key(namespace, name)
        await self.cache.prime(key)
        return self.cache.job(key, job_name)

    async def pods_of(self, namespace: str, name: str, job_name: str) -> list[dict[str, Any]]:
        if self.cache is None:
            pods = await self.kube.list(Kube.pods_path(namespace),
                                        label_selector=f"{api.LABEL_TRANSCODE}={api.label_value(name)}")
        else:
            key = cache_key(namespace, name)
            await self.cache.prime(key)
            pods = self.cache.pods_of(key)
        out = []
        for p in pods:
            meta = p.get("metadata") or {}
            owners = meta.get("ownerReferences") or []
            if owners and not any(o.get("name") == job_name for o in owners):
                continue
            out.append(p)
        return sorted(out, key=pod_started)

    # -- the running phase ----------------------------------------------------------------

    async def running(self, body: Mapping[str, Any], memo: Any, logger: logging.Logger) -> dict[str, Any]:
        meta = body["metadata"]
        status: dict[str, Any] = dict(body.get("status") or {})
        name, ns, uid = meta["name"], meta.get("namespace", "default"), meta.get("uid")
        patch: dict[str, Any] = {}
        job_name = status.get("jobName") or jobs.job_name(name, uid)
        if status.get("jobName") != job_name:
            patch["jobName"] = job_name

        job = await self.read_job(ns, name, job_name)
        if job is None:
            try:
                job, created = await self.ensure_job(body)
            except KubeError as exc:
                if exc.transient or exc.status in (401, 403):
                    raise  # the API server or RBAC in trouble: kopf retries the timer
                # The server refuses the Job itself (422, 400): it will refuse it every time,
                # so the transcode fails and frees its slot.
                reason = f"the API server refused the transcode Job: {exc.message}"
                return {**patch, **await self.finish(body, status, "Failed",
                                                     {"reason": "JobRejected", "message": reason}, [], {}, logger)}
            if created:
                kopf.event(body, type="Normal", reason="JobCreated", message=f"Job {job_name} created")

        # Lecture -> PROCESSING, and the "processing" notification, once.
        patch.update(await self.sync_lecture(body, status, PROCESSING, logger))
        status.update(patch)
        lecture_state = status.get("lecture") or {}
        if not (status.get("notified") or {}).get("processing") and lecture_state.get("applied") == PROCESSING \
                and not lecture_state.get("superseded"):
            # only once the Lecture says PROCESSING (the client reloads it on a notification)
            patch.update(await self.notify_once(body, status, notify.PROCESSING, logger))
            status.update(patch)

        pods = await self.pods_of(ns, name, job_name)
        jstatus = job.get("status") or {}
        # Pods come and go (an evicted or deleted one may be gone before we look): count every
        # pod this operator saw, the Job's counters and the last recorded figure.
        seen: set[str] = getattr(memo, "pods_seen", None) or set()
        seen.update(p["metadata"].get("uid") or p["metadata"]["name"] for p in pods)
        memo.pods_seen = seen
        attempts = max(int(status.get("attempts") or 0), len(seen),
                       int(jstatus.get("failed") or 0) + int(jstatus.get("succeeded") or 0) + int(jstatus.get("active") or 0))
        if attempts != int(status.get("attempts") or 0):
            patch["attempts"] = attempts
            if attempts > 1:
                metrics.RETRIES.inc(attempts - max(1, int(status.get("attempts") or 0)))
                prev = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" or (p.get("metadata") or {}).get("deletionTimestamp")]
                why = ""
                if prev:
                    t = termination(prev[-1]) or {}
                    said = trust.user_text(t.get('reason') or t.get('exitCode') or 'stopped', 200)
                    why = f" (previous pod {prev[-1]['metadata']['name']}: {said})"
                kopf.event(body, type="Warning", reason="Retrying", message=f"attempt {attempts}{why}")

        # The transcoder's report: progress and cost.
        report = status.get("report") or {}
        progress = report.get("progress")
        if isinstance(progress, int) and progress != status.get("progress"):
            patch["progress"] = max(0, min(100, progress))
            patch["progressAt"] = iso(now())
            stalled = condition(status, api.COND_STALLED)
            if stalled and stalled.get("status") == "True":
                patch["conditions"] = set_condition(status.get("conditions"), api.COND_STALLED, "False",
                                                    "ProgressResumed", f"progress moved to {progress}%")
        elif not status.get("progressAt"):
            patch["progressAt"] = iso(now())
        cost = self.cost_from(report, status)
        if cost and cost != status.get("cost"):
            patch["cost"] = cost
        stage = report.get("stage")
        msg = f"{stage} {report.get('progress', 0)}%" if stage else "waiting for the transcoder to start"
        if msg != status.get("message"):
            patch["message"] = msg
        status.update(patch)
        await self.notify_progress(body, status, memo, logger)

        finished = job_finished(job)
        if finished:
            final, cond = finished
            if not report.get("videoUrl"):  # the final report may have landed after our read
                again = await self.kube.get(Kube.vt_path(ns, name))
                if again is not None:
                    report = (again.get("status") or {}).get("report") or report
                    cost = self.cost_from(report, status)
                    if cost and cost != status.get("cost"):
                        patch["cost"] = status["cost"] = cost
            patch.update(await self.finish(body, status, final, cond, pods, report, logger))
            return patch

        # A pod that cannot start: say why now, fail the transcode after start_timeout_seconds.
        start_patch, failure = self.not_starting(body, status, job, pods)
        patch.update(start_patch)
        status.update(start_patch)
        if failure:
            await self.kube.delete(Kube.jobs_path(ns, job_name), propagation="Background")
            patch.update(await self.finish(body, status, "Failed", {"reason": "PodNotStarting", "message": failure},
                                           [], report, logger))
            return patch

        # Watchdog: progress has not moved for stall_timeout -> delete the pod, the Job retries.
        patch.update(await self.watchdog(body, status, pods, logger))
        return patch

    def cost_from(self, report: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        cost: dict[str, Any] = dict(status.get("cost") or {})
        for src, dst in (("cpuSeconds", "cpuSeconds"), ("bytesDownloaded", "bytesDownloaded"),
                         ("bytesUploaded", "bytesUploaded"), ("speed", "speed"),
                         ("inputDurationSeconds", "inputDurationSeconds")):
            if report.get(src) is not None:
                cost[dst] = report[src]
        return cost

    async def watchdog(self, body, status, pods, logger) -> dict[str, Any]:
        """Progress has not moved for stall_timeout while the container *runs* -> delete the
        pod, the Job retries it. The clock starts when the container started (not when the pod
        was created: scheduling, image pulls and a scaling-up cluster are not a stall)."""
        active = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"
                  and not (p.get("metadata") or {}).get("deletionTimestamp")]
        if not active:
            return {}
        since = parse_time(status.get("progressAt")) or parse_time(status.get("startedAt"))
        started = [t for t in (container_started(p) for p in active) if t is not None]
        if not started:
            return {}  # Running but the container has not reported its start yet
        since = max([since, *started]) if since else max(started)
        stalled_for = (now() - since).total_seconds()
        if stalled_for < self.settings.stall_timeout_seconds:
            return {}
        ns = body["metadata"].get("namespace", "default")
        for p in active:
            await self.kube.delete(Kube.pods_path(ns, p["metadata"]["name"]), uid=p["metadata"].get("uid"))
        names = ", ".join(p["metadata"]["name"] for p in active)
        metrics.STALLS.inc(len(active))
        kopf.event(body, type="Warning", reason="Stalled",
                  message=f"no progress for {int(stalled_for)}s at {status.get('progress', 0)}%: deleted pod {names}; the Job retries it")
        logger.warning("watchdog deleted stalled pod(s) %s", names)
        return {"stalls": int(status.get("stalls") or 0) + len(active), "progressAt": iso(now()),
                "conditions": set_condition(status.get("conditions"), api.COND_STALLED, "True", "NoProgress",
                                            f"deleted {names} after {int(stalled_for)}s without progress")}

    def not_starting(self, body, status, job, pods) -> tuple[dict[str, Any], str | None]:
        """A pod that cannot start (unschedulable, image pull, missing Secret/ConfigMap) says so
        in the CR's message and events at once; after `start_timeout_seconds` without any
        container running, the transcode fails with that reason instead of waiting out the
        whole deadline. Returns (status patch, failure reason or None)."""
        if any(container_started(p) for p in pods) or status.get("containerStartedAt"):
            return ({} if status.get("containerStartedAt") else {"containerStartedAt": iso(now())}), None
        waiting = [(p, why) for p in pods if (why := pending_reason(p))]
        if not waiting:
            return {}, None
        pod, why = waiting[-1]
        created = parse_time((job.get("metadata") or {}).get("creationTimestamp")) or parse_time(status.get("startedAt"))
        waited = (now() - created).total_seconds() if created else 0.0
        message = f"pod {pod['metadata']['name']} cannot start: {why}"
        patch: dict[str, Any] = {}
        if message[:1024] != status.get("message"):
            patch["message"] = message[:1024]  # over this pass's "waiting for the transcoder to start"
        if message[:1024] != (body.get("status") or {}).get("message"):
            # once per reason: compared with what the CR says, not with this pass's own message
            kopf.event(body, type="Warning", reason="PodNotStarting", message=message[:1024])
        if waited >= self.settings.start_timeout_seconds:
            return patch, f"the transcode pod could not start in {int(waited)}s: {why}"
        return patch, None

    async def finish(self, body, status, final, cond, pods, report, logger) -> dict[str, Any]:
        last = pods[-1] if pods else None
        term = (termination(last) if last else None) or {}
        t_now = now()
        patch: dict[str, Any] = {"phase": final, "completedAt": iso(t_now)}
        started = parse_time(status.get("startedAt"))
        conds = status.get("conditions")
        reason = ""
        if final == "Succeeded":
            video_url = report.get("videoUrl") or term.get("videoUrl")
            try:
                video_url = self.trusted_url(body, video_url)
            except trust.Untrusted as exc:
                # Nothing the pod said is written: no videoUrl, no HLS, the Lecture goes FAILED.
                final = patch["phase"] = "Failed"
                reason = str(exc)
                cond = {"reason": "NoVideoUrl" if not video_url else "UntrustedReport"}
            else:
                patch.update(progress=100, videoUrl=video_url, message="ready")
                patch.update(self.hls_outputs(body, report, term))
                conds = set_condition(conds, api.COND_COMPLETE, "True", "JobComplete", "transcode complete")
                kopf.event(body, type="Normal", reason="Succeeded", message=f"transcode complete: {video_url}")
        if final == "Failed":
            if not reason:
                job_reason = cond.get("reason") or ""
                detail = term.get("reason") or cond.get("message") or job_reason or "the Job failed"
                if job_reason == "PodFailurePolicy" or term.get("exitCode") == jobs.EXIT_UNUSABLE_INPUT:
                    reason = f"unusable input: {detail}"
                elif job_reason == "DeadlineExceeded":
                    reason = f"took longer than the deadline ({cond.get('message') or 'activeDeadlineSeconds'})"
                elif job_reason == "BackoffLimitExceeded":
                    reason = f"failed after {status.get('attempts') or len(pods)} attempts: {detail}"
                else:
                    reason = detail
            # Built from what the pod wrote (ffmpeg's stderr, its termination message): it reaches
            # the Lecture, the notification and the BullMQ job, so one clean bounded line.
            reason = trust.user_text(reason, REASON_LIMIT)
            patch["message"] = reason
            conds = set_condition(conds, api.COND_FAILED, "True", cond.get("reason") or "JobFailed", reason)
            kopf.event(body, type="Warning", reason="Failed", message=f"transcode failed: {reason}")
        patch["conditions"] = set_condition(conds, api.COND_STALLED, "False", "Finished") if condition(
            {"conditions": conds}, api.COND_STALLED) else conds
        cost = dict(patch.get("cost") or status.get("cost") or {})
        if started:
            cost["wallSeconds"] = round((t_now - started).total_seconds(), 3)
            metrics.DURATION.labels(phase=final).observe((t_now - started).total_seconds())
        if cost:
            patch["cost"] = cost
            if final == "Succeeded" and cost.get("speed"):
                metrics.ENCODE_SPEED.observe(float(cost["speed"]))
            if cost.get("cpuSeconds"):
                metrics.CPU_SECONDS.inc(float(cost["cpuSeconds"]))
        metrics.FINISHED.labels(phase=final).inc()
        status = {**status, **patch}
        patch.update(await self.finalize(body, status, logger))
        return patch

    def outputs(self, body) -> tuple[str, str]:
        """The MP4's public id and the HLS folder the operator chose for this transcode (what
        its Job was told to write: jobs.output_target / jobs.hls_target)."""
        spec = body.get("spec") or {}
        target = jobs.output_target(self.settings, str(spec.get("lectureId") or ""), str(spec.get("rawVideoUrl") or ""))
        return target.split(":", 1)[1], jobs.hls_target(target).split(":", 1)[1]

    def trusted_url(self, body, url: Any, key: str = "videoUrl") -> str:
        """`url` if it is an https delivery URL of the configured cloud for exactly what this
        transcode was told to write (operator/trust.py), else trust.Untrusted with the reason."""
        public_id, hls_folder = self.outputs(body)
        cloud = self.settings.cloudinary_cloud_name
        loopback = self.settings.test_insecure_loopback
        if key == "hlsUrl":  # a raw resource keeps its name: <folder>/master.m3u8
            return trust.accept_video_url(url, cloud, f"{hls_folder}/master.m3u8", extensions=(),
                                          resource_type="raw", insecure_loopback=loopback)
        if key == "posterUrl":
            return trust.accept_video_url(url, cloud, f"{hls_folder}/poster", extensions=("jpg",),
                                          resource_type="image", insecure_loopback=loopback)
        return trust.accept_video_url(url, cloud, public_id, insecure_loopback=loopback)

    def hls_outputs(self, body, report, term) -> dict[str, str]:
        """hlsUrl/posterUrl for the status. HLS is additive: a missing or refused URL (not https,
        or not this transcode's upload in the configured cloud) leaves the MP4 result as it is
        and says so in a Warning event; a refused URL is never written."""
        urls, refused = hls_result(report, term)
        for key, value in list(urls.items()):
            try:
                self.trusted_url(body, value, key)
            except trust.Untrusted as exc:
                del urls[key]
                refused.append(f"{key}: {exc}".replace("video URL", "URL"))
        for why in refused:
            kopf.event(body, type="Warning", reason="HlsRefused",
                       message=trust.user_text(f"not written to the status: {why}", REASON_LIMIT))
        try:
            wanted = api.VideoTranscodeSpec.model_validate(body.get("spec") or {}).wants_hls(self.settings.hls_default)
        except ValueError:
            wanted = False
        if wanted and "hlsUrl" not in urls:
            kopf.event(body, type="Warning", reason="HlsMissing",
                       message="HLS was asked for but the transcoder reported no usable hlsUrl; the MP4 alone is ready")
        return urls

    # -- final phase: Lecture + the one final notification --------------------------------

    async def finalize(self, body, status, logger) -> dict[str, Any]:
        status = dict(status)
        phase = status.get("phase")
        target = READY if phase == "Succeeded" else FAILED
        patch = await self.sync_lecture(body, status, target, logger)
        status.update(patch)
        lecture = status.get("lecture") or {}
        notified = status.get("notified") or {}
        if not notified.get("final"):
            if lecture.get("superseded"):
                # A newer upload owns the Lecture: telling the user this old one is
                # ready/failed would be wrong. Nothing is sent.
                patch["notified"] = {**notified, "final": "skipped"}
            elif lecture.get("applied") == target:
                patch.update(await self.notify_once(body, status, notify.READY if target == READY else notify.FAILED, logger))
        return patch

    async def sync_lecture(self, body, status, target: str, logger, reason: str | None = None,
                           direct: bool = False) -> dict[str, Any]:
        """Bring the Lecture to `target` (guarded); returns the status patch recording it."""
        lecture: dict[str, Any] = dict(status.get("lecture") or {})
        if lecture.get("superseded") or lecture.get("applied") == target:
            return {}
        due = parse_time(lecture.get("nextAttemptAt"))
        if due and now() < due and lecture.get("pending") == target:
            return {}
        spec = body.get("spec") or {}
        lid, raw = spec.get("lectureId"), spec.get("rawVideoUrl")
        conds = status.get("conditions")
        steps = [target]
        if target != PROCESSING and lecture.get("applied") != PROCESSING and not direct:
            steps = [PROCESSING, target]  # only PROCESSING -> READY|FAILED is allowed
        try:
            for step in steps:
                outcome = await self.lectures.transition(
                    lid, raw, step, video_url=status.get("videoUrl") if step == READY else None,
                    hls_url=status.get("hlsUrl") if step == READY else None,
                    poster_url=status.get("posterUrl") if step == READY else None,
                    reason=(reason or status.get("message")) if step == FAILED else None)
                if outcome is Outcome.SUPERSEDED:
                    kopf.event(body, type="Warning", reason="LectureSuperseded",
                              message=f"Lecture {lid} no longer has this rawVideoUrl (or is not in a state that allows {step}); left untouched")
                    lecture.update(superseded=True, pending=None, nextAttemptAt=None, lastError=None)
                    return {"lecture": lecture, "conditions": set_condition(
                        conds, api.COND_LECTURE_SYNCED, "False", "Superseded",
                        "the Lecture has a newer upload or is not in an allowed state; not written")}
                lecture["applied"] = step
        except LectureUnavailable as exc:
            metrics.LECTURE_WRITE_ERRORS.inc()
            attempts = int(lecture.get("attempts") or 0) + 1
            delay = min(self.settings.lecture_retry_max_seconds,
                        self.settings.lecture_retry_initial_seconds * 2 ** min(attempts - 1, 16))
            if attempts == 1:
                kopf.event(body, type="Warning", reason="LectureUnavailable",
                          message=f"cannot write Lecture {lid} ({target}): MongoDB unreachable; retrying")
            logger.warning("Lecture %s -> %s pending (attempt %d): %s", lid, target, attempts, exc)
            lecture.update(pending=target, attempts=attempts, lastError=str(exc)[:1024],
                           nextAttemptAt=iso(now() + timedelta(seconds=delay)))
            return {"lecture": lecture, "conditions": set_condition(
                conds, api.COND_LECTURE_SYNCED, "False", "MongoUnavailable", f"{target} pending: {str(exc)[:300]}")}
        was_pending = lecture.get("pending")
        lecture.update(pending=None, attempts=0, lastError=None, nextAttemptAt=None)
        kopf.event(body, type="Normal", reason="LectureUpdated",
                  message=f"Lecture {lid} -> {target}" + (" (after MongoDB came back)" if was_pending else ""))
        return {"lecture": lecture, "conditions": set_condition(conds, api.COND_LECTURE_SYNCED, "True", "Written",
                                                                f"Lecture is {target}")}

    def _payload(self, body, status, kind: str) -> dict[str, Any]:
        spec = body.get("spec") or {}
        return notify.message(kind, user_id=spec.get("instructorId"), lecture_id=spec.get("lectureId"),
                              video_url=status.get("videoUrl") if kind == notify.READY else None,
                              hls_url=status.get("hlsUrl") if kind == notify.READY else None,
                              poster_url=status.get("posterUrl") if kind == notify.READY else None,
                              progress=100 if kind == notify.READY else (0 if kind == notify.PROCESSING else status.get("progress")),
                              reason=status.get("message"))

    async def notify_once(self, body, status, kind: str, logger) -> dict[str, Any]:
        meta = body["metadata"]
        identity = meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}/{meta.get('creationTimestamp')}"
        final = kind in (notify.READY, notify.FAILED)
        marker = f"{identity}:{'final' if final else kind}"
        try:
            sent = await self.notifier.publish_once(marker, self._payload(body, status, kind), to_stream=final)
        except notify.NotifyUnavailable as exc:
            logger.warning("notification %s not sent yet (Redis unavailable): %s", kind, exc)
            return {}
        if sent:
            metrics.NOTIFICATIONS.labels(type=kind).inc()
            if final:
                kopf.event(body, type="Normal", reason="Notified", message=f"final notification sent: {kind}")
        notified = dict(status.get("notified") or {})
        if final:
            notified["final"] = kind
        else:
            notified["processing"] = True
        return {"notified": notified}

    async def notify_progress(self, body, status, memo, logger) -> None:
        """Progress notifications: on change, at most one per progress_notify_interval."""
        progress = status.get("progress")
        if not isinstance(progress, int) or progress in (0, 100):
            return
        if not (status.get("notified") or {}).get("processing"):
            return  # "processing" goes first (and never for a Lecture a newer upload owns)
        last_value = getattr(memo, "last_progress", None)
        last_time = getattr(memo, "last_progress_time", 0.0)
        t = now().timestamp()
        if progress == last_value:
            return
        wait = self.settings.progress_notify_interval_seconds - (t - last_time)
        if wait > 0:
            # Throttled, not dropped: the newest value goes out when the interval is over
            # (a report that arrives within it would otherwise never be notified).
            wake = getattr(memo, "wake", None)
            if wake is not None:
                wake(wait)
            return
        # Claimed before the await: the progress event handler and the timer can both get here
        # for the same CR, and only one of them may publish this value.
        memo.last_progress, memo.last_progress_time = progress, t
        try:
            await self.notifier.publish(self._payload(body, status, notify.PROGRESS))
        except notify.NotifyUnavailable as exc:
            logger.debug("progress notification dropped: %s", exc)
            memo.last_progress, memo.last_progress_time = last_value, last_time
            return
        metrics.NOTIFICATIONS.labels(type=notify.PROGRESS).inc()

    # -- deletion -------------------------------------------------------------------------

    async def cancel(self, body, logger) -> None:
        """A CR deleted before it finished: stop its Job now; a Lecture this transcode moved
        to PROCESSING becomes FAILED "transcode cancelled" (raw URL kept as the fallback)."""
        meta, status = body["metadata"], dict(body.get("status") or {})
        if status.get("phase") in api.FINAL_PHASES:
            return  # its Job has finished: the garbage collector removes it with the CR (ownerReferences)
        ns = meta.get("namespace", "default")
        job_name = status.get("jobName") or jobs.job_name(meta["name"], meta.get("uid"))
        try:
            if await self.kube.delete(Kube.jobs_path(ns, job_name), propagation="Background"):
                kopf.event(body, type="Normal", reason="Cancelled", message=f"Job {job_name} deleted with its pods")
        except KubeError as exc:
            logger.warning("could not delete Job %s: %s", job_name, exc)
        lecture = status.get("lecture") or {}
        if status.get("phase") != "Running" or lecture.get("superseded"):
            return  # queued: never touched the Lecture, leave it as it was
        # Running: the Lecture is PROCESSING for this upload (or about to be). The guard
        # (PROCESSING + same rawVideoUrl) makes this a no-op for anything else.
        status["message"] = "transcode cancelled"
        patch = await self.sync_lecture(body, status, FAILED, logger, reason="transcode cancelled", direct=True)
        if (patch.get("lecture") or {}).get("pending"):
            raise kopf.TemporaryError("MongoDB unavailable; Lecture not yet marked FAILED", delay=self.settings.lecture_retry_initial_seconds)
        status.update(patch)
        if (status.get("lecture") or {}).get("applied") == FAILED and not (status.get("notified") or {}).get("final"):
            await self.notify_once(body, status, notify.FAILED, logger)
