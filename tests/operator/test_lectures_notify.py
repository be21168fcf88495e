"""Lecture guard (pymongo -> FerretDB) and notifications (real Redis)."""

from __future__ import annotations

import asyncio
import json

import pymongo
import pytest
import redis.asyncio as aioredis
from bson import ObjectId

from lectern_operator import notify
from lectern_operator.lectures import FAILED, PROCESSING, READY, LectureUnavailable, Lectures, Outcome
from lectern_operator.settings import Settings
from tests.standins.services import MongoServer

RAW = "https://res.cloudinary.com/demo/video/upload/raw-1.mov"
RAW2 = "https://res.cloudinary.com/demo/video/upload/raw-2.mov"


@pytest.fixture
def coll(mongo_server, request):
    client = pymongo.MongoClient(mongo_server.url)
    c = client["lectern_test"][f"lectures_{request.node.name[:40]}"]
    c.delete_many({})
    yield c
    client.close()


def _lectures(mongo_url: str, coll) -> Lectures:
    return Lectures(Settings(mongo_url=mongo_url, mongo_db=coll.database.name, mongo_collection=coll.name,
                             mongo_timeout_ms=500))


async def test_guarded_transitions(mongo_server, coll):
    oid = ObjectId()
    coll.insert_many([{"_id": oid, "status": "AWAITING_MEDIA", "rawVideoUrl": RAW},
                      {"_id": "plain-id", "status": "READY", "rawVideoUrl": RAW, "videoUrl": "https://old"}])
    lec = _lectures(mongo_server.url, coll)
    try:
        assert await lec.transition(str(oid), RAW, PROCESSING) is Outcome.APPLIED
        assert await lec.transition(str(oid), RAW, PROCESSING) is Outcome.APPLIED  # idempotent
        assert await lec.transition(str(oid), RAW, READY, video_url="https://v") is Outcome.APPLIED
        assert await lec.transition(str(oid), RAW, READY, video_url="https://v") is Outcome.APPLIED  # lost reply retried
        doc = coll.find_one({"_id": oid})
        assert doc["status"] == "READY" and doc["videoUrl"] == "https://v" and doc["rawVideoUrl"] == RAW
        # READY -> FAILED is not a transition
        assert await lec.transition(str(oid), RAW, FAILED, reason="x") is Outcome.SUPERSEDED
        # a plain string id; READY -> PROCESSING (new transcode of the same upload) allowed
        assert await lec.transition("plain-id", RAW, PROCESSING) is Outcome.APPLIED
        assert await lec.transition("plain-id", RAW, FAILED, reason="bad input") is Outcome.APPLIED
        doc = coll.find_one({"_id": "plain-id"})
        assert doc["status"] == "FAILED" and doc["failureReason"] == "bad input" and doc["rawVideoUrl"] == RAW
        # unknown lecture
        assert await lec.transition("nope", RAW, PROCESSING) is Outcome.SUPERSEDED
    finally:
        lec.close()


async def test_newer_upload_wins(mongo_server, coll):
    coll.insert_one({"_id": "lec", "status": "PROCESSING", "rawVideoUrl": RAW})
    lec = _lectures(mongo_server.url, coll)
    try:
        coll.update_one({"_id": "lec"}, {"$set": {"rawVideoUrl": RAW2, "status": "PROCESSING"}})  # new upload
        assert await lec.transition("lec", RAW, READY, video_url="https://stale") is Outcome.SUPERSEDED
        doc = coll.find_one({"_id": "lec"})
        assert doc["status"] == "PROCESSING" and "videoUrl" not in doc
    finally:
        lec.close()


HLS = "https://res.cloudinary.com/demo/raw/upload/v2/lectern/lectures/l/abc-hls/master.m3u8"
POSTER = "https://res.cloudinary.com/demo/image/upload/v2/lectern/lectures/l/abc-hls/poster.jpg"


