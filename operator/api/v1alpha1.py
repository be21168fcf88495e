"""The `VideoTranscode` API, version v1alpha1: the one place its shape is defined.

The CRD in `crds/` is generated from these models (`lectern-crds`), so the schema the API
server enforces and the one the operator and intake validate against cannot drift apart.
Field names are camelCase on the wire, as in every Kubernetes API.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "media.lectern.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VideoTranscode"
PLURAL = "videotranscodes"
SINGULAR = "videotranscode"
SHORT_NAMES = ["vt"]
CATEGORIES = ["lectern"]

# A Lecture id is a MongoDB ObjectId in hex or a plain string id; either way it ends up in
# object names, labels and Cloudinary public ids, so it is kept to a label-safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
# https only, a host, no whitespace; which hosts are allowed is a deployment setting that
# the intake and the transcoder enforce (the API server cannot know it).
HTTPS_URL_PATTERN = r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s]*)?$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"

Phase = Literal["Queued", "Running", "Succeeded", "Failed"]
PHASES: tuple[str, ...] = ("Queued", "Running", "Succeeded", "Failed")
FINAL_PHASES: tuple[str, ...] = ("Succeeded", "Failed")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


OutputType = Literal["mp4", "hls"]


class OutputSpec(_Model):
    """One rendition to produce: `mp4` (the 720p MP4, always produced) or `hls` (the adaptive
    ladder 1080p/720p/480p as the source allows, a master playlist and a poster JPEG).
    Thumbnails or other renditions are new `type` values later, not a breaking change."""

    type: OutputType = "mp4"
    max_height: Annotated[int, Field(ge=144, le=720)] = Field(
        720, description="Largest short side of the MP4 in pixels (720 means fit within 1280x720 / 720x1280). "
                         "mp4 only: the HLS ladder's rungs follow the source."
    )


class ResourceOverrides(_Model):
    """Per-transcode overrides of the chart's defaults, clamped by the operator to its bounds."""

    cpu: Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=16)] | None = None
    memory: Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=16)] | None = None


class VideoTranscodeSpec(_Model):
    lecture_id: Annotated[str, Field(pattern=ID_PATTERN)] = Field(
        description="The Lecture document's _id (ObjectId hex or plain string id)."
    )
    instructor_id: Annotated[str, Field(pattern=ID_PATTERN)] = Field(
        description="Who gets the notifications (userId on the `notifications` channel)."
    )
    raw_video_url: Annotated[str, Field(pattern=HTTPS_URL_PATTERN, max_length=2048)] = Field(
        description="The raw upload, https on an allowed media host."
    )
    priority: Annotated[int, Field(ge=-1000, le=1000)] = Field(
        0, description="Higher runs first when transcodes wait for a slot; ties are first come, first served."
    )
    outputs: Annotated[list[OutputSpec], Field(min_length=1, max_length=8)] | None = Field(
        None, description="Renditions to produce. The MP4 is always produced. Absent: the MP4 and the HLS ladder "
                          "if the operator's default says so (chart value transcode.hls.enabled); present: exactly "
                          "what it lists, so [{type: mp4}] means the MP4 alone and [{type: hls}] adds the ladder."
    )
    resources: ResourceOverrides | None = None
    active_deadline_seconds: Annotated[int, Field(ge=60, le=86400)] | None = Field(
        None, description="Overrides the chart's deadline for this transcode's Job."
    )

    def mp4_max_height(self) -> int:
        """The MP4's largest short side: the smallest `maxHeight` of the mp4 outputs (720 if none is listed)."""
        return min((o.max_height for o in self.outputs or () if o.type == "mp4"), default=720)

    def wants_hls(self, default: bool) -> bool:
        """Whether to produce the HLS ladder: `default` (the chart's) when `outputs` is absent,
        else whether `outputs` lists an hls entry (listing only mp4 is the explicit opt-out)."""
        if self.outputs is None:
            return default
        return any(o.type == "hls" for o in self.outputs)


