"""Upload the result to Cloudinary with the real SDK, configured from `CLOUDINARY_URL`.

`upload_large` sends the file in chunks (plain `upload` reads it all into memory), with an
explicit timeout per request so a stalled CDN cannot hang the pod until its deadline. The
public id is the one the operator derived (`<folder>/<lectureId>/<sha256(rawVideoUrl)[:12]>`),
and `overwrite=True`: a retried Job replaces its own earlier upload instead of creating a
duplicate, and a newer raw upload has a different id, so neither overwrites the other.
Transient failures (connection errors, 5xx, rate limits) are retried here with backoff, then
left to the Job (exit 75). Tests point the SDK at the emulator with the URL's own
`upload_prefix` parameter (`cloudinary://key:secret@cloud?upload_prefix=http://127.0.0.1:PORT`).
The URL holds the API secret: it is never printed, and neither is the SDK config."""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from lectern_transcoder.errors import ConfigurationError, TranscodeError, Transient, UsageError

PREFIX = "cloudinary:"
PUBLIC_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
CHUNK_BYTES = 10 * 1024 * 1024  # Cloudinary's minimum chunk is 5 MB (except the last)
CHUNK_ENV = "LECTERN_UPLOAD_CHUNK_BYTES"  # override (tests use small chunks to exercise several)
REQUEST_TIMEOUT = 120.0
ATTEMPTS = 4
_TRANSIENT_MESSAGES = ("Socket error", "Unexpected error", "Error parsing server response", "timed out",
                       "Connection", "Max retries")


def is_cloudinary_output(output: str) -> bool:
    return output.startswith(PREFIX)


def public_id_of(output: str) -> str:
    """`cloudinary:lectures/abc/0123456789ab` → `lectures/abc/0123456789ab` (validated)."""
    public_id = output[len(PREFIX):]
    if not PUBLIC_ID.match(public_id) or len(public_id) > 255 or ".." in public_id:
        raise UsageError(f"OUTPUT {output!r} is not cloudinary:<public_id> (letters, digits, _ - . and / "
                         f"between folders)")
    return public_id


def configure() -> None:
    """(Re)load the SDK configuration from the environment; fail fast, before any encode,
    when it is missing or incomplete."""
    if not os.environ.get("CLOUDINARY_URL"):
        raise ConfigurationError("CLOUDINARY_URL is not set (needed to upload to a cloudinary: OUTPUT)")
    import cloudinary

    try:
        cloudinary.reset_config()
    except ValueError:
        raise ConfigurationError("CLOUDINARY_URL is malformed (expected cloudinary://KEY:SECRET@CLOUD)") from None
    cfg = cloudinary.config()
    if not (cfg.cloud_name and cfg.api_key and cfg.api_secret):
        raise ConfigurationError("CLOUDINARY_URL lacks the cloud name, API key or API secret")


class _CountingFile(io.FileIO):
    """A file that reports how many bytes the SDK has taken so far: a chunk is read just
    before it is sent, so the count of earlier reads is what has been uploaded."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None) -> None:
        super().__init__(path, "rb")
        self.sent = 0
        self.on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        if self.on_bytes:
            self.on_bytes(self.sent)
        data = super().read(size)
        self.sent += len(data)
        return data


def _classify(exc: Exception) -> TranscodeError:
    from cloudinary import exceptions as cx

    message = " ".join(str(exc).split())[:300]
    if isinstance(exc, (cx.GeneralError, cx.RateLimited)) or isinstance(exc, (OSError, TimeoutError)):
        return Transient(f"upload to Cloudinary failed: {message}")
    if isinstance(exc, (cx.AuthorizationRequired, cx.NotAllowed)):
        return ConfigurationError(f"Cloudinary refused the credentials: {message}")
    if type(exc) is cx.Error and any(m in message for m in _TRANSIENT_MESSAGES):
        return Transient(f"upload to Cloudinary failed: {message}")
    return TranscodeError(f"Cloudinary rejected the upload: {message}")


def upload(path: Path, public_id: str, *, on_bytes: Callable[[int], None] | None = None,
           attempts: int = ATTEMPTS, backoff_seconds: float = 1.0, timeout: float = REQUEST_TIMEOUT,
           chunk_bytes: int | None = None, sleep: Callable[[float], None] = time.sleep,
           on_retry: Callable[[str], None] | None = None, resource_type: str = "video",
           filename: str | None = None) -> dict:
    """Upload `path` as `public_id` (a video unless `resource_type` says "raw" or "image": the
    HLS set and the poster); returns the SDK's result (with `secure_url`)."""
    import cloudinary.uploader

    size = path.stat().st_size
    chunk_bytes = chunk_bytes or int(os.environ.get(CHUNK_ENV) or CHUNK_BYTES)
    last: TranscodeError | None = None
    for attempt in range(1, attempts + 1):
        try:
            with _CountingFile(path, on_bytes) as f:
                result = cloudinary.uploader.upload_large(
                    f, public_id=public_id, resource_type=resource_type, overwrite=True, invalidate=True,
                    unique_filename=False, use_filename=False,
                    filename=filename or public_id.rsplit("/", 1)[-1] + ".mp4",
                    chunk_size=chunk_bytes, timeout=timeout)
        except Exception as exc:  # the SDK raises its own Error classes and plain socket errors
            last = _classify(exc)
            if not isinstance(last, Transient):
                raise last from None
        else:
            if not isinstance(result, dict) or not result.get("secure_url"):
                last = Transient("Cloudinary's upload answer has no secure_url")
            else:
                if on_bytes:
                    on_bytes(size)
                return result
        if attempt < attempts:
            if on_retry:
                on_retry(last.reason)
            sleep(backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))
    assert last is not None
    raise Transient(f"{last.reason} (after {attempts} attempts)")
