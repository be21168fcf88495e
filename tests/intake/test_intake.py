"""The intake's life cycle, each test with its own intake process(es): kill -9, SIGTERM, Redis
outages, API server errors, a revoked token, lock renewal. Node bullmq producer + QueueEvents as
the API, the real API server (the intake logged in as the chart's intake ServiceAccount) with
the test playing the operator."""

from __future__ import annotations

import time

from tests.intake.conftest import lecture_data, wait_until

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


def test_long_transcodes_keep_their_lock_and_a_lost_lock_hands_over(harness):
    # Lock 1s, stall check every 0.5s, transcodes of 4s: the locks must keep being renewed.
    # Meanwhile one job's lock vanishes (as after a Redis outage longer than the lock): the
    # stalled-job check puts it back and the same intake takes it again while still following
    # it; the older delivery must step aside and the newer one keep renewing the lock.
    import redis

    intake = harness.start(intake_lock_duration_ms=1000, intake_stalled_interval_ms=500)
    steady = harness.producer.add(lecture_data(lecture="steady"))
    lost = harness.producer.add(lecture_data(lecture="lost"))
    names = {j: harness.cr_for(j)["metadata"]["name"] for j in (steady, lost)}
    r = redis.Redis.from_url(harness.redis_url)
    for i, p in enumerate(range(0, 101, 15)):
        for j in (steady, lost):
            harness.set_status(names[j], phase="Running", progress=p)
        if i == 2:
            harness.events.wait(lost, "progress", count=2)
            r.delete(f"bull:{harness.queue}:{lost}:lock")
        time.sleep(0.6)
    harness.events.wait(lost, "stalled", timeout=15)
    harness.events.wait(lost, "active", count=2)
    # Two lock durations: a lock nobody renews would stall the job again.
    harness.events.expect_none(lost, "stalled", seconds=2.0, count=2)
    for j in (steady, lost):
        harness.set_status(names[j], phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
        assert harness.events.wait(j, "completed")[0]["returnvalue"]["videoUrl"] == VIDEO_URL
        assert harness.events.of(j, "failed") == []
    assert harness.events.of(steady, "stalled") == []
    assert len(harness.events.of(steady, "active")) == 1
    assert harness.events.progress(steady) == [15, 30, 45, 60, 75, 90, 100]
    assert len(harness.events.of(lost, "stalled")) == 1
    assert len(harness.transcodes()) == 2
    assert "taking over" in intake.log()


def test_sigterm_hands_in_flight_jobs_back_without_failing_them(harness):
    first = harness.start()
    jobs = [harness.producer.add(lecture_data(lecture=f"lec{i}")) for i in range(3)]
    names = {j: harness.cr_for(j)["metadata"]["name"] for j in jobs}
    for j in jobs:
        harness.set_status(names[j], phase="Running", progress=20)
    for j in jobs:
        harness.events.wait(j, "progress")

    assert first.terminate() == 0  # within terminate()'s bound: it did not wait for the jobs to finish
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


def test_redis_outages_at_start_and_with_jobs_in_flight(restart_harness):
    h = restart_harness
    # Started while Redis is down: live (a restart would not help) but not ready.
    h.redis.stop()
    intake = h.start_intake(ready=False)
    wait_until(lambda: intake.health("/healthz")[0] == 200, 20, 0.1, "live")
    status, body = intake.health("/readyz")
    assert status == 503 and body["redis"] != "ok", body
    h.redis.start()
    intake.wait_ready(timeout=40)

    jobs = [h.producer.add(lecture_data(lecture=f"lec{i}")) for i in range(3)]
    names = {j: h.cr_for(j, timeout=30)["metadata"]["name"] for j in jobs}
    for j in jobs:
        h.set_status(names[j], phase="Running", progress=25)
    for j in jobs:
        h.events.wait(j, "progress")

    h.redis.stop()  # AOF on: the queue survives, every connection drops
    for j in jobs:
        h.set_status(names[j], phase="Running", progress=60)  # while Redis is down
    wait_until(lambda: intake.health("/readyz")[0] == 503, 20, 0.1, "the intake seeing Redis down")
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


def test_api_server_errors_are_retried_then_left_to_bullmq_attempts(harness, admission_hook):
    # The real API server refuses the intake's creates with 503 where the test's admission
    # webhook says so (the status an overloaded or restarting API server answers).
    hook = admission_hook
    intake = harness.start(intake_kube_retry_seconds=2, watch_timeout_seconds=3)
    refused: dict[str, int] = {}

    def decide(request):
        lecture = hook.lecture(request)
        if lecture == "down" or (lecture == "blip" and refused.get("blip", 0) < 2):
            refused[lecture] = refused.get(lecture, 0) + 1
            return 503, "etcd leader changed"
        return None
    hook.decide = decide

    # A short outage: the intake retries by itself, the job never notices.
    ok = harness.producer.add(lecture_data(lecture="blip"))
    name = harness.cr_for(ok, timeout=20)["metadata"]["name"]
    assert refused["blip"] == 2
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    harness.events.wait(ok, "completed")
    assert len(harness.events.of(ok, "active")) == 1

    # A long one: each attempt gives up after the retry budget; BullMQ's attempts retry it.
    bad = harness.producer.add(lecture_data(lecture="down"), {"attempts": 2, "backoff": 100})
    failed = harness.events.wait(bad, "failed", timeout=30)[0]
    assert failed["failedReason"].startswith("create VideoTranscode vt-down-"), failed
    assert "HTTP 503" in failed["failedReason"] and "etcd leader changed" in failed["failedReason"], failed
    job = harness.producer.job(bad)
    assert job["state"] == "failed" and job["attemptsMade"] == 2
    assert len(harness.events.of(bad, "active")) == 2
    assert not harness.transcodes("media.lectern.dev/lecture-id=down")
    m = intake.metrics()
    assert m["lectern_intake_kube_errors_total"] >= 5
    assert m['lectern_intake_jobs_failed_total{reason="error"}'] == 2
    hook.decide = lambda request: None

    # The shared watch breaks for good (its Role loses `watch`; the open watch ends after its
    # 3 s timeout and is refused 403 from then on): jobs fall back to re-reading their CR.
    role = harness.identity.service_account("intake")
    rules = harness.kube.get("roles", role)["rules"]
    for rule in rules:
        rule["verbs"] = [v for v in rule["verbs"] if v != "watch"]
    harness.kube.patch("roles", role, {"rules": rules})
    wait_until(lambda: intake.health()[1].get("kubernetes") == "watch not synced", 15, 0.1, "watch down")
    blind = harness.producer.add(lecture_data(lecture="blind"))
    name = harness.cr_for(blind)["metadata"]["name"]
    harness.set_status(name, phase="Running", progress=50)
    harness.events.wait(blind, "progress", timeout=15)
    harness.set_status(name, phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    harness.events.wait(blind, "completed", timeout=15)
    assert harness.events.progress(blind) == [50, 100]
    assert intake.health()[1].get("kubernetes") == "watch not synced"
    assert "403" in intake.log()


def test_intake_logs_in_again_after_its_token_is_revoked(harness, chart_identity, tmp_path):
    # A kubeconfig with `tokenFile` (as a projected ServiceAccount token is): the token is bound
    # to a Secret, so deleting the Secret revokes it (401); a fresh token written to the file is
    # picked up by Kube.relogin on the next 401, for requests and for the watch.
    kube = harness.kube
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "intake-login"},
                 "type": "Opaque", "data": {}})
    token_file = tmp_path / "intake-token"

    def write_token(token: str) -> None:
        tmp = token_file.with_suffix(".tmp")
        tmp.write_text(token)
        tmp.replace(token_file)  # the intake never reads half a token

    write_token(chart_identity.token("intake", bound_secret="intake-login"))
    kubeconfig = chart_identity.kubeconfig("intake", token_file=token_file)
    intake = harness.start(kubeconfig=kubeconfig, intake_kube_retry_seconds=30, watch_timeout_seconds=3)
    before = harness.producer.add(lecture_data(lecture="pre-revoke"))
    before_cr = harness.cr_for(before)["metadata"]["name"]
    harness.set_status(before_cr, phase="Running", progress=20)
    harness.events.wait(before, "progress")

    kube.delete("secrets", "intake-login")
    wait_until(lambda: _status_with(chart_identity, token_file.read_text()) == 401, 20, 0.2, "the token refused")
    errors = intake.metrics()["lectern_intake_kube_errors_total"]
    during = harness.producer.add(lecture_data(lecture="during-revoke"))
    wait_until(lambda: intake.metrics()["lectern_intake_kube_errors_total"] > errors, 15, 0.1,
               "the intake refused (401)")
    assert not harness.transcodes("media.lectern.dev/lecture-id=during-revoke")
    harness.set_status(before_cr, phase="Running", progress=40)

    write_token(chart_identity.token("intake"))
    during_cr = harness.cr_for(during, timeout=30)["metadata"]["name"]  # created with the new token
    harness.events.wait(before, "progress", count=2, timeout=5)
    after = harness.producer.add(lecture_data(lecture="post-revoke"))
    after_cr = harness.cr_for(after, timeout=5)["metadata"]["name"]
    wait_until(lambda: intake.health()[0] == 200 and intake.health()[1].get("kubernetes") == "ok", 20, 0.2,
               "the watch back")
    for j, name in ((before, before_cr), (during, during_cr), (after, after_cr)):
        harness.set_status(name, phase="Succeeded", progress=100, videoUrl=f"{VIDEO_URL}?{j}")
    for j in (before, during, after):  # promptly: the shared watch follows them again
        assert harness.events.wait(j, "completed", timeout=5)[0]["returnvalue"]["videoUrl"] == f"{VIDEO_URL}?{j}"
        assert harness.events.of(j, "failed") == []
    assert harness.events.progress(before) == [20, 40, 100]
    assert len(harness.transcodes()) == 3
    assert intake.proc.poll() is None


