"""The intake end to end: Node bullmq producer + QueueEvents (as the API), Python intake
subprocess, Kubernetes emulator; the test plays the operator by patching CR status."""

from __future__ import annotations

import time

import pytest

from tests.intake.conftest import NAMESPACE, lecture_data, wait_until

VIDEO_URL = "https://res.cloudinary.com/demo/video/upload/lectern/lectures/L/abc.mp4"


def test_job_becomes_transcode_progress_and_result(harness):
    intake = harness.start_intake()
    events = harness.events
    data = lecture_data()
    job_id = harness.producer.add(data)

    cr = harness.cr_for(job_id)
    name = cr["metadata"]["name"]
    assert cr["spec"]["lectureId"] == data["lectureId"]
    assert cr["spec"]["rawVideoUrl"] == data["rawVideoUrl"]
    assert cr["spec"]["instructorId"] == data["instructorId"]
    assert cr["metadata"]["labels"]["media.lectern.dev/lecture-id"] == data["lectureId"]
    assert cr["metadata"]["annotations"]["media.lectern.dev/queue"] == f"bull:{harness.queue}"
    assert cr["metadata"]["annotations"]["media.lectern.dev/queue-job-id"] == job_id

    harness.set_status(name, phase="Queued", progress=0)
    harness.set_status(name, phase="Running", progress=10)
    events.wait(job_id, "progress")
    harness.set_status(name, phase="Running", progress=10, message="still 10")  # no change: no event
    harness.set_status(name, phase="Running", progress=55)
    events.wait(job_id, "progress", count=2)
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)

    done = events.wait(job_id, "completed")[0]
    assert done["returnvalue"] == {"lectureId": data["lectureId"], "videoUrl": VIDEO_URL}
    progress = harness.events.progress(job_id)
    assert progress == [10, 55, 100]
    assert all(type(p) is int for p in progress)
    job = harness.producer.job(job_id)
    assert job["state"] == "completed" and job["returnvalue"] == done["returnvalue"] and job["progress"] == 100
    assert len(harness.transcodes()) == 1

    m = wait_until(lambda: (m := intake.metrics())["lectern_intake_jobs_completed_total"] == 1 and m, 5)
    assert m["lectern_intake_jobs_taken_total"] == 1
    assert m["lectern_intake_transcodes_created_total"] == 1
    assert m["lectern_intake_jobs_active"] == 0
    assert intake.terminate() == 0


def test_failed_transcode_fails_job_with_reason_and_no_retry(harness):
    harness.start_intake()
    job_id = harness.producer.add(lecture_data(), {"attempts": 3, "backoff": {"type": "fixed", "delay": 100}})
    name = harness.cr_for(job_id)["metadata"]["name"]
    harness.set_status(name, phase="Running", progress=30)
    harness.set_status(name, phase="Failed", progress=30,
                       message="input is not a usable video: no video stream found")
    failed = harness.events.wait(job_id, "failed")[0]
    assert failed["failedReason"] == "input is not a usable video: no video stream found"
    job = harness.producer.job(job_id)
    assert job["state"] == "failed" and job["attemptsMade"] == 1
    assert harness.events.of(job_id, "completed") == []
    assert len(harness.events.of(job_id, "active")) == 1  # never retried


INVALID = {
    "missing lectureId": ({"rawVideoUrl": "https://res.cloudinary.com/a.mp4", "instructorId": "u1"},
                          "lectureId: required field is missing"),
    "missing instructorId": ({"lectureId": "L1", "rawVideoUrl": "https://res.cloudinary.com/a.mp4"},
                             "instructorId: required field is missing"),
    "http url": ({"lectureId": "L2", "rawVideoUrl": "http://res.cloudinary.com/a.mp4", "instructorId": "u1"},
                 "rawVideoUrl: must be an https:// URL"),
    "private address": ({"lectureId": "L3", "rawVideoUrl": "https://169.254.169.254/latest/meta-data", "instructorId": "u1"},
                        "rawVideoUrl: points to a non-public address"),
    "loopback": ({"lectureId": "L4", "rawVideoUrl": "https://127.0.0.1:6379/", "instructorId": "u1"},
                 "rawVideoUrl: points to a non-public address"),
    "other host": ({"lectureId": "L5", "rawVideoUrl": "https://evil.example.com/a.mp4", "instructorId": "u1"},
                   "rawVideoUrl: host 'evil.example.com' is not an allowed media host"),
    "number id": ({"lectureId": 12345, "rawVideoUrl": "https://res.cloudinary.com/a.mp4", "instructorId": "u1"},
                  "lectureId: must be a string (got number)"),
    "object url": ({"lectureId": "L6", "rawVideoUrl": {"url": "https://res.cloudinary.com/a.mp4"}, "instructorId": "u1"},
                   "rawVideoUrl: must be a string (got object)"),
    "null data": (None, "invalid job data: expected an object"),
}


