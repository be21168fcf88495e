"""The intake's job flow, end to end, against one shared intake process: the Node bullmq
producer and QueueEvents listener as the API, the real API server (the intake logged in as
the chart's intake ServiceAccount, RBAC enforced) with the test playing the operator (patching
the CR's status subresource). Each test uses its own lectures; metrics are deltas."""

from __future__ import annotations

import sys

import pytest

from tests.intake.conftest import AdmissionHook, lecture_data, wait_until

VIDEO_URL = "https://res.cloudinary.com/demo/video/upload/lectern/lectures/L/abc.mp4"


@pytest.fixture()
def flow(shared_harness, request):
    yield shared_harness
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        sys.stderr.write(f"\n----- intake log -----\n{shared_harness.intake.log()[-8000:]}\n")


class Delta:
    def __init__(self, intake):
        self.intake = intake
        self.before = intake.metrics()

    def __call__(self, key: str) -> float:
        return self.intake.metrics().get(key, 0.0) - self.before.get(key, 0.0)

    def wait(self, key: str, value: float, timeout: float = 5.0) -> None:
        wait_until(lambda: self(key) == value, timeout, 0.05, f"{key} += {value} (now {self(key)})")


def test_job_becomes_transcode_progress_and_result(flow):
    delta = Delta(flow.intake)
    data = lecture_data(lecture="happy")
    job_id = flow.producer.add(data)

    cr = flow.cr_for(job_id)
    name = cr["metadata"]["name"]
    assert cr["spec"]["lectureId"] == data["lectureId"]
    assert cr["spec"]["rawVideoUrl"] == data["rawVideoUrl"]
    assert cr["spec"]["instructorId"] == data["instructorId"]
    assert cr["metadata"]["labels"]["media.lectern.dev/lecture-id"] == data["lectureId"]
    assert cr["metadata"]["labels"]["media.lectern.dev/queue-job-id"] == job_id
    assert cr["metadata"]["annotations"]["media.lectern.dev/queue"] == f"bull:{flow.queue}"
    assert cr["metadata"]["annotations"]["media.lectern.dev/queue-job-id"] == job_id

    flow.set_status(name, phase="Queued", progress=0)
    flow.set_status(name, phase="Running", progress=10)
    flow.events.wait(job_id, "progress")
    flow.set_status(name, phase="Running", progress=10, message="still 10")  # no change: no event
    flow.set_status(name, phase="Running", progress=55)
    flow.events.wait(job_id, "progress", count=2)
    flow.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)

    done = flow.events.wait(job_id, "completed")[0]
    assert done["returnvalue"] == {"lectureId": data["lectureId"], "videoUrl": VIDEO_URL}
    progress = flow.events.progress(job_id)
    assert progress == [10, 55, 100]
    assert all(type(p) is int for p in progress)
    job = flow.producer.job(job_id)
    assert job["state"] == "completed" and job["returnvalue"] == done["returnvalue"] and job["progress"] == 100
    assert len(flow.transcodes("media.lectern.dev/lecture-id=happy")) == 1

    delta.wait("lectern_intake_jobs_completed_total", 1)
    assert delta("lectern_intake_jobs_taken_total") == 1
    assert delta("lectern_intake_transcodes_created_total") == 1
    assert delta("lectern_intake_progress_updates_total") == 3


def test_failed_transcode_fails_job_with_reason_and_no_retry(flow):
    delta = Delta(flow.intake)
    job_id = flow.producer.add(lecture_data(lecture="broken"), {"attempts": 3, "backoff": {"type": "fixed", "delay": 100}})
    name = flow.cr_for(job_id)["metadata"]["name"]
    flow.set_status(name, phase="Running", progress=30)
    flow.set_status(name, phase="Failed", progress=30, message="input is not a usable video: no video stream found")
    failed = flow.events.wait(job_id, "failed")[0]
    assert failed["failedReason"] == "input is not a usable video: no video stream found"
    job = flow.producer.job(job_id)
    assert job["state"] == "failed" and job["attemptsMade"] == 1
    assert flow.events.of(job_id, "completed") == []
    assert len(flow.events.of(job_id, "active")) == 1  # never retried
    delta.wait('lectern_intake_jobs_failed_total{reason="transcode_failed"}', 1)