def _status_with(identity, token: str) -> int:
    """The HTTP status the API server answers a list of VideoTranscodes with this bearer token."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(identity.cluster.ca))
    req = urllib.request.Request(identity.kube.server + identity.kube.path("vt"),
                                 headers={"Authorization": f"Bearer {token.strip()}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_replicas_share_the_queue_and_cover_for_each_other(harness):
    a = harness.start(intake_lock_duration_ms=2000)
    b = harness.start_intake(intake_lock_duration_ms=2000)
    jobs = [harness.producer.add(lecture_data(lecture=f"rep{i}")) for i in range(20)]
    wait_until(lambda: len(harness.transcodes()) == 20, 20, 0.1, "20 CRs")
    for j in jobs:
        assert len(harness.events.of(j, "active")) == 1
    taken = {p: p.metrics()["lectern_intake_jobs_active"] for p in (a, b)}
    assert sum(taken.values()) == 20

    a.kill9()  # b's stalled-job check hands a's jobs to b, which adopts their CRs
    wait_until(lambda: b.metrics()["lectern_intake_jobs_active"] == 20, 30, 0.2, "b follows all 20")
    for cr in harness.transcodes():
        harness.set_status(cr["metadata"]["name"], phase="Succeeded", progress=100, videoUrl=VIDEO_URL)
    for j in jobs:
        harness.events.wait(j, "completed")
    assert len(harness.transcodes()) == 20
    m = b.metrics()
    assert m["lectern_intake_transcodes_adopted_total"] == taken[a]
