"""Operator and intake settings, read once from the environment (`LECTERN_*`).

The Helm chart sets exactly these variables; secrets (Mongo URI, Redis URL with a password,
Cloudinary credentials) arrive through `valueFrom.secretKeyRef`, never as plain values, and are
typed `SecretStr` so they cannot end up in a log line or a repr."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    stall_timeout_seconds: Annotated[int, Field(ge=30)] = 600

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
    transcoder_scratch_size: str = "20Gi"
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
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["res.cloudinary.com"])
    max_download_bytes: int = 8 * 1024**3

    # The intake (BullMQ worker).
    queue_name: str = "video-queue"
    queue_prefix: str = "bull"
    intake_concurrency: Annotated[int, Field(ge=1)] = 500

    # Observability.
    metrics_port: int = 9090
    health_port: int = 8080
    log_level: str = "INFO"
    log_format: str = "json"

    _split_csv = field_validator("namespaces", "allowed_hosts", "transcoder_image_pull_secrets", mode="before")(_csv)