INVALID = {
    "missing lectureId": ({"rawVideoUrl": "https://res.cloudinary.com/a.mp4", "instructorId": "u1"},
                          "lectureId: required field is missing"),
    "missing instructorId": ({"lectureId": "inv1", "rawVideoUrl": "https://res.cloudinary.com/a.mp4"},
                             "instructorId: required field is missing"),
    "http url": ({"lectureId": "inv2", "rawVideoUrl": "http://res.cloudinary.com/a.mp4", "instructorId": "u1"},
                 "rawVideoUrl: must be an https:// URL"),
    "private address": ({"lectureId": "inv3", "rawVideoUrl": "https://169.254.169.254/latest/meta-data", "instructorId": "u1"},
                        "rawVideoUrl: points to a non-public address"),
    "loopback": ({"lectureId": "inv4", "rawVideoUrl": "https://127.0.0.1:6379/", "instructorId": "u1"},
                 "rawVideoUrl: points to a non-public address"),
    "other host": ({"lectureId": "inv5", "rawVideoUrl": "https://evil.example.com/a.mp4", "instructorId": "u1"},
                   "rawVideoUrl: host 'evil.example.com' is not an allowed media host"),
    "number id": ({"lectureId": 12345, "rawVideoUrl": "https://res.cloudinary.com/a.mp4", "instructorId": "u1"},
                  "lectureId: must be a string (got number)"),
    "object url": ({"lectureId": "inv6", "rawVideoUrl": {"url": "https://res.cloudinary.com/a.mp4"}, "instructorId": "u1"},
                   "rawVideoUrl: must be a string (got object)"),
    "null data": (None, "invalid job data: expected an object"),
}


def test_invalid_payloads_fail_without_retry_and_create_nothing(flow):
    delta = Delta(flow.intake)
    before = {c["metadata"]["name"] for c in flow.transcodes()}
    ids = {case: flow.producer.add(data, {"attempts": 5, "backoff": 10}) for case, (data, _) in INVALID.items()}
    for case, job_id in ids.items():
        failed = flow.events.wait(job_id, "failed")[0]
        assert INVALID[case][1] in failed["failedReason"], (case, failed)
        assert failed["failedReason"].startswith("invalid job data: "), failed
    for case, job_id in ids.items():
        job = flow.producer.job(job_id)
        assert job["state"] == "failed" and job["attemptsMade"] == 1, (case, job)
        assert len(flow.events.of(job_id, "active")) == 1, case  # taken once, never retried
    assert {c["metadata"]["name"] for c in flow.transcodes()} == before
    delta.wait('lectern_intake_jobs_failed_total{reason="invalid"}', len(INVALID))
    assert delta("lectern_intake_jobs_invalid_total") == len(INVALID)
    assert delta("lectern_intake_transcodes_created_total") == 0


def test_deleted_transcode_fails_the_job(flow):
    job_id = flow.producer.add(lecture_data(lecture="cancelled"))
    name = flow.cr_for(job_id)["metadata"]["name"]
    flow.kube.delete("videotranscodes", name)
    failed = flow.events.wait(job_id, "failed")[0]
    assert failed["failedReason"] == f"VideoTranscode {name} was deleted before the transcode finished"
    assert flow.producer.job(job_id)["attemptsMade"] == 1