def test_invalid_payloads_fail_without_retry_and_create_nothing(harness):
    intake = harness.start()
    ids = {case: harness.producer.add(data, {"attempts": 5, "backoff": 10})
           for case, (data, _) in INVALID.items()}
    for case, job_id in ids.items():
        failed = harness.events.wait(job_id, "failed")[0]
        assert INVALID[case][1] in failed["failedReason"], (case, failed)
        assert failed["failedReason"].startswith("invalid job data: "), failed
    for case, job_id in ids.items():
        job = harness.producer.job(job_id)
        assert job["state"] == "failed" and job["attemptsMade"] == 1, (case, job)
        assert len(harness.events.of(job_id, "active")) == 1, case  # taken once, never retried
    assert harness.transcodes() == []
    m = wait_until(lambda: (m := intake.metrics())['lectern_intake_jobs_failed_total{reason="invalid"}']
                   == len(INVALID) and m, 5)
    assert m["lectern_intake_jobs_invalid_total"] == len(INVALID)
    assert m["lectern_intake_transcodes_created_total"] == 0


def test_kill9_mid_job_redelivers_and_adopts_the_same_cr(harness):
    first = harness.start(intake_lock_duration_ms=2000)
    data = lecture_data()
    job_id = harness.producer.add(data)
    cr = harness.cr_for(job_id)
    name, uid = cr["metadata"]["name"], cr["metadata"]["uid"]
    harness.set_status(name, phase="Running", progress=30)
    harness.events.wait(job_id, "progress")

    first.kill9()
    harness.set_status(name, phase="Running", progress=40)  # moves on while no intake runs
    second = harness.start_intake(intake_lock_duration_ms=2000)
    harness.events.wait(job_id, "active", count=2, timeout=30)  # redelivered by the stalled-job check
    harness.events.wait(job_id, "progress", count=2)
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    done = harness.events.wait(job_id, "completed")[0]
    assert done["returnvalue"] == {"lectureId": data["lectureId"], "videoUrl": VIDEO_URL}

    crs = harness.transcodes()
    assert [c["metadata"]["uid"] for c in crs] == [uid]  # exactly one CR, the same one
    assert harness.events.progress(job_id) == [30, 40, 100]
    assert harness.events.of(job_id, "failed") == []
    job = harness.producer.job(job_id)
    assert job["state"] == "completed" and job["attemptsMade"] == 1  # a stall is not an attempt
    m = second.metrics()
    assert m["lectern_intake_transcodes_adopted_total"] == 1
    assert m["lectern_intake_transcodes_created_total"] == 0


def test_long_transcode_is_not_mistaken_for_a_stalled_job(harness):
    # Lock 1s, stall check every 0.5s; the transcode takes 4s: the lock must keep being renewed.
    harness.start(intake_lock_duration_ms=1000, intake_stalled_interval_ms=500)
    job_id = harness.producer.add(lecture_data())
    name = harness.cr_for(job_id)["metadata"]["name"]
    for p in range(0, 101, 15):
        harness.set_status(name, phase="Running", progress=p)
        time.sleep(0.6)
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    harness.events.wait(job_id, "completed")
    assert harness.events.of(job_id, "stalled") == []
    assert len(harness.events.of(job_id, "active")) == 1
    assert harness.events.progress(job_id) == [15, 30, 45, 60, 75, 90, 100]


