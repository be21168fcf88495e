"""The whole flow with every real part: the API's Node bullmq producer -> `lectern-intake` ->
VideoTranscode -> operator -> Job -> the real `lectern-transcode` in a (local) pod, downloading
from and uploading to the Cloudinary emulator over https -> CR status -> Lecture document,
notifications and the BullMQ job's result.

Only Kubernetes (API-server emulator + local kubelet), Cloudinary (emulator) and MongoDB
(nx-27017, a wire-protocol server) stand in; see tests/e2e/stack.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from bson import ObjectId

from tests.e2e.stack import NAMESPACE, LectureWatch
from tests.transcoder.conftest import assert_streamable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90), pytest.mark.usefixtures("show_logs_on_failure")]

INSTRUCTOR = "instructor-42"


def _api_uploads(stack, lecture_id: str, raw_url: str) -> None:
    """What the platform API does before it enqueues: the Lecture is AWAITING_MEDIA."""
    stack.lectures.insert_one({"_id": ObjectId(lecture_id), "title": "Signals and Systems, lecture 7",
                               "instructorId": INSTRUCTOR, "status": "AWAITING_MEDIA", "rawVideoUrl": raw_url})


def _order(stack, job_id: str) -> list[str]:
    return [e["event"] for e in stack.events.of(job_id) if e["event"] in ("progress", "completed", "failed")]


def test_lecture_is_transcoded_end_to_end(stack, lecture_clip):
    lecture_id = str(ObjectId())
    raw_url = stack.seed_raw(lecture_clip, lecture_id)
    assert raw_url.startswith(f"https://{stack.loopback}/")
    _api_uploads(stack, lecture_id, raw_url)
    watch = LectureWatch(stack.lectures, ObjectId(lecture_id))
    try:
        job_id = stack.producer.add({"lectureId": lecture_id, "rawVideoUrl": raw_url, "instructorId": INSTRUCTOR})

        # --- BullMQ: integer progress, monotonic, then completed with {lectureId, videoUrl}
        done = stack.events.wait(job_id, "completed", timeout=60)[0]
        video_url = done["returnvalue"]["videoUrl"]
        assert done["returnvalue"] == {"lectureId": lecture_id, "videoUrl": video_url}
        progress = stack.events.progress(job_id)
        assert progress and all(type(p) is int and 0 <= p <= 100 for p in progress), progress
        assert progress == sorted(set(progress)), progress  # strictly increasing: sent on change only
        assert progress[-1] == 100 and any(0 < p < 100 for p in progress), progress
        order = _order(stack, job_id)
        assert order[-1] == "completed" and order.count("completed") == 1 and "failed" not in order, order
        job = stack.producer.job(job_id)
        assert job["state"] == "completed" and job["attemptsMade"] == 1 and job["progress"] == 100

        # --- the Lecture: AWAITING_MEDIA -> PROCESSING -> READY, videoUrl set, raw kept
        doc = watch.wait_status("READY", 15)
    finally:
        statuses = watch.stop()
    assert statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], statuses
    assert doc["videoUrl"] == video_url and doc["rawVideoUrl"] == raw_url

    # --- notifications: processing, progress..., exactly one final (ready), to the instructor
    ready = stack.notifications.wait(lecture_id, "ready", 15)
    msgs = stack.notifications.of(lecture_id)
    types = [m["type"] for m in msgs]
    assert types[0] == "processing" and types[-1] == "ready", types
    assert types.count("processing") == 1 and types.count("ready") == 1 and "failed" not in types, types
    assert set(types[1:-1]) == {"progress"}, types
    sent = [m["progress"] for m in msgs if m["type"] == "progress"]
    assert sent and sent == sorted(set(sent)) and all(0 < p < 100 for p in sent), sent  # on change only
    assert all(m["userId"] == INSTRUCTOR and m.get("message") for m in msgs), msgs
    assert ready["videoUrl"] == video_url
    assert [m["type"] for m in stack.finals_in_stream(lecture_id)] == ["ready"]

    # --- the VideoTranscode: Succeeded, 100 %, the transcoder's figures
    vt = stack.transcode_for(job_id)
    st = vt["status"]
    print(f"bullmq progress {progress}; notifications {[(m['type'], m.get('progress')) for m in msgs]}; "
          f"lecture {statuses}; report {st['report']}; cost {st.get('cost')}")
    assert st["phase"] == "Succeeded" and st["progress"] == 100 and st["attempts"] == 1, st
    assert st["videoUrl"] == video_url
    assert vt["spec"]["rawVideoUrl"] == raw_url and vt["spec"]["instructorId"] == INSTRUCTOR
    asset = stack.cloudinary.asset(f"raw/{lecture_id}")
    report = st["report"]
    assert report["stage"] == "done" and report["progress"] == 100 and report["videoUrl"] == video_url
    assert report["bytesDownloaded"] == asset.bytes  # 720p input: the c_limit rendition is the original
    assert report["cpuSeconds"] > 0 and report["speed"] > 0
    assert abs(report["inputDurationSeconds"] - 4.0) < 0.5

    # --- the upload: in the emulator, served at videoUrl, <=720p H.264/AAC faststart MP4
    public_id = video_url.split("/upload/", 1)[1].split("/", 1)[1].rsplit(".", 1)[0]  # after vNNN/
    assert public_id.startswith(f"lectern/lectures/{lecture_id}/")
    out = stack.cloudinary.asset(public_id)
    uploads = [u["result"] for u in stack.cloudinary.uploads if u["result"].get("public_id") == public_id]
    assert [u["secure_url"] for u in uploads] == [video_url]  # one upload; its secure_url is the result
    assert report["bytesUploaded"] == out.bytes == st["cost"]["bytesUploaded"]
    assert stack.https_get(video_url) == out.path.read_bytes()
    info = assert_streamable(out.path)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (1280, 720)
    assert [s["codec_name"] for s in info["streams"] if s["codec_type"] == "audio"] == ["aac"]
    assert out.bytes < asset.bytes / 5, (out.bytes, asset.bytes)  # it is the point of it all

    # --- one pod, and its scratch emptyDir is empty again
    pods = stack.pods_of(st["jobName"])
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Succeeded"
    log = stack.kubelet.logs(pods[0]["metadata"]["name"], NAMESPACE)
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [e["mode"] for e in events if e.get("event") == "done"] == ["transcode"], log[-2000:]  # not a remux
    scratch = stack.kubelet.scratch_dir(pods[0]["metadata"]["name"], "scratch", NAMESPACE)
    assert scratch.is_dir() and list(scratch.iterdir()) == [], list(scratch.iterdir())


def test_unusable_input_fails_once_with_a_reason(stack, tmp_path):
    lecture_id = str(ObjectId())
    junk = Path(tmp_path / "not-a-video.mp4")
    junk.write_bytes(os.urandom(200_000))
    raw_url = stack.seed_raw(junk, lecture_id)
    _api_uploads(stack, lecture_id, raw_url)
    watch = LectureWatch(stack.lectures, ObjectId(lecture_id))
    try:
        # attempts: 3 — BullMQ would retry a plain failure; an unusable input must not be.
        job_id = stack.producer.add({"lectureId": lecture_id, "rawVideoUrl": raw_url, "instructorId": INSTRUCTOR},
                                    {"attempts": 3, "backoff": {"type": "fixed", "delay": 200}})
        failed = stack.events.wait(job_id, "failed", timeout=45)[0]
        reason = failed["failedReason"]
        print(f"failedReason: {reason!r}")
        assert reason.startswith("unusable input: "), reason
        doc = watch.wait_status("FAILED", 15)
    finally:
        statuses = watch.stop()
    assert statuses == ["AWAITING_MEDIA", "PROCESSING", "FAILED"], statuses
    assert doc["rawVideoUrl"] == raw_url and "videoUrl" not in doc  # the player falls back to the raw upload
    assert doc["failureReason"] == reason

    failed_note = stack.notifications.wait(lecture_id, "failed", 15)
    assert failed_note["userId"] == INSTRUCTOR and reason.removeprefix("unusable input: ") in failed_note["message"]

    vt = stack.transcode_for(job_id)
    assert vt["status"]["phase"] == "Failed" and vt["status"]["message"] == reason
    pods = stack.pods_of(vt["status"]["jobName"])
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]  # exit 65: FailJob, no pod retry
    term = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 65
    scratch = stack.kubelet.scratch_dir(pods[0]["metadata"]["name"], "scratch", NAMESPACE)
    assert list(scratch.iterdir()) == []

    # Settle: nothing more may happen (no BullMQ retry, no second pod, no second final).
    time.sleep(1.5)
    job = stack.producer.job(job_id)
    assert job["state"] == "failed" and job["attemptsMade"] == 1, job
    order = _order(stack, job_id)
    assert order.count("failed") == 1 and "completed" not in order, order
    types = [m["type"] for m in stack.notifications.of(lecture_id)]
    assert types.count("failed") == 1 and "ready" not in types, types
    assert [m["type"] for m in stack.finals_in_stream(lecture_id)] == ["failed"]
    assert len(stack.pods_of(vt["status"]["jobName"])) == 1
    assert len(stack.kube.list("videotranscodes", NAMESPACE, labels=f"media.lectern.dev/lecture-id={lecture_id}")) == 1
