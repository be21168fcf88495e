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

import ipaddress
import re
import socket
from typing import Annotated, Any, Iterable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from lectern_operator.api.v1alpha1 import HTTPS_URL_PATTERN, ID_PATTERN
from lectern_transcoder.urlpolicy import host_allowed, is_public

MAX_URL_LENGTH = 2048
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


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if `host` is an IP literal, including the legacy IPv4 spellings
    (`2130706433`, `0x7f.1`, `0177.0.0.1`) that resolvers and some HTTP stacks accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host) and re.search(r"[0-9]", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def check_media_url(url: str, allowed_hosts: Iterable[str],
                    insecure_loopback: frozenset[tuple[str, int]] = frozenset()) -> str:
    """Return `url` if the transcoder may fetch it, else raise ValueError saying why."""
    allowed_hosts = list(allowed_hosts)
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"longer than {MAX_URL_LENGTH} characters")
    if url != url.strip() or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError("contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@)")
    if "\\" in url:
        raise ValueError("must not contain backslashes")
    host = _normalise_host(parts.hostname or "")
    address = _ip_literal(host) if host else None
    if (address is not None and insecure_loopback and scheme in ("http", "https")
            and (str(address), port or (443 if scheme == "https" else 80)) in insecure_loopback):
        return url  # test-only: the local Cloudinary emulator
    if scheme != "https":
        raise ValueError(f"must be an https:// URL (got scheme {parts.scheme or 'none'!r})")
    if not host:
        raise ValueError("has no host")
    if address is not None and not is_public(address):
        raise ValueError(f"points to a non-public address ({address}: private, loopback, link-local or reserved)")
    if not host_allowed(host, port, allowed_hosts):
        raise ValueError(f"host {host!r} is not an allowed media host (allowed: {', '.join(allowed_hosts) or 'none'})")
    if not re.fullmatch(HTTPS_URL_PATTERN, url):
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