class TranscoderReport(_Model):
    """What the transcoder pod patches into `status.report` while it runs.

    The transcoder writes only this sub-object (a JSON merge patch on the status subresource),
    the operator writes everything else; the two never contend for a field."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    stage: Literal["downloading", "probing", "encoding", "uploading", "done", "failed"] | None = None
    progress: Annotated[int, Field(ge=0, le=100)] = 0
    pod: str | None = None
    input_duration_seconds: Annotated[float, Field(ge=0)] | None = None
    bytes_downloaded: Annotated[int, Field(ge=0)] = 0
    bytes_uploaded: Annotated[int, Field(ge=0)] = 0
    cpu_seconds: Annotated[float, Field(ge=0)] = 0.0
    speed: Annotated[float, Field(ge=0)] | None = Field(None, description="Encode speed, x realtime.")
    video_url: str | None = None
    hls_url: str | None = Field(None, description="The HLS master playlist's secure URL (with --hls).")
    poster_url: str | None = Field(None, description="The poster JPEG's secure URL (with --hls).")
    updated_at: datetime | None = None


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None


class Cost(_Model):
    """What the transcode cost, copied from the transcoder's last report (sizing figures)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    cpu_seconds: Annotated[float, Field(ge=0)] | None = None
    bytes_downloaded: Annotated[int, Field(ge=0)] | None = None
    bytes_uploaded: Annotated[int, Field(ge=0)] | None = None
    speed: Annotated[float, Field(ge=0)] | None = Field(None, description="Encode speed, x realtime.")
    input_duration_seconds: Annotated[float, Field(ge=0)] | None = None
    wall_seconds: Annotated[float, Field(ge=0)] | None = Field(None, description="Running to finished.")


LectureState = Literal["PROCESSING", "READY", "FAILED"]


class LectureSync(_Model):
    """The operator's writes to the Lecture document: what was applied, what is still pending.

    A write that cannot reach MongoDB stays `pending` here and is retried by a timer, so an
    operator restart loses nothing."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    applied: LectureState | None = Field(None, description="Last state written to the Lecture.")
    pending: LectureState | None = Field(None, description="State still to be written.")
    reason: Annotated[str, Field(max_length=1024)] | None = None
    superseded: bool = Field(False, description="The Lecture has a newer upload; never written again.")
    attempts: Annotated[int, Field(ge=0)] = 0
    last_error: Annotated[str, Field(max_length=1024)] | None = None
    next_attempt_at: datetime | None = None


class Notified(_Model):
    """Which notifications went out (the final one exactly once, also across restarts)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    processing: bool = False
    final: Literal["ready", "failed", "skipped"] | None = Field(
        None, description="The final notification sent (`skipped`: the Lecture had a newer upload).")
    progress: Annotated[int, Field(ge=0, le=100)] | None = None


class VideoTranscodeStatus(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase | None = None
    progress: Annotated[int, Field(ge=0, le=100)] = 0
    attempts: Annotated[int, Field(ge=0)] = 0
    job_name: str | None = None
    video_url: str | None = None
    hls_url: str | None = Field(None, description="The HLS ladder's master playlist (https), when HLS was produced.")
    poster_url: str | None = Field(None, description="The poster JPEG (https), produced with the HLS ladder.")
    message: str | None = None
    observed_generation: int | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress_at: datetime | None = Field(None, description="When progress last moved (watchdog).")
    container_started_at: datetime | None = Field(
        None, description="When a transcoder container first ran (before it: the start timeout applies).")
    stalls: Annotated[int, Field(ge=0)] = Field(0, description="Pods the watchdog deleted.")
    conditions: list[Condition] = Field(default_factory=list)
    cost: Cost | None = None
    lecture: LectureSync | None = None
    notified: Notified | None = None
    report: TranscoderReport | None = None


class VideoTranscode(_Model):
    """The whole object, for code that reads one (the intake, tests)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["media.lectern.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["VideoTranscode"] = KIND  # type: ignore[assignment]
    metadata: dict = Field(default_factory=dict)
    spec: VideoTranscodeSpec
    status: VideoTranscodeStatus | None = None


# Condition types the operator sets.
COND_ADMITTED = "Admitted"        # True once it left the queue and has a Job
COND_COMPLETE = "Complete"        # True on success
COND_FAILED = "Failed"            # True on final failure
COND_LECTURE_SYNCED = "LectureSynced"  # False while a Lecture write is pending (Mongo down) or superseded
COND_STALLED = "Stalled"          # True right after the watchdog restarted a stuck pod

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(value: str) -> str:
    """`value` itself when it is a valid label value, else a stable digest (`h-<sha256 prefix>`)
    so that selectors on the label still work for any id: a CR name may be 253 characters and
    a lectureId may end in `-` or `_`, neither of which a label value admits."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]


LABEL_TRANSCODE = f"{GROUP}/transcode"
LABEL_LECTURE_ID = f"{GROUP}/lecture-id"
LABEL_QUEUE_JOB_ID = f"{GROUP}/queue-job-id"