def test_newer_upload_supersedes_running_older_one(flow):
    delta = Delta(flow.intake)
    older_data, newer_data = lecture_data(lecture="reup", n=1), lecture_data(lecture="reup", n=2)
    older = flow.producer.add(older_data)
    older_cr = flow.cr_for(older)
    flow.set_status(older_cr["metadata"]["name"], phase="Running", progress=40)
    flow.events.wait(older, "progress")

    newer = flow.producer.add(newer_data)
    newer_cr = flow.cr_for(newer)
    failed = flow.events.wait(older, "failed")[0]
    assert failed["failedReason"] == ("superseded by a newer upload of lecture reup "
                                      f"(VideoTranscode {newer_cr['metadata']['name']})")
    wait_until(lambda: flow.kube.get("videotranscodes", older_cr["metadata"]["name"]) is None)
    assert flow.producer.job(older)["attemptsMade"] == 1
    delta.wait('lectern_intake_jobs_failed_total{reason="superseded"}', 1)
    assert delta("lectern_intake_transcodes_superseded_total") == 1

    # The same upload enqueued twice is not a newer upload: both run.
    duplicate = flow.producer.add(newer_data)
    dup_cr = flow.cr_for(duplicate)
    # An older upload that reaches the intake after a newer one never starts a transcode.
    stale = flow.producer.add(lecture_data(lecture="reup", n=0), {"timestamp": 1_000})
    assert "superseded by a newer upload" in flow.events.wait(stale, "failed")[0]["failedReason"]
    assert not flow.transcodes(f"media.lectern.dev/queue-job-id={stale}")

    for cr in (newer_cr, dup_cr):
        flow.set_status(cr["metadata"]["name"], phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    for j in (newer, duplicate):
        assert flow.events.wait(j, "completed")[0]["returnvalue"] == {"lectureId": "reup", "videoUrl": VIDEO_URL}
    # A finished older transcode is history, not superseded.
    again = flow.producer.add(lecture_data(lecture="reup", n=3))
    flow.cr_for(again)
    assert flow.kube.get("videotranscodes", newer_cr["metadata"]["name"]) is not None
    assert len(flow.transcodes("media.lectern.dev/lecture-id=reup")) == 3


def test_hundreds_of_waiting_transcodes_do_not_block_intake(flow):
    delta = Delta(flow.intake)
    active_before = flow.intake.metrics()["lectern_intake_jobs_active"]
    first = [flow.producer.add(lecture_data(lecture=f"wait{i}")) for i in range(150)]
    waiting = lambda: [c for c in flow.transcodes() if c["metadata"]["name"].startswith("vt-wait")]  # noqa: E731
    wait_until(lambda: len(waiting()) == 150, 30, 0.2, "150 CRs")
    late = flow.producer.add(lecture_data(lecture="late"))
    name = flow.cr_for(late)["metadata"]["name"]
    flow.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    flow.events.wait(late, "completed")
    assert flow.intake.metrics()["lectern_intake_jobs_active"] == active_before + 150
    for cr in waiting():
        flow.set_status(cr["metadata"]["name"], phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    wait_until(lambda: all(flow.events.of(j, "completed") for j in first), 60, 0.2, "all completed")
    delta.wait("lectern_intake_jobs_completed_total", 151)


def test_health_and_metrics_endpoints(flow):
    status, body = flow.intake.health("/readyz")
    assert status == 200 and body["redis"] == "ok" and body["kubernetes"] == "ok", body
    assert flow.intake.health("/healthz")[0] == 200
    m = flow.intake.metrics()
    for metric in ("jobs_taken_total", "jobs_invalid_total", "jobs_completed_total", "jobs_active",
                   "transcodes_created_total", "transcodes_adopted_total", "transcodes_superseded_total",
                   "jobs_released_total", "progress_updates_total", "kube_errors_total"):
        assert f"lectern_intake_{metric}" in m, metric
    for reason in ("invalid", "transcode_failed", "superseded", "deleted", "error"):
        assert f'lectern_intake_jobs_failed_total{{reason="{reason}"}}' in m


def test_create_conflict_adopts_what_another_replica_created(flow, tmp_path):
    # Another replica created this job's CR between our read and our create: 409 -> adopt. The
    # race is made real with an admission webhook: while the API server admits the intake's
    # create, the test creates the same CR (as the other replica would), then lets the intake's
    # create through; the API server's storage answers it 409 AlreadyExists.
    from lectern_operator.intake import resources as res
    from lectern_operator.intake.payload import parse_payload

    delta = Delta(flow.intake)
    data = lecture_data(lecture="raced")
    job_id, ts = "raced-job-1", 1_700_000_000_000
    queue = f"bull:{flow.queue}"
    name = res.cr_name("raced", job_id, ts, queue)
    body = res.cr_body(parse_payload(data, ["res.cloudinary.com"]), name=name, namespace=flow.namespace,
                       job_id=job_id, job_timestamp=ts, queue=queue)
    raced = []

    def decide(request):
        if hook.user(request) == intake_user and request["name"] == name and not raced:
            raced.append(flow.kube.create(body))  # the other replica wins the race
        return None

    intake_user = f"system:serviceaccount:{flow.namespace}:{flow.identity.service_account('intake')}"
    with AdmissionHook(flow.kube, tmp_path) as hook:
        hook.decide = decide
        assert flow.producer.add(data, {"jobId": job_id, "timestamp": ts}) == job_id
        flow.events.wait(job_id, "active")
        wait_until(lambda: raced, 15, 0.05, "the intake's create reached the API server")
    flow.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    assert flow.events.wait(job_id, "completed")[0]["returnvalue"]["videoUrl"] == VIDEO_URL
    assert [c["metadata"]["uid"] for c in flow.transcodes("media.lectern.dev/lecture-id=raced")] == \
        [raced[0]["metadata"]["uid"]]
    assert delta("lectern_intake_transcodes_adopted_total") == 1
    assert delta("lectern_intake_transcodes_created_total") == 0
    assert f"VideoTranscode {name} was created meanwhile" in flow.intake.log()
