"""The intake's life cycle, each test with its own intake process(es): kill -9, SIGTERM, Redis
outages, API server errors, lock renewal. Node bullmq producer + QueueEvents as the API, the
Kubernetes emulator with the test playing the operator."""

from __future__ import annotations

import time

from tests.intake.conftest import NAMESPACE, lecture_data, wait_until

VIDEO_URL = "https://res.cloudinary.com/demo/video/upload/lectern/lectures/L/abc.mp4"


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


def test_lost_lock_redelivery_to_the_same_intake_hands_over(harness):
    # The job's lock vanishes (as after a Redis outage longer than the lock): the stalled-job
    # check puts it back, the same intake takes it again while still following it. The older
    # delivery must step aside and the newer one keep the lock renewed to the end.
    import redis

    intake = harness.start(intake_lock_duration_ms=1500, intake_stalled_interval_ms=500)
    job_id = harness.producer.add(lecture_data(lecture="handover"))
    name = harness.cr_for(job_id)["metadata"]["name"]
    harness.set_status(name, phase="Running", progress=10)
    harness.events.wait(job_id, "progress")
    r = redis.Redis.from_url(harness.redis_url)
    r.delete(f"bull:{harness.queue}:{job_id}:lock")
    harness.events.wait(job_id, "stalled", timeout=15)
    harness.events.wait(job_id, "active", count=2)
    time.sleep(3)  # two lock durations: a lock nobody renews would stall the job again
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    assert harness.events.wait(job_id, "completed")[0]["returnvalue"]["videoUrl"] == VIDEO_URL
    assert len(harness.events.of(job_id, "stalled")) == 1
    assert harness.events.of(job_id, "failed") == []
    assert len(harness.transcodes()) == 1
    assert "taking over" in intake.log()
