"""Adopting an existing VideoTranscode (operator/intake/worker.py `_ensure`): a redelivered job
takes over the CR it made before, but never one that another job or upload made under the same
name, and never one that is being deleted. The CR is put in place before the job is enqueued (the
job's id and timestamp are fixed with BullMQ's `jobId` and `timestamp` options, so the test knows
the name the intake will look for), on the real API server, with the real Node producer."""

from __future__ import annotations

import time

import pytest

from lectern_operator.intake import resources as res
from lectern_operator.intake.payload import parse_payload
from tests.intake.conftest import ALLOWED_HOST, lecture_data

HOLD = "test.lectern.dev/hold"


def existing_cr(harness, data: dict, *, job_id: str, timestamp: int, made_for_job: str | None = None,
                made_for_data: dict | None = None, finalizer: bool = False) -> dict:
    """The CR the intake will find under the name it computes for (data, job_id, timestamp);
    `made_for_*` say which job/upload it claims to have been made for."""
    queue = res.queue_key("bull", harness.queue)
    name = res.cr_name(data["lectureId"], job_id, timestamp, queue)
    payload = parse_payload(made_for_data or data, [ALLOWED_HOST])
    body = res.cr_body(payload, name=name, namespace=harness.namespace, job_id=made_for_job or job_id,
                       job_timestamp=timestamp, queue=queue)
    if finalizer:
        body["metadata"]["finalizers"] = [HOLD]
    return harness.kube.create(body)


def release(harness, name: str) -> None:
    if harness.kube.get("videotranscodes", name) is not None:
        harness.kube.patch("videotranscodes", name, {"metadata": {"finalizers": None}})


@pytest.mark.parametrize("whose", ["another job", "another upload"])
def test_refuses_to_adopt_a_cr_made_for_another_job_or_upload(harness, whose):
    intake = harness.start()
    data = lecture_data(lecture="adopt-other")
    ts = int(time.time() * 1000)
    if whose == "another job":
        cr = existing_cr(harness, data, job_id="job-a", timestamp=ts, made_for_job="job-z")
    else:
        cr = existing_cr(harness, data, job_id="job-a", timestamp=ts, made_for_data=lecture_data(lecture="adopt-other", n=2))
    name, rv = cr["metadata"]["name"], cr["metadata"]["resourceVersion"]

    job_id = harness.producer.add(data, {"jobId": "job-a", "timestamp": ts, "attempts": 3})
    assert job_id == "job-a"
    failed = harness.events.wait(job_id, "failed")[0]
    assert failed["failedReason"] == (f"VideoTranscode {name} already exists for another job or upload; "
                                      "refusing to adopt it")
    job = harness.producer.job(job_id)
    assert job["state"] == "failed" and job["attemptsMade"] == 1  # not retried: it would refuse again

    after = harness.kube.get("videotranscodes", name)  # left exactly as it was: not taken, not deleted
    assert after["metadata"]["uid"] == cr["metadata"]["uid"] and after["metadata"]["resourceVersion"] == rv
    assert [c["metadata"]["name"] for c in harness.transcodes()] == [name]
    m = intake.metrics()
    assert m["lectern_intake_transcodes_adopted_total"] == 0
    assert m["lectern_intake_transcodes_created_total"] == 0


def test_adopts_its_own_cr(harness):
    # the control: the same set-up with the CR made for this very job is adopted and followed
    intake = harness.start()
    data = lecture_data(lecture="adopt-own")
    ts = int(time.time() * 1000)
    name = existing_cr(harness, data, job_id="job-b", timestamp=ts)["metadata"]["name"]
    job_id = harness.producer.add(data, {"jobId": "job-b", "timestamp": ts})
    harness.events.wait(job_id, "active")
    url = "https://res.cloudinary.com/demo/video/upload/lectern/lectures/adopt-own/v.mp4"
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=url)
    assert harness.events.wait(job_id, "completed")[0]["returnvalue"] == {"lectureId": "adopt-own", "videoUrl": url}
    assert intake.metrics()["lectern_intake_transcodes_adopted_total"] == 1


@pytest.mark.parametrize("superseded", [False, True])
def test_a_cr_being_deleted_is_not_adopted(harness, superseded):
    # A CR held by a finalizer after its deletion (deletionTimestamp set): following it would
    # wait for a transcode that is being cancelled. The job fails without retry, saying why;
    # the CR is neither recreated nor released.
    intake = harness.start()
    data = lecture_data(lecture="adopt-dying")
    ts = int(time.time() * 1000)
    cr = existing_cr(harness, data, job_id="job-c", timestamp=ts, finalizer=True)
    name = cr["metadata"]["name"]
    try:
        if superseded:
            harness.kube.patch("videotranscodes", name,
                               {"metadata": {"annotations": {res.ANN_SUPERSEDED_BY: "vt-newer"}}})
        harness.kube.delete("videotranscodes", name)
        dying = harness.kube.get("videotranscodes", name)
        assert dying["metadata"].get("deletionTimestamp"), dying["metadata"]

        job_id = harness.producer.add(data, {"jobId": "job-c", "timestamp": ts, "attempts": 3})
        failed = harness.events.wait(job_id, "failed")[0]
        if superseded:
            assert failed["failedReason"] == ("superseded by a newer upload of lecture adopt-dying "
                                              "(VideoTranscode vt-newer)")
        else:
            assert failed["failedReason"] == f"VideoTranscode {name} was deleted before the transcode finished"
        job = harness.producer.job(job_id)
        assert job["state"] == "failed" and job["attemptsMade"] == 1

        still = harness.kube.get("videotranscodes", name)
        assert still["metadata"]["uid"] == cr["metadata"]["uid"] and still["metadata"]["finalizers"] == [HOLD]
        assert [c["metadata"]["name"] for c in harness.transcodes()] == [name]
        assert intake.metrics()["lectern_intake_transcodes_adopted_total"] == 0
    finally:
        release(harness, name)
