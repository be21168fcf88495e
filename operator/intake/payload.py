"""The BullMQ job data the platform API enqueues on `video-queue`, validated before anything
touches the cluster.

    queue.add('transcode', { lectureId, rawVideoUrl, instructorId })

Types are strict (a number is not a lecture id), the ids use the same alphabet as the CRD, and
`rawVideoUrl` must be an https URL on an allowed media host: no credentials in it, and never an
IP literal in a private, loopback, link-local or otherwise non-public range (server-side
request forgery). The rules are the transcoder's (`transcoder/urlpolicy.py`, shared), so a URL the intake
accepts is one the transcoder will fetch (it also checks what the name resolves to). Every rejection names the field, because the reason ends up in the BullMQ
job's `failedReason`, which is what the platform shows to whoever looks at a failed upload.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from lectern_operator.api.v1alpha1 import HTTPS_URL_PATTERN, ID_PATTERN
from lectern_transcoder.urlpolicy import MAX_URL_LENGTH, UrlRefused, host_allowed, parse_media_url  # noqa: F401

FIELDS = ("lectureId", "rawVideoUrl", "instructorId")


class InvalidPayload(ValueError):
    """The job's data cannot become a transcode; `str()` is the human-readable reason."""


class JobPayload(BaseModel):
    """`{lectureId, rawVideoUrl, instructorId}`; other keys the API may add are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    lecture_id: Annotated[str, Field(alias="lectureId", pattern=ID_PATTERN)]
    raw_video_url: Annotated[str, Field(alias="rawVideoUrl")]
    instructor_id: Annotated[str, Field(alias="instructorId", pattern=ID_PATTERN)]

    @field_validator("raw_video_url")
    @classmethod
    def _media_url(cls, value: str, info: ValidationInfo) -> str:
        context = info.context or {}
        allowed = context.get("allowed_hosts")
        if allowed is None:
            raise ValueError("no allowed media hosts configured")
        return check_media_url(value, allowed, context.get("insecure_loopback") or frozenset())


def check_media_url(url: str, allowed_hosts: Iterable[str],
                    insecure_loopback: frozenset[tuple[str, int]] = frozenset()) -> str:
    """Return `url` if the transcoder may fetch it, else raise ValueError saying why: the
    transcoder's own parser and rules (urlpolicy.parse_media_url), then the CRD's pattern."""
    try:
        parsed = parse_media_url(url, list(allowed_hosts), insecure_loopback)
    except UrlRefused as exc:
        raise ValueError(str(exc)) from None
    if not parsed.insecure and not re.fullmatch(HTTPS_URL_PATTERN, url):
        raise ValueError("is not a plain https URL (letters, digits, dots and dashes in the host; no whitespace)")
    return url


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def _describe(error: dict, data: dict) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ())) or "data"
    kind = error.get("type", "")
    if kind == "missing":
        return f"{loc}: required field is missing"
    value = data.get(loc) if isinstance(data, dict) else None
    if kind in ("string_type", "str_type"):
        return f"{loc}: must be a string (got {_type_name(value)})"
    if kind == "string_pattern_mismatch":
        return f"{loc}: must be 1-63 letters, digits, '_' or '-' starting with a letter or digit (got {value!r:.80})"
    msg = error.get("msg", "invalid")
    msg = msg.removeprefix("Value error, ")
    return f"{loc}: {msg}"


def parse_payload(data: Any, allowed_hosts: Iterable[str],
                  insecure_loopback: frozenset[tuple[str, int]] = frozenset()) -> JobPayload:
    """Validate the job data; raise `InvalidPayload` with a reason naming every bad field."""
    if not isinstance(data, dict):
        raise InvalidPayload(
            f"invalid job data: expected an object {{{', '.join(FIELDS)}}}, got {_type_name(data)}")
    try:
        return JobPayload.model_validate(data, context={"allowed_hosts": list(allowed_hosts),
                                                        "insecure_loopback": insecure_loopback})
    except ValidationError as exc:
        reasons = [_describe(e, data) for e in exc.errors(include_url=False)]
        raise InvalidPayload("invalid job data: " + "; ".join(reasons)) from None
