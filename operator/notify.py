"""Notifications for the Socket.IO server: Redis pub/sub `notifications` + a capped stream.

Message (JSON): `{userId, type, message, lectureId, videoUrl, progress}` (+ `hlsUrl` and
`posterUrl` in `VIDEO_READY` when the transcode made an HLS ladder), type one of
`VIDEO_PROCESSING`, `VIDEO_PROGRESS`, `VIDEO_READY`, `VIDEO_FAILED` (what the Socket.IO
server expects). Internally (Redis marker keys, CR `status.notified`, metrics labels) the
operator keeps the short kinds `processing`, `progress`, `ready`, `failed`; `WIRE_TYPE`
maps a kind to its wire `type`, and only `message()` uses it.

Once-only messages (`processing` and the final `ready`/`failed`) go through one Lua script
that, atomically in Redis, sets a marker key with NX, PUBLISHes and XADDs (finals) to the
capped stream: either all of it happens or none, and a second attempt (operator restart,
retry after a lost reply) finds the marker and sends nothing. The operator also records in
the CR status that it was sent, so it does not even try again once the marker expired.

A Socket.IO server that was down reads the stream from the last id it processed
(`XREAD STREAMS notifications:stream <last-id>`) to catch up on finals it missed.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from lectern_operator.settings import Settings

PROCESSING, PROGRESS, READY, FAILED = "processing", "progress", "ready", "failed"

# internal kind -> the `type` on the wire (Socket.IO server)
WIRE_TYPE = {PROCESSING: "VIDEO_PROCESSING", PROGRESS: "VIDEO_PROGRESS", READY: "VIDEO_READY", FAILED: "VIDEO_FAILED"}

# KEYS[1] marker, KEYS[2] stream; ARGV: channel, message, ttl, maxlen, to_stream ("1"/"0")
_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[3])) then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  if ARGV[5] == '1' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'data', ARGV[2])
  end
  return 1
end
return 0
"""


class NotifyUnavailable(Exception):
    """Redis could not be reached; the caller retries later."""


def message(kind: str, *, user_id: str, lecture_id: str, video_url: str | None = None,
            progress: int | None = None, reason: str | None = None,
            hls_url: str | None = None, poster_url: str | None = None) -> dict[str, Any]:
    text = {
        PROCESSING: "Your lecture video is being processed.",
        PROGRESS: f"Processing your lecture video: {progress}%.",
        READY: "Your lecture video is ready.",
        FAILED: f"Processing your lecture video failed: {reason or 'unknown error'}. The original upload is still available.",
    }[kind]
    out = {"userId": user_id, "type": WIRE_TYPE[kind], "message": text, "lectureId": lecture_id,
           "videoUrl": video_url, "progress": progress}
    if kind == READY:  # only when there is one: an HLS-off message is exactly what it was
        out.update({k: v for k, v in (("hlsUrl", hls_url), ("posterUrl", poster_url)) if v})
    return out


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = aioredis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5,
                                       socket_connect_timeout=2, health_check_interval=30)
        self._once = self.redis.register_script(_ONCE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def publish(self, payload: dict[str, Any]) -> None:
        """Fire-and-forget (progress): at most once, no marker."""
        try:
            await self.redis.publish(self.settings.notifications_channel, json.dumps(payload))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NotifyUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def publish_once(self, marker: str, payload: dict[str, Any], *, to_stream: bool) -> bool:
        """Publish unless `marker` was already used; True if it was sent now."""
        key = f"lectern:notified:{marker}"
        try:
            sent = await self._once(
                keys=[key, self.settings.notifications_stream],
                args=[self.settings.notifications_channel, json.dumps(payload),
                      self.settings.notified_key_ttl_seconds, self.settings.notifications_stream_maxlen,
                      "1" if to_stream else "0"])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NotifyUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return bool(sent)
