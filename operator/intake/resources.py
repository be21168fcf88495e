"""The `VideoTranscode` the intake makes for one BullMQ job: its name, labels and body.

The name is a pure function of the job, so a redelivered job (intake restarted, stalled job,
BullMQ retry) computes the same name and adopts the CR instead of making a second one:

    vt-<lecture>-<job id>-<hash>

`<lecture>` and `<job id>` are readable slugs (lower case, truncated); `<hash>` is a digest of
the exact queue (`prefix:name`), job id, job creation timestamp and lecture id, so ids that
slug to the same text, or a job id reused after the queue's keys were wiped, never collide.
Names stay at most 52 characters: a valid DNS-1123 label with room for the suffixes that
Jobs and pods derived from the CR add.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from lectern_operator.api.v1alpha1 import API_VERSION, GROUP, KIND, VideoTranscodeSpec, label_value

from .payload import JobPayload

LABEL_LECTURE = f"{GROUP}/lecture-id"
LABEL_JOB = f"{GROUP}/queue-job-id"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "lectern-intake"

ANN_QUEUE = f"{GROUP}/queue"  # "<prefix>:<queue name>", e.g. "bull:video-queue"
ANN_JOB_ID = f"{GROUP}/queue-job-id"  # the exact BullMQ job id (the label may be a digest)
ANN_JOB_TIMESTAMP = f"{GROUP}/queue-job-timestamp"  # job creation time, ms since the epoch
ANN_LECTURE_ID = f"{GROUP}/lecture-id"
ANN_SUPERSEDED_BY = f"{GROUP}/superseded-by"  # set on a CR just before a newer upload deletes it

MAX_NAME = 52


def _digest(*parts: str, size: int = 10) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def _slug(text: str, size: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:size].strip("-")
    return slug or "x"


def queue_key(prefix: str, queue_name: str) -> str:
    return f"{prefix}:{queue_name}"


def cr_name(lecture_id: str, job_id: str, job_timestamp: int | str, queue: str) -> str:
    name = "-".join([
        "vt",
        _slug(lecture_id, 24),
        _slug(str(job_id), 12),
        _digest(queue, str(job_id), str(job_timestamp), lecture_id),
    ])
    assert len(name) <= MAX_NAME, name
    return name


def cr_body(payload: JobPayload, *, name: str, namespace: str, job_id: str,
            job_timestamp: int | str, queue: str) -> dict[str, Any]:
    spec = VideoTranscodeSpec(
        lecture_id=payload.lecture_id,
        instructor_id=payload.instructor_id,
        raw_video_url=payload.raw_video_url,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                LABEL_LECTURE: label_value(payload.lecture_id),
                LABEL_JOB: label_value(str(job_id)),
                LABEL_MANAGED_BY: MANAGED_BY,
            },
            "annotations": {
                ANN_QUEUE: queue,
                ANN_JOB_ID: str(job_id),
                ANN_JOB_TIMESTAMP: str(job_timestamp),
                ANN_LECTURE_ID: payload.lecture_id,
            },
        },
        "spec": spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


def belongs_to(obj: dict[str, Any], payload: JobPayload, job_id: str, queue: str) -> bool:
    """Whether an existing CR of our name was made for this very job (adoptable)."""
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    spec = obj.get("spec") or {}
    return (ann.get(ANN_JOB_ID) == str(job_id) and ann.get(ANN_QUEUE, queue) == queue
            and spec.get("lectureId") == payload.lecture_id and spec.get("rawVideoUrl") == payload.raw_video_url)


def job_result(lecture_id: str, status: dict[str, Any]) -> dict[str, str] | None:
    """The BullMQ job's completed result for a Succeeded CR: `{lectureId, videoUrl}` (the
    contract), plus `hlsUrl` and `posterUrl` when the transcode made an HLS ladder (issue 15;
    absent, not null, otherwise). None while the status has no videoUrl yet."""
    video_url = status.get("videoUrl")
    if not video_url:
        return None
    result = {"lectureId": lecture_id, "videoUrl": video_url}
    result.update({k: status[k] for k in ("hlsUrl", "posterUrl") if status.get(k)})
    return result


def upload_order(obj: dict[str, Any]) -> tuple[int, int]:
    """Sort key of the upload a CR was made for: job creation time (when the API enqueued
    the upload), then the numeric job id (BullMQ's counter). Larger is newer."""
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    try:
        ts = int(ann.get(ANN_JOB_TIMESTAMP, ""))
    except ValueError:
        ts = 0
    job_id = ann.get(ANN_JOB_ID, "")
    return ts, int(job_id) if job_id.isdigit() else -1


def job_order(job_timestamp: int | str, job_id: str) -> tuple[int, int]:
    try:
        ts = int(job_timestamp)
    except (TypeError, ValueError):
        ts = 0
    return ts, int(job_id) if str(job_id).isdigit() else -1