async def test_ready_writes_hls_and_poster(mongo_server, coll):
    """READY writes hlsUrl/posterUrl beside videoUrl (issue 15); the platform's fields stay; a
    later READY without HLS removes them (never the ladder of an older upload); the guard holds."""
    coll.insert_one({"_id": "lec", "status": "PROCESSING", "rawVideoUrl": RAW, "title": "Week 1",
                     "instructorId": "u1"})
    lec = _lectures(mongo_server.url, coll)
    try:
        assert await lec.transition("lec", RAW, READY, video_url="https://v", hls_url=HLS,
                                    poster_url=POSTER) is Outcome.APPLIED
        assert await lec.transition("lec", RAW, READY, video_url="https://v", hls_url=HLS,
                                    poster_url=POSTER) is Outcome.APPLIED  # lost reply retried
        doc = coll.find_one({"_id": "lec"})
        assert (doc["status"], doc["videoUrl"], doc["hlsUrl"], doc["posterUrl"]) == ("READY", "https://v", HLS, POSTER)
        assert (doc["rawVideoUrl"], doc["title"], doc["instructorId"]) == (RAW, "Week 1", "u1")
        # a retry with other URLs is not "already done": that READY belongs to someone else
        assert await lec.transition("lec", RAW, READY, video_url="https://v", hls_url=HLS + "?x") is Outcome.SUPERSEDED
        # PROCESSING and FAILED leave them (as videoUrl); a READY without HLS removes them
        assert await lec.transition("lec", RAW, PROCESSING) is Outcome.APPLIED
        assert coll.find_one({"_id": "lec"})["hlsUrl"] == HLS
        assert await lec.transition("lec", RAW, READY, video_url="https://v2") is Outcome.APPLIED
        doc = coll.find_one({"_id": "lec"})
        assert doc["videoUrl"] == "https://v2" and "hlsUrl" not in doc and "posterUrl" not in doc
        assert await lec.transition("lec", RAW, READY, video_url="https://v2") is Outcome.APPLIED  # idempotent
        # the rawVideoUrl guard is unchanged: a newer upload is never given this HLS
        coll.update_one({"_id": "lec"}, {"$set": {"rawVideoUrl": RAW2, "status": "PROCESSING"}})
        assert await lec.transition("lec", RAW, READY, video_url="https://v", hls_url=HLS,
                                    poster_url=POSTER) is Outcome.SUPERSEDED
        doc = coll.find_one({"_id": "lec"})
        assert doc["status"] == "PROCESSING" and "hlsUrl" not in doc
    finally:
        lec.close()


def test_ready_message_carries_hls_only_when_there_is_one():
    plain = notify.message("ready", user_id="u1", lecture_id="l1", video_url="https://v", progress=100)
    assert plain == {"userId": "u1", "type": "VIDEO_READY", "message": "Your lecture video is ready.",
                     "lectureId": "l1", "videoUrl": "https://v", "progress": 100}  # HLS off: as before
    hls = notify.message("ready", user_id="u1", lecture_id="l1", video_url="https://v", progress=100,
                         hls_url=HLS, poster_url=POSTER)
    assert hls == {**plain, "hlsUrl": HLS, "posterUrl": POSTER}
    failed = notify.message("failed", user_id="u1", lecture_id="l1", reason="x", hls_url=HLS, poster_url=POSTER)
    assert "hlsUrl" not in failed and "posterUrl" not in failed


async def test_mongo_down_raises_unavailable(tmp_path):
    server = MongoServer(workdir=tmp_path)
    server.start()
    url = server.url
    server.stop()
    lec = Lectures(Settings(mongo_url=url, mongo_timeout_ms=300))
    try:
        with pytest.raises(LectureUnavailable):
            await lec.transition("x", RAW, PROCESSING)
    finally:
        lec.close()


async def test_final_notification_exactly_once(redis_server):
    s = Settings(redis_url=redis_server.url, notifications_stream="test:stream:once")
    n = notify.Notifier(s)
    r = aioredis.from_url(redis_server.url)
    pubsub = r.pubsub()
    await pubsub.subscribe("notifications")
    await pubsub.get_message(timeout=1)
    try:
        payload = notify.message("ready", user_id="u1", lecture_id="l1", video_url="https://v", progress=100)
        results = await asyncio.gather(*[n.publish_once("uid-1:final", payload, to_stream=True) for _ in range(5)])
        assert results.count(True) == 1
        msgs = []
        while (m := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
            msgs.append(json.loads(m["data"]))
        assert msgs == [payload]
        assert set(payload) >= {"userId", "type", "message", "lectureId", "videoUrl", "progress"}
        assert payload["type"] == "VIDEO_READY"  # the wire type, not the internal kind
        entries = await r.xrange("test:stream:once")
        assert [json.loads(e[1][b"data"]) for e in entries] == [payload]
    finally:
        await pubsub.aclose()
        await r.aclose()
        await n.close()


async def test_stream_is_capped(redis_server):
    s = Settings(redis_url=redis_server.url, notifications_stream="test:stream:cap", notifications_stream_maxlen=10)
    n = notify.Notifier(s)
    r = aioredis.from_url(redis_server.url)
    try:
        for i in range(300):
            await n.publish_once(f"cap-{i}:final", notify.message("failed", user_id="u", lecture_id="l", reason="x"),
                                 to_stream=True)
        assert await r.xlen("test:stream:cap") < 300
    finally:
        await r.aclose()
        await n.close()
