"""The failure model, end to end: each fault of docs/architecture.md injected into the running
pipeline (the chart installed on the real control plane, tests/e2e/stack.py), then the
invariants of tests/e2e/invariants.py checked. Each test fills in one row of the fault matrix
printed at the end of the run. The faults are the real ones: the Eviction API, a pod deletion
(SIGTERM from the node), SIGKILL of the operator's or intake's container (the node restarts
it), a Redis restart, the node agent stopped (NotReady, taint-based eviction by the real
node-lifecycle controller) and kube-apiserver restarted."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from bson import ObjectId

from tests.e2e.invariants import MATRIX, Invariants, Upload
from tests.e2e.stack import LectureWatch, LocalStack
from tests.e2e.test_pipeline import INSTRUCTOR, api_uploads
from tests.standins.services import ConnectionTrap, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass
class Flight:
    """One upload in flight: what the API did, and a watch on its Lecture."""
    lecture_id: str
    raw_url: str
    job_id: str
    watch: LectureWatch

    def upload(self, expect: str, **kw) -> Upload:
        return Upload(self.lecture_id, self.job_id, self.raw_url, expect, statuses=self.watch.stop(), **kw)


def enqueue(stack: LocalStack, clip: Path | None = None, *, lecture_id: str | None = None, raw_url: str | None = None,
            version: str = "", opts: dict | None = None, poll: float = 0.02) -> Flight:
    lecture_id = lecture_id or str(ObjectId())
    raw_url = raw_url or stack.upload_raw(clip, lecture_id, version=version)
    api_uploads(stack, lecture_id, raw_url)
    watch = LectureWatch(stack.lectures, ObjectId(lecture_id), interval=poll)
    job_id = stack.producer.add({"lectureId": lecture_id, "rawVideoUrl": raw_url, "instructorId": INSTRUCTOR}, opts)
    return Flight(lecture_id, raw_url, job_id, watch)


def encoding_pod(stack: LocalStack, flight: Flight, at_least: int = 5) -> tuple[dict, str]:
    """Waits until ffmpeg is encoding (the transcoder's report on the CR) and returns the CR
    and the name of the pod doing it."""
    def encoding():
        vt = stack.transcode_for(flight.job_id)
        report = (vt.get("status") or {}).get("report") or {}
        return vt if report.get("stage") == "encoding" and (report.get("progress") or 0) >= at_least else None
    vt = wait_until(encoding, 120, 0.05, f"job {flight.job_id} encoding")
    pods = [p for p in stack.pods_of(vt["status"]["jobName"]) if p["status"].get("phase") == "Running"]
    assert len(pods) == 1, pods
    name = pods[0]["metadata"]["name"]
    plan = [line for line in stack.pod_log(pods[0]).splitlines() if '"event": "plan"' in line]
    assert plan and json.loads(plan[0])["mode"] == "transcode", plan  # ffmpeg encodes, not a remux
    return vt, name


def job_failures(stack: LocalStack, vt: dict) -> int:
    [job] = stack.recorder.jobs_for(vt["metadata"]["name"])
    return int((job.get("status") or {}).get("failed") or 0)


def exit_code(pod: dict) -> int | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return ((statuses[0].get("state") or {}).get("terminated") or {}).get("exitCode")


def test_pod_evicted_mid_encode_retries_without_spending_the_budget(stack, long_clip, request):
    row = MATRIX.row("transcoder pod evicted mid-encode (Eviction API, as kubectl drain)", request)
    f = enqueue(stack, long_clip)
    vt, pod = encoding_pod(stack, f)
    stack.kube.evict(pod)  # the API server adds DisruptionTarget, the node stops the pod
    done = stack.events.wait(f.job_id, "completed", timeout=120)[0]
    up = f.upload("completed")
    vt = stack.transcode_for(f.job_id)
    pods = stack.recorder.pods_for(vt["status"]["jobName"])
    assert len(pods) == 2 and vt["status"]["attempts"] == 2, [p["metadata"]["name"] for p in pods]
    evicted = next(p for p in pods if p["metadata"]["name"] == pod)
    assert any(c["type"] == "DisruptionTarget" for c in evicted["status"]["conditions"])
    assert job_failures(stack, vt) == 0  # the pod failure policy's Ignore rule
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], up.statuses
    assert done["returnvalue"]["videoUrl"] == vt["status"]["videoUrl"]
    row.done("READY; 2nd pod, Job failures 0 (DisruptionTarget ignored)", Invariants(stack, [up]).all())


def test_transcoder_sigterm_cleans_up_and_is_retried(stack, long_clip, request):
    row = MATRIX.row("transcoder SIGTERM (pod deleted mid-encode)", request)
    f = enqueue(stack, long_clip)
    vt, pod = encoding_pod(stack, f)
    stack.kube.delete("pods", pod)  # the node sends SIGTERM
    stack.events.wait(f.job_id, "completed", timeout=120)
    up = f.upload("completed")
    vt = stack.transcode_for(f.job_id)
    killed = next(p for p in stack.recorder.pods_for(vt["status"]["jobName"]) if p["metadata"]["name"] == pod)
    assert exit_code(killed) == 143, killed["status"]
    exits = [(r["exitCode"], r["files"]) for r in stack.leftovers() if r["pod"] == pod]
    assert exits == [(143, [])], exits  # it removed its own temp files
    assert job_failures(stack, vt) == 1 and vt["status"]["attempts"] == 2
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], up.statuses
    row.done("READY; exit 143 with scratch empty, retried as failure 1 of 3", Invariants(stack, [up]).all())


def test_operator_killed_and_restarted_mid_flight(stack, long_clip, request):
    row = MATRIX.row("operator SIGKILLed mid-encode, restarted", request)
    f = enqueue(stack, long_clip)
    vt, _ = encoding_pod(stack, f)
    restarts = stack.operator.kill()  # its container's processes; the node restarts the container
    stack.operator.wait_ready()
    assert stack.operator.restarts() == restarts + 1
    stack.events.wait(f.job_id, "completed", timeout=120)
    up = f.upload("completed")
    stack.notifications.wait(f.lecture_id, "VIDEO_READY", 15)
    types = [m["type"] for m in stack.notifications.of(f.lecture_id)]
    assert types.count("VIDEO_PROCESSING") == 1 and types.count("VIDEO_READY") == 1, types
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], up.statuses
    row.done("READY; the new operator adopted the running Job", Invariants(stack, [up]).all())


def test_intake_killed_mid_flight(stack, long_clip, request):
    row = MATRIX.row("intake SIGKILLed mid-encode, restarted", request)
    f = enqueue(stack, long_clip)
    encoding_pod(stack, f)
    restarts = stack.intake.kill()
    stack.intake.wait_ready()
    assert stack.intake.restarts() == restarts + 1
    done = stack.events.wait(f.job_id, "completed", timeout=120)[0]
    up = f.upload("completed")
    assert stack.producer.job(f.job_id)["attemptsMade"] <= 1
    assert done["returnvalue"]["lectureId"] == f.lecture_id
    row.done("completed after the lock expired; the new intake adopted the CR", Invariants(stack, [up]).all())


def test_redis_restarted_mid_flight(stack, long_clip, small_clip, request):
    row = MATRIX.row("Redis restarted mid-encode (AOF on)", request)
    f = enqueue(stack, long_clip)
    encoding_pod(stack, f)
    stack.redis.restart()
    done = stack.events.wait(f.job_id, "completed", timeout=120)[0]
    up = f.upload("completed")
    vt = stack.transcode_for(f.job_id)
    # The queue, the lock and the job's data survived (AOF): one attempt, one CR, one pod.
    assert stack.producer.job(f.job_id)["attemptsMade"] <= 1
    assert vt["status"]["attempts"] == 1 and len(stack.recorder.pods_for(vt["status"]["jobName"])) == 1
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], up.statuses
    assert done["returnvalue"]["videoUrl"] == vt["status"]["videoUrl"]
    # Pub/sub is fire-and-forget: a message published while the subscriber reconnected is gone,
    # which is what the durable stream is for; that one holds the final, once.
    assert [m["type"] for m in stack.finals_in_stream(f.lecture_id)] == ["VIDEO_READY"]
    # Everyone reconnected: new work after the restart goes through the same Redis.
    after = enqueue(stack, small_clip)
    stack.events.wait(after.job_id, "completed", timeout=120)
    assert stack.notifications.wait(after.lecture_id, "VIDEO_READY", 15)["userId"] == INSTRUCTOR
    row.done("completed; queue and lock survived, everyone reconnected (new work after it READY)",
             Invariants(stack, [up, after.upload("completed")], pubsub_complete=False).all())


def test_cdn_drops_download_and_fails_upload(stack, lecture_clip, request):
    row = MATRIX.row("CDN drops the download twice, fails the upload twice", request)
    lecture_id = str(ObjectId())
    raw_url = stack.upload_raw(lecture_clip, lecture_id)  # the API's upload, before the faults
    control = stack.cloudinary.control
    control.drop_connection_after(150_000, times=2)
    control.fail_next(2, 503, "upload")
    try:
        f = enqueue(stack, lecture_id=lecture_id, raw_url=raw_url)
        stack.events.wait(f.job_id, "completed", timeout=90)
        up = f.upload("completed")
    finally:
        control.clear_faults()
    vt = stack.transcode_for(f.job_id)
    assert vt["status"]["attempts"] == 1  # retried inside the pod, not by the Job
    log = stack.pod_log(stack.recorder.pods_for(vt["status"]["jobName"])[0])
    retries = [e for e in map(json.loads, filter(lambda line: line.startswith("{"), log.splitlines()))
               if e["event"] == "retry"]
    stages = [e["stage"] for e in retries]
    assert stages.count("downloading") == 2 and stages.count("uploading") == 2, retries
    assert "resuming at byte" in retries[0]["reason"], retries  # Range, not a fresh download
    row.done("READY in 1 pod: download resumed, upload retried", Invariants(stack, [up]).all())


def test_unusable_input_fails_fast_once(stack, tmp_path, request):
    row = MATRIX.row("unusable input (random bytes)", request)
    junk = tmp_path / "not-a-video.mp4"
    junk.write_bytes(os.urandom(200_000))
    lecture_id = str(ObjectId())
    raw_url = stack.plant_raw(junk, lecture_id)
    # attempts: 3 - BullMQ would retry a plain failure; an unusable input must not be.
    f = enqueue(stack, lecture_id=lecture_id, raw_url=raw_url,
                opts={"attempts": 3, "backoff": {"type": "fixed", "delay": 200}})
    failed = stack.events.wait(f.job_id, "failed", timeout=60)[0]
    reason = failed["failedReason"]
    assert reason.startswith("unusable input: "), reason
    note = stack.notifications.wait(lecture_id, "VIDEO_FAILED", 15)
    assert note["userId"] == INSTRUCTOR and reason.removeprefix("unusable input: ") in note["message"]
    # No retry can follow: BullMQ put the job in its failed set (a retry would have left it
    # delayed), and the Job controller failed the Job by the pod failure policy (no new pod).
    assert stack.producer.job(f.job_id)["state"] == "failed"
    vt = stack.transcode_for(f.job_id)
    job = wait_until(lambda: next((j for j in stack.recorder.jobs_for(vt["metadata"]["name"])
                                   if any(c["type"] == "Failed" and c["status"] == "True"
                                          for c in (j.get("status") or {}).get("conditions") or [])), None),
                     30, 0.1, "the Job marked Failed")
    assert next(c for c in job["status"]["conditions"] if c["type"] == "Failed")["reason"] == "PodFailurePolicy"
    up = f.upload("failed")
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "FAILED"], up.statuses
    doc = stack.lectures.find_one({"_id": ObjectId(lecture_id)})
    assert doc["rawVideoUrl"] == raw_url and "videoUrl" not in doc and doc["failureReason"] == reason
    assert stack.producer.job(f.job_id)["attemptsMade"] == 1
    vt = stack.transcode_for(f.job_id)
    pods = stack.recorder.pods_for(vt["status"]["jobName"])
    assert [exit_code(p) for p in pods] == [65], [p["status"] for p in pods]
    row.done(f"FAILED at once (exit 65, 1 pod, no BullMQ retry): {reason[:40]}...", Invariants(stack, [up]).all())


@pytest.fixture
def trap():
    t = ConnectionTrap()
    yield t
    t.close()


# {trap}: a loopback port that is not the emulator's (its one test exception), so refused.
@pytest.mark.parametrize("url", ["https://169.254.169.254/latest/meta-data/iam/",
                                 "https://res.cloudinary.com.evil.example/video/upload/x.mp4",
                                 "https://127.0.0.1:{trap}/demo/video/upload/x.mp4",
                                 "https://localhost:{trap}/demo/video/upload/x.mp4"])
def test_ssrf_url_is_refused_before_any_request(stack, trap, url, request):
    url = url.format(trap=trap.port)
    row = MATRIX.row(f"SSRF rawVideoUrl {url[:40]}", request)
    transcodes_before = len(stack.transcodes())
    f = enqueue(stack, raw_url=url, opts={"attempts": 3})
    failed = stack.events.wait(f.job_id, "failed", timeout=20)[0]
    assert "rawVideoUrl" in failed["failedReason"], failed
    job = stack.producer.job(f.job_id)
    assert job["state"] == "failed" and job["attemptsMade"] == 1, job  # refused for good, not retried
    up = f.upload("failed", expect_cr=False)
    assert up.statuses == ["AWAITING_MEDIA"], up.statuses
    assert len(stack.transcodes()) == transcodes_before  # nothing was created that could fetch it
    assert trap.connections == 0
    row.done(f"job failed, no CR, no connection: {failed['failedReason'][:50]}", Invariants(stack, [up]).all())


def test_newer_upload_wins_over_a_running_older_one(stack, long_clip, lecture_clip, request):
    row = MATRIX.row("newer upload while the older transcode runs", request)
    old = enqueue(stack, long_clip)
    encoding_pod(stack, old)
    new = enqueue(stack, lecture_clip, lecture_id=old.lecture_id, version="-v2")
    failed = stack.events.wait(old.job_id, "failed", timeout=30)[0]
    assert "superseded" in failed["failedReason"], failed
    done = stack.events.wait(new.job_id, "completed", timeout=90)[0]
    old_up = old.upload("failed", superseded=True)
    up = new.upload("completed")
    doc = stack.lectures.find_one({"_id": ObjectId(new.lecture_id)})
    assert doc["status"] == "READY" and doc["rawVideoUrl"] == new.raw_url
    assert doc["videoUrl"] == done["returnvalue"]["videoUrl"]
    types = [m["type"] for m in stack.notifications.of(new.lecture_id)]
    assert types.count("VIDEO_READY") == 1 and "VIDEO_FAILED" not in types, types
    row.done("older job failed 'superseded', newer READY; no stale write", Invariants(stack, [old_up, up]).all())


@pytest.mark.timeout(360)
def test_twenty_jobs_at_once_with_a_cap_of_two(stack, small_clip, request):
    row = MATRIX.row(f"20 jobs at once, cap {stack.max_concurrent}", request)
    # An earlier test's pod may still be terminating (a superseded transcode's CR is deleted and
    # its slot freed at once; its pod stops on its own time): it is not one of these twenty.
    wait_until(lambda: not stack.recorder.running, 60, 0.2, "no transcode pod left running by an earlier test")
    stack.recorder.reset_peak()
    lectures = [str(ObjectId()) for _ in range(20)]
    raws = [stack.upload_raw(small_clip, lid) for lid in lectures]
    t0 = time.monotonic()
    # Twenty Lectures polled every 0.2 s (not 20 ms): PROCESSING lasts seconds, and MongoDB
    # shares the two cores with everything else.
    flights = [enqueue(stack, lecture_id=lid, raw_url=raw, poll=0.2) for lid, raw in zip(lectures, raws)]
    for f in flights:
        stack.events.wait(f.job_id, "completed", timeout=300)
    took = time.monotonic() - t0
    ups = [f.upload("completed") for f in flights]
    assert stack.recorder.max_running == stack.max_concurrent, stack.recorder.max_running
    assert all(u.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"] for u in ups), [u.statuses for u in ups]
    row.done(f"20 READY in {took:.0f}s, at most {stack.recorder.max_running} pods at once", Invariants(stack, ups).all())


def node_ready(stack: LocalStack) -> bool:
    node = stack.admin.get("nodes", stack.cluster.node_name) or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions") or [])


@pytest.mark.timeout(240)
def test_node_lost_mid_encode(stack, long_clip, request):
    """The node agent stops (every container SIGKILLed, no more heartbeats): the real
    node-lifecycle controller marks the node NotReady (status Unknown) and taints it. With its
    only node down it enters "master disruption mode" and, by design, evicts nothing (it blames
    the control plane's network, not the node); so the admin does what Kubernetes documents for
    a node that is really gone (non-graceful node shutdown): the `out-of-service` taint. Then
    the real taint-eviction controller evicts every pod (DisruptionTarget) and the pod garbage
    collector force-deletes them; the Job makes a new pod without spending its failure budget,
    the Deployments new operator and intake pods, all Pending until the node is back and the
    taint removed; the new operator adopts the Job, the new intake the queue job."""
    row = MATRIX.row("node lost mid-encode (node agent stopped, NotReady, out-of-service taint), back", request)
    f = enqueue(stack, long_clip)
    vt, pod = encoding_pod(stack, f)
    node = stack.cluster.node_name
    t0 = time.monotonic()
    stack.cluster.stop_node()
    try:
        wait_until(lambda: not node_ready(stack), 60, 0.5, "node NotReady")
        not_ready = time.monotonic() - t0
        stack.kubectl("taint", "nodes", node, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute")
        try:
            wait_until(lambda: stack.kube.get("pods", pod) is None, 60, 0.5, f"pod {pod} evicted and collected")
        except TimeoutError:
            raise AssertionError(f"{pod} not evicted: {json.dumps((stack.kube.get('pods', pod) or {}).get('status'))}"
                                 f"\n{stack.cluster.procs['controller_manager'].tail(40)}") from None
        evicted_after = time.monotonic() - t0
    finally:
        stack.cluster.start_node()
        stack.kubectl("taint", "nodes", node, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute-",
                      check=False)
    stack.operator.wait_ready(90)
    stack.intake.wait_ready(90)
    done = stack.events.wait(f.job_id, "completed", timeout=150)[0]
    up = f.upload("completed")
    vt = stack.transcode_for(f.job_id)
    pods = stack.recorder.pods_for(vt["status"]["jobName"])
    assert len(pods) >= 2 and pods[0]["metadata"]["name"] == pod, [p["metadata"]["name"] for p in pods]
    assert job_failures(stack, vt) == 0  # DisruptionTarget: the Ignore rule
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], up.statuses
    assert done["returnvalue"]["videoUrl"] == vt["status"]["videoUrl"]
    types = [m["type"] for m in stack.notifications.of(f.lecture_id)]
    assert types.count("VIDEO_READY") == 1, types
    row.done(f"READY; NotReady after {not_ready:.0f}s, pods evicted after {evicted_after:.0f}s, "
             f"{len(pods)} pods, Job failures 0", Invariants(stack, [up]).all())


def test_apiserver_restarted_mid_encode(stack, long_clip, request):
    """kube-apiserver stops and starts again on the same port (etcd keeps the state): every
    watch breaks (operator, intake, node agent, controllers), everyone reconnects, the pod
    keeps encoding and its reports get through again."""
    row = MATRIX.row("kube-apiserver restarted mid-encode", request)
    f = enqueue(stack, long_clip)
    vt, pod = encoding_pod(stack, f)
    t0 = time.monotonic()
    stack.cluster.restart_apiserver()
    outage = time.monotonic() - t0
    done = stack.events.wait(f.job_id, "completed", timeout=120)[0]
    up = f.upload("completed")
    stack.notifications.wait(f.lecture_id, "VIDEO_READY", 15)
    vt = stack.transcode_for(f.job_id)
    assert vt["status"]["attempts"] == 1 and [p["metadata"]["name"] for p in
                                              stack.recorder.pods_for(vt["status"]["jobName"])] == [pod]
    types = [m["type"] for m in stack.notifications.of(f.lecture_id)]
    assert types.count("VIDEO_PROCESSING") == 1 and types.count("VIDEO_READY") == 1, types
    assert up.statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], up.statuses
    assert done["returnvalue"]["videoUrl"] == vt["status"]["videoUrl"]
    row.done(f"READY in the same pod; API down {outage:.0f}s, everyone reconnected, one final",
             Invariants(stack, [up]).all())