def test_sigterm_hands_in_flight_jobs_back_without_failing_them(harness):
    first = harness.start()
    jobs = [harness.producer.add(lecture_data(lecture=f"lec{i}")) for i in range(3)]
    names = {j: harness.cr_for(j)["metadata"]["name"] for j in jobs}
    for j in jobs:
        harness.set_status(names[j], phase="Running", progress=20)
    for j in jobs:
        harness.events.wait(j, "progress")

    started = time.monotonic()
    assert first.terminate() == 0
    assert time.monotonic() - started < 8
    for j in jobs:
        job = harness.producer.job(j)
        assert job["state"] in ("delayed", "waiting"), job
        assert job["attemptsMade"] == 0 and not job.get("failedReason"), job
    assert "handed back to the queue" in first.log()
    assert all(harness.events.of(j, "failed") == [] for j in jobs)

    harness.start_intake()
    for j in jobs:
        harness.events.wait(j, "active", count=2, timeout=20)
        harness.set_status(names[j], phase="Succeeded", progress=100, videoUrl=f"{VIDEO_URL}?{j}")
    for j in jobs:
        assert harness.events.wait(j, "completed")[0]["returnvalue"]["videoUrl"] == f"{VIDEO_URL}?{j}"
        assert harness.events.of(j, "stalled") == []
    assert len(harness.transcodes()) == 3


def test_deleted_transcode_fails_the_job(harness):
    harness.start()
    job_id = harness.producer.add(lecture_data())
    name = harness.cr_for(job_id)["metadata"]["name"]
    harness.kube.delete("videotranscodes", name, NAMESPACE)
    failed = harness.events.wait(job_id, "failed")[0]
    assert failed["failedReason"] == f"VideoTranscode {name} was deleted before the transcode finished"
    assert harness.producer.job(job_id)["attemptsMade"] == 1


def test_health_and_metrics_endpoints(harness):
    intake = harness.start()
    status, body = intake.health("/readyz")
    assert status == 200 and body["redis"] == "ok" and body["kubernetes"] == "ok", body
    assert intake.health("/healthz")[0] == 200
    m = intake.metrics()
    for metric in ("jobs_taken_total", "jobs_invalid_total", "jobs_completed_total", "jobs_active",
                   "transcodes_created_total", "jobs_released_total"):
        assert f"lectern_intake_{metric}" in m, metric
    assert 'lectern_intake_jobs_failed_total{reason="transcode_failed"}' in m


def test_redis_restart_with_jobs_in_flight(restart_harness):
    h = restart_harness
    intake = h.start()
    jobs = [h.producer.add(lecture_data(lecture=f"lec{i}")) for i in range(3)]
    names = {j: h.cr_for(j)["metadata"]["name"] for j in jobs}
    for j in jobs:
        h.set_status(names[j], phase="Running", progress=25)
    for j in jobs:
        h.events.wait(j, "progress")

    h.redis.stop()  # AOF on: the queue survives, every connection drops
    for j in jobs:
        h.set_status(names[j], phase="Running", progress=60)  # while Redis is down
    time.sleep(2)
    h.redis.start()
    later = h.producer.add(lecture_data(lecture="after-restart"))  # new work is taken too
    later_name = h.cr_for(later, timeout=30)["metadata"]["name"]
    for j in jobs:
        h.events.wait(j, "progress", count=2, timeout=30)
    for j in [*jobs, later]:
        h.set_status(names.get(j, later_name), phase="Succeeded", progress=100, videoUrl=f"{VIDEO_URL}?{j}")
    for j in [*jobs, later]:
        assert h.events.wait(j, "completed", timeout=30)[0]["returnvalue"]["videoUrl"] == f"{VIDEO_URL}?{j}"
    for j in jobs:
        assert h.events.progress(j) == [25, 60, 100]
        assert h.events.of(j, "failed") == []
    assert len(h.transcodes()) == 4
    assert intake.proc.poll() is None
    wait_until(lambda: intake.health()[0] == 200, 15, 0.2, "ready again")


