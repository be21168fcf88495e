"""Guarded writes to the Lecture document (MongoDB, pymongo run in a worker thread).

Allowed transitions (DESIGN.md): AWAITING_MEDIA | READY | FAILED | PROCESSING -> PROCESSING,
PROCESSING -> READY | FAILED. Every write also requires `rawVideoUrl` to be the one this
transcode processed: a newer upload always wins over an older, slower transcode.

READY writes `videoUrl` and, when the transcode made an HLS ladder (issue 15), `hlsUrl` and
`posterUrl` (additive fields: the platform's own stay as they are); a READY without them
removes them, so they always belong to the same upload as `videoUrl`.

Each write returns an `Outcome`:
- APPLIED: the document is now in the target state (also when a retried write finds that an
  earlier attempt, whose reply was lost, already did it);
- SUPERSEDED: the guard did not match (newer upload, unknown lecture, transition not allowed);
  the caller stops writing for this transcode;
- `LectureUnavailable` is raised when MongoDB cannot be reached: the caller keeps the write
  pending and retries with backoff.
"""

from __future__ import annotations

import asyncio
import enum
import re
from datetime import datetime, timezone
from typing import Any

import pymongo
import pymongo.errors
from bson import ObjectId

from lectern_operator.settings import Settings

AWAITING_MEDIA, PROCESSING, READY, FAILED = "AWAITING_MEDIA", "PROCESSING", "READY", "FAILED"
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    PROCESSING: (AWAITING_MEDIA, READY, FAILED, PROCESSING),
    READY: (PROCESSING,),
    FAILED: (PROCESSING,),
}
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")


class Outcome(enum.Enum):
    APPLIED = "applied"
    SUPERSEDED = "superseded"


class LectureUnavailable(Exception):
    """MongoDB could not be reached (or timed out); retry later."""


def lecture_key(lecture_id: str) -> Any:
    """`_id` is an ObjectId when the id is 24 hex digits, else the plain string."""
    return ObjectId(lecture_id) if _OBJECT_ID.match(lecture_id) else lecture_id


class Lectures:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: pymongo.MongoClient | None = None

    @property
    def collection(self):
        if self._client is None:
            t = self.settings.mongo_timeout_ms
            self._client = pymongo.MongoClient(
                self.settings.mongo_url.get_secret_value(),
                serverSelectionTimeoutMS=t, connectTimeoutMS=t, socketTimeoutMS=max(t, 1000),
                retryWrites=True, appname="lectern-operator",
            )
        return self._client[self.settings.mongo_db][self.settings.mongo_collection]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- synchronous core (runs in a worker thread) ---------------------------------------

    def _transition(self, lecture_id: str, raw_video_url: str, target: str,
                    video_url: str | None, reason: str | None,
                    hls_url: str | None = None, poster_url: str | None = None) -> Outcome:
        key = lecture_key(lecture_id)
        now = datetime.now(timezone.utc)
        update: dict[str, Any] = {"status": target, "updatedAt": now}
        unset: dict[str, Any] = {}
        if target == READY:
            update["videoUrl"] = video_url
            unset["failureReason"] = ""
            # HLS is additive: set when this transcode made it, else removed, so that a READY
            # Lecture never points at the ladder of an earlier upload.
            for field, value in (("hlsUrl", hls_url), ("posterUrl", poster_url)):
                if value:
                    update[field] = value
                else:
                    unset[field] = ""
        elif target == FAILED:
            update["failureReason"] = reason or "transcode failed"
        elif target == PROCESSING:
            unset["failureReason"] = ""
        change: dict[str, Any] = {"$set": update}
        if unset:
            change["$unset"] = unset
        guard = {"_id": key, "rawVideoUrl": raw_video_url, "status": {"$in": list(ALLOWED_FROM[target])}}
        try:
            result = self.collection.update_one(guard, change)
            if result.matched_count:
                return Outcome.APPLIED
            # Not matched: already done by an attempt whose reply was lost, or superseded.
            doc = self.collection.find_one({"_id": key}, {"status": 1, "rawVideoUrl": 1, "videoUrl": 1,
                                                          "hlsUrl": 1, "posterUrl": 1})
        except pymongo.errors.PyMongoError as exc:  # ConnectionFailure, ServerSelectionTimeout, ...
            raise LectureUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        if (doc and doc.get("rawVideoUrl") == raw_video_url and doc.get("status") == target
                and (target != READY or (doc.get("videoUrl"), doc.get("hlsUrl"), doc.get("posterUrl"))
                     == (video_url, hls_url or None, poster_url or None))):
            return Outcome.APPLIED
        return Outcome.SUPERSEDED

    def _get(self, lecture_id: str) -> dict[str, Any] | None:
        try:
            return self.collection.find_one({"_id": lecture_key(lecture_id)})
        except pymongo.errors.PyMongoError as exc:
            raise LectureUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc

    # -- async API ------------------------------------------------------------------------

    async def transition(self, lecture_id: str, raw_video_url: str, target: str, *,
                         video_url: str | None = None, reason: str | None = None,
                         hls_url: str | None = None, poster_url: str | None = None) -> Outcome:
        if target not in ALLOWED_FROM:
            raise ValueError(f"not a target state: {target}")
        return await asyncio.to_thread(self._transition, lecture_id, raw_video_url, target, video_url, reason,
                                       hls_url, poster_url)

    async def get(self, lecture_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, lecture_id)
