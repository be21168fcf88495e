"""Operator and intake settings, read once from the environment (`LECTERN_*`).

The Helm chart sets exactly these variables; secrets (Mongo URI, Redis URL with a password,
Cloudinary credentials) arrive through `valueFrom.secretKeyRef`, never as plain values, and are
typed `SecretStr` so they cannot end up in a log line or a repr."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lectern_transcoder.urlpolicy import parse_insecure_loopback


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LECTERN_", extra="ignore")

    # Where the platform's data lives.
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017/?directConnection=true")
    mongo_db: str = "lectern"
    mongo_collection: str = "lectures"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    notifications_channel: str = "notifications"
    notifications_stream: str = "notifications:stream"
    notifications_stream_maxlen: int = 10_000

    # What the operator watches and how much it runs at once.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    max_concurrent: Annotated[int, Field(ge=1)] = 4
    stall_timeout_seconds: Annotated[float, Field(gt=0)] = 600
    # A transcode whose pod cannot start (unschedulable, image pull, missing Secret) this long
    # fails with the reason, instead of holding a slot until the Job's deadline.
    start_timeout_seconds: Annotated[float, Field(gt=0)] = 600
    # A transcode is reconciled at once when its Job, a pod or its report changes (watches);
    # this is the slow safety resync on top (level-triggered repair of a missed event, the
    # stall and start-timeout clocks). It reads the watch cache, not the API server.
    # `admit_interval_seconds`: how often queued ones re-check for a free slot.
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 10.0
    admit_interval_seconds: Annotated[float, Field(gt=0)] = 10.0
    progress_notify_interval_seconds: Annotated[float, Field(ge=0)] = 1.0
    # Lecture writes: pymongo timeouts, and the backoff of a pending write while Mongo is down.
    mongo_timeout_ms: Annotated[int, Field(ge=50)] = 3000
    lecture_retry_initial_seconds: Annotated[float, Field(gt=0)] = 2.0
    lecture_retry_max_seconds: Annotated[float, Field(gt=0)] = 60.0
    # A finished VideoTranscode (Lecture written, final notification sent) is deleted this long
    # after it finished, with its Job and pods (ownerReferences); checked every
    # `retention_check_seconds` (default: a quarter of the retention, at most an hour).
    retention_seconds: Annotated[float, Field(gt=0)] = 7 * 24 * 3600
    retention_check_seconds: Annotated[float | None, Field(gt=0)] = None
    # The Redis key that makes the final notification exactly-once lives this long.
    notified_key_ttl_seconds: Annotated[int, Field(ge=60)] = 30 * 24 * 3600

    # The Kubernetes API server and credentials: in-cluster, else $KUBECONFIG (lectern_operator.kube).
    # kopf peering: two replicas never both act. `standalone` turns it off (tests, one replica).
    peering_name: str = "lectern"
    standalone: bool = False
    # kopf pauses *every* peer when two share a priority: unset = a random one per process, so
    # of two replicas exactly one acts (the other takes over when its peer's lease expires).
    peering_priority: int | None = None
    watch_timeout_seconds: Annotated[int, Field(ge=1)] = 300

    # The transcoder Job.
    transcoder_image: str = "ghcr.io/lectern/transcoder:0.1.0"
    transcoder_image_pull_policy: str = "IfNotPresent"
    transcoder_service_account: str = "lectern-transcoder"
    transcoder_cpu_request: str = "1"
    transcoder_cpu_limit: str = "2"
    transcoder_max_cpu: str = "4"
    transcoder_memory_request: str = "512Mi"
    transcoder_memory_limit: str = "2Gi"
    transcoder_max_memory: str = "8Gi"
    transcoder_min_cpu: str = "250m"
    transcoder_min_memory: str = "256Mi"
    transcoder_run_as_user: int = 65532
    # The pod reports progress on its CR's status (chart transcode.reportProgress); off, it gets
    # no ServiceAccount token and no --report-cr (it has no API permission then anyway).
    transcoder_report_progress: bool = True
    transcoder_scratch_size: str = "20Gi"       # the emptyDir's sizeLimit
    transcoder_scratch_request: str = "2Gi"     # its ephemeral-storage request (what the scheduler reserves)
    transcoder_active_deadline_seconds: int = 3600
    transcoder_backoff_limit: int = 3
    transcoder_ttl_seconds_after_finished: int = 3600
    transcoder_node_selector: dict[str, str] = Field(default_factory=dict)  # JSON in the env
    transcoder_tolerations: list[dict] = Field(default_factory=list)  # JSON in the env
    transcoder_affinity: dict = Field(default_factory=dict)  # JSON in the env
    transcoder_priority_class_name: str | None = None
    transcoder_image_pull_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cloudinary_secret_name: str = "lectern-cloudinary"
    cloudinary_secret_key: str = "CLOUDINARY_URL"
    cloudinary_folder: str = "lectern/lectures"
    # The Cloudinary cloud the results live in: a reported videoUrl (and hlsUrl/posterUrl) is
    # believed only if it is an https delivery URL of this cloud under the public id the operator
    # chose (operator/trust.py). Empty: every finished transcode fails with that reason.
    cloudinary_cloud_name: str = ""
    # The HLS ladder (1080p/720p/480p + poster) beside the MP4 for a VideoTranscode whose
    # spec.outputs is absent; a CR that lists outputs gets exactly those (chart: transcode.hls.enabled).
    hls_default: bool = True
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["res.cloudinary.com"])
    max_download_bytes: int = 8 * 1024**3

    # The intake (BullMQ worker).
    queue_name: str = "video-queue"
    queue_prefix: str = "bull"
    intake_concurrency: Annotated[int, Field(ge=1)] = 500
    # Where the intake creates VideoTranscodes (default: the first of `namespaces`).
    intake_namespace: str | None = None
    # BullMQ worker: the lock is renewed every lock/2 while a transcode runs (the processor never
    # blocks), so a long lock only delays redelivery after a crash; it also rides out Redis
    # outages shorter than itself. A stall (intake killed mid-job) does not use an attempt, but
    # more than `max_stalled_count` of them fail the job.
    intake_lock_duration_ms: Annotated[int, Field(ge=1000)] = 120_000
    intake_stalled_interval_ms: Annotated[int, Field(ge=500)] = 30_000
    intake_max_stalled_count: Annotated[int, Field(ge=1)] = 20
    # While the shared CR watch is down, a waiting job re-reads its CR directly this often (and
    # every 10x this regardless, as a safety net).
    intake_resync_seconds: Annotated[float, Field(gt=0)] = 30.0
    # How long creating a CR retries an unreachable/erroring API server before the attempt fails.
    intake_kube_retry_seconds: Annotated[float, Field(ge=0)] = 300.0
    # On SIGTERM: time for in-flight jobs to be handed back to the queue before a forced close.
    intake_shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 20.0

    # Observability.
    metrics_port: int = 9090
    health_port: int = 8080
    log_level: str = "INFO"
    log_format: str = "json"

    # LECTERN_TEST_INSECURE_LOOPBACK, the tests' escape for the local Cloudinary emulator (the
    # same variable the transcoder and the intake read, in the test images only; never in the chart).
    test_insecure_loopback: Annotated[frozenset[tuple[str, int]], NoDecode] = frozenset()

    def retention_check_interval(self) -> float:
        if self.retention_check_seconds:
            return self.retention_check_seconds
        return max(1.0, min(3600.0, self.retention_seconds / 4))

    _split_csv = field_validator("namespaces", "allowed_hosts", "transcoder_image_pull_secrets", mode="before")(_csv)

    @field_validator("test_insecure_loopback", mode="before")
    @classmethod
    def _loopback(cls, value: object) -> object:
        return parse_insecure_loopback(value) if isinstance(value, str) else value