def test_newer_upload_supersedes_running_older_one(harness):
    harness.start()
    older_data, newer_data = lecture_data(n=1), lecture_data(n=2)
    older = harness.producer.add(older_data)
    older_cr = harness.cr_for(older)
    harness.set_status(older_cr["metadata"]["name"], phase="Running", progress=40)
    harness.events.wait(older, "progress")

    newer = harness.producer.add(newer_data)
    newer_cr = harness.cr_for(newer)
    failed = harness.events.wait(older, "failed")[0]
    assert failed["failedReason"] == (f"superseded by a newer upload of lecture {older_data['lectureId']} "
                                      f"(VideoTranscode {newer_cr['metadata']['name']})")
    wait_until(lambda: harness.kube.get("videotranscodes", older_cr["metadata"]["name"], NAMESPACE) is None)
    assert harness.producer.job(older)["attemptsMade"] == 1

    # The same upload enqueued twice is not a newer upload: both run.
    duplicate = harness.producer.add(newer_data)
    dup_cr = harness.cr_for(duplicate)
    # An older upload that reaches the intake after a newer one never starts a transcode.
    stale = harness.producer.add(lecture_data(n=0), {"timestamp": 1_000})
    assert "superseded by a newer upload" in harness.events.wait(stale, "failed")[0]["failedReason"]
    assert not harness.transcodes(f"media.lectern.dev/queue-job-id={stale}")

    for cr in (newer_cr, dup_cr):
        harness.set_status(cr["metadata"]["name"], phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    for j in (newer, duplicate):
        assert harness.events.wait(j, "completed")[0]["returnvalue"] == {
            "lectureId": newer_data["lectureId"], "videoUrl": VIDEO_URL}
    # A finished older transcode is history, not superseded.
    again = harness.producer.add(lecture_data(n=3))
    harness.cr_for(again)
    assert harness.kube.get("videotranscodes", newer_cr["metadata"]["name"], NAMESPACE) is not None


def test_hundreds_of_waiting_transcodes_do_not_block_intake(harness):
    intake = harness.start()
    first = [harness.producer.add(lecture_data(lecture=f"wait{i}")) for i in range(150)]
    wait_until(lambda: len(harness.transcodes()) == 150, 30, 0.2, "150 CRs")
    late = harness.producer.add(lecture_data(lecture="late"))
    name = harness.cr_for(late)["metadata"]["name"]
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    harness.events.wait(late, "completed")
    assert intake.metrics()["lectern_intake_jobs_active"] == 150
    for cr in harness.transcodes():
        if cr["metadata"]["name"] != name:
            harness.set_status(cr["metadata"]["name"], phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    wait_until(lambda: all(harness.events.of(j, "completed") for j in first), 60, 0.2, "all completed")
    wait_until(lambda: intake.metrics()["lectern_intake_jobs_completed_total"] == 151, 5)


CREATE = f"post /apis/media.lectern.dev/v1alpha1/namespaces/{NAMESPACE}/videotranscodes"


def test_api_server_errors_are_retried_then_left_to_bullmq_attempts(harness):
    intake = harness.start(intake_kube_retry_seconds=2)
    # A short outage: the intake retries by itself, the job never notices.
    harness.kube[CREATE][:2] << 503
    ok = harness.producer.add(lecture_data(lecture="blip"))
    name = harness.cr_for(ok, timeout=20)["metadata"]["name"]
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    harness.events.wait(ok, "completed")
    assert len(harness.events.of(ok, "active")) == 1

    # A long one: each attempt gives up after the retry budget; BullMQ's attempts retry it.
    harness.kube[CREATE][:1000] << 503
    bad = harness.producer.add(lecture_data(lecture="down"), {"attempts": 2, "backoff": 100})
    failed = harness.events.wait(bad, "failed", timeout=30)[0]
    assert failed["failedReason"].startswith("create VideoTranscode vt-down-"), failed
    assert "HTTP 503" in failed["failedReason"]
    job = harness.producer.job(bad)
    assert job["state"] == "failed" and job["attemptsMade"] == 2
    assert len(harness.events.of(bad, "active")) == 2
    assert not harness.transcodes("media.lectern.dev/lecture-id=down")
    m = intake.metrics()
    assert m["lectern_intake_kube_errors_total"] >= 5
    assert m['lectern_intake_jobs_failed_total{reason="error"}'] == 2


def test_starts_without_redis_live_but_not_ready_then_works(restart_harness):
    h = restart_harness
    h.redis.stop()
    intake = h.start_intake(ready=False)
    wait_until(lambda: intake.health("/healthz")[0] == 200, 20, 0.1, "live")
    status, body = intake.health("/readyz")
    assert status == 503 and body["redis"] != "ok", body
    h.redis.start()
    intake.wait_ready(timeout=40)
    job_id = h.producer.add(lecture_data())
    name = h.cr_for(job_id, timeout=30)["metadata"]["name"]
    h.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    assert h.events.wait(job_id, "completed")[0]["returnvalue"]["videoUrl"] == VIDEO_URL
