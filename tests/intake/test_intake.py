"""The intake end to end: Node bullmq producer + QueueEvents (as the API), Python intake
subprocess, Kubernetes emulator; the test plays the operator by patching CR status."""

from __future__ import annotations

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

    m = intake.metrics()
    assert m["lectern_intake_jobs_taken_total"] == 1
    assert m["lectern_intake_jobs_completed_total"] == 1
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
