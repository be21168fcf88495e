"""The operator end to end on the stand-ins, with Job/pod states set by hand (no kubelet):
admission and the cap, priority order, status, Lecture, notifications, restart, stale
transcodes, Mongo down, watchdog, deletion."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.operator.conftest import NS, fake_pod, finish_job, make_cr, phase_is, wait_until
from tests.standins.services import MongoServer
from tests.operator.conftest import ROOT

RAW = "https://res.cloudinary.com/demo/video/upload/{}.mov"
OUT = "https://res.cloudinary.com/demo/video/upload/out-{}.mp4"


def _lecture(lectures, lid: str, status: str = "AWAITING_MEDIA", raw: str | None = None) -> None:
    lectures.insert_one({"_id": lid, "status": status, "rawVideoUrl": raw or RAW.format(lid)})


def _report(kube, name: str, **report) -> None:
    kube.patch("vt", name, {"status": {"report": report}}, NS, subresource="status")


def _succeed(kube, name: str, lid: str) -> None:
    vt = kube.get("vt", name, NS)
    kube.wait_for("jobs", vt["status"]["jobName"], NS)  # the Job follows the Running status at once
    _report(kube, name, stage="done", progress=100, videoUrl=OUT.format(lid), cpuSeconds=30.0,
            bytesDownloaded=10_000, bytesUploaded=2_000, speed=3.0)
    finish_job(kube, vt["status"]["jobName"])


def _reasons(kube, name: str) -> list[str]:
    return [e["reason"] for e in kube.events(kube.get("vt", name, NS))]


async def _two_running_one_queued(kube, names: list[str]) -> tuple[list[str], str]:
    """CRs created within the same instant are admitted as the operator sees them: any two."""
    await wait_until(lambda: sum(kube.get("vt", n, NS).get("status", {}).get("phase") == "Running" for n in names) == 2
                     and sum(kube.get("vt", n, NS).get("status", {}).get("phase") == "Queued" for n in names) == 1,
                     what="two Running, one Queued")
    running = [n for n in names if kube.get("vt", n, NS)["status"]["phase"] == "Running"]
    queued = next(n for n in names if n not in running)
    return running, queued


async def test_cap_and_success_flow(kube, operator, lectures, notifications):
    for i in range(3):
        _lecture(lectures, f"lec{i}")
        kube.create(make_cr(f"vt-{i}", f"lec{i}"))
    running, queued = await _two_running_one_queued(kube, ["vt-0", "vt-1", "vt-2"])
    await asyncio.sleep(0.5)
    assert kube.get("vt", queued, NS)["status"]["phase"] == "Queued"
    assert len(kube.list("jobs", NS)) == 2
    first = running[0]
    lid = kube.get("vt", first, NS)["spec"]["lectureId"]
    await wait_until(lambda: lectures.find_one({"_id": lid})["status"] == "PROCESSING", what="lecture PROCESSING")
    _report(kube, first, stage="encoding", progress=40, cpuSeconds=12.5, bytesDownloaded=1000, speed=2.5)
    await kube.await_for("vt", first, NS, lambda o: o["status"].get("progress") == 40)
    await wait_until(lambda: notifications.of(lid, "VIDEO_PROGRESS"), what="progress notification")
    assert notifications.of(lid, "VIDEO_PROGRESS")[-1]["progress"] == 40
    _succeed(kube, first, lid)
    done = await kube.await_for("vt", first, NS, phase_is("Succeeded"))
    st = done["status"]
    assert st["videoUrl"] == OUT.format(lid) and st["progress"] == 100 and st["message"] == "ready"
    assert st["cost"]["cpuSeconds"] == 30.0 and st["cost"]["bytesUploaded"] == 2000 and st["cost"]["speed"] == 3.0
    assert st["cost"]["wallSeconds"] >= 0 and st["completedAt"] and st["startedAt"] and st["queuedAt"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Complete"] == "True"
    await kube.await_for("vt", queued, NS, phase_is("Running"))  # the freed slot is taken
    await wait_until(lambda: lectures.find_one({"_id": lid})["status"] == "READY", what="lecture READY")
    assert lectures.find_one({"_id": lid})["videoUrl"] == OUT.format(lid)
    await wait_until(lambda: notifications.of(lid, "VIDEO_READY"), what="ready notification")
    kinds = [m["type"] for m in notifications.of(lid)]
    assert kinds[0] == "VIDEO_PROCESSING" and kinds[-1] == "VIDEO_READY" and kinds.count("VIDEO_READY") == 1
    ready = notifications.of(lid, "VIDEO_READY")[0]
    assert ready == {"userId": "inst-1", "type": "VIDEO_READY", "message": ready["message"], "lectureId": lid,
                     "videoUrl": OUT.format(lid), "progress": 100}
    for r in ("Queued", "Started", "LectureUpdated", "Succeeded", "Notified"):
        await wait_until(lambda: r in _reasons(kube, first), what=f"{r} event")
    # kopf's bookkeeping lives in annotations, not in status
    assert "kopf" not in st
    # finals also land in the capped stream for a Socket.IO server that was down
    import redis
    r = redis.Redis.from_url(operator.settings.redis_url.get_secret_value())
    stream = [json.loads(e[1][b"data"]) for e in r.xrange(operator.settings.notifications_stream)]
    assert [m["type"] for m in stream if m["lectureId"] == lid] == ["VIDEO_READY"]


async def test_unusable_input_fails_without_retry(kube, operator, lectures, notifications):
    _lecture(lectures, "bad")
    kube.create(make_cr("vt-bad", "bad"))
    vt = await kube.await_for("vt", "vt-bad", NS, phase_is("Running"))
    job = await kube.await_for("jobs", vt["status"]["jobName"], NS)
    fake_pod(kube, "vt-bad", job, 0, phase="Failed", exit_code=65,
             message=json.dumps({"exitCode": 65, "reason": "no video stream in the input"}))
    finish_job(kube, job["metadata"]["name"], ok=False, reason="PodFailurePolicy",
               message="Container transcoder for pod lectern/x failed with exit code 65 matching FailJob rule at index 0")
    vt = await kube.await_for("vt", "vt-bad", NS, phase_is("Failed"))
    assert vt["status"]["message"] == "unusable input: no video stream in the input"
    assert vt["status"]["attempts"] == 1
    await wait_until(lambda: lectures.find_one({"_id": "bad"})["status"] == "FAILED", what="lecture FAILED")
    doc = lectures.find_one({"_id": "bad"})
    assert doc["rawVideoUrl"] == RAW.format("bad") and "no video stream" in doc["failureReason"]
    await wait_until(lambda: notifications.of("bad", "VIDEO_FAILED"), what="failed notification")
    await asyncio.sleep(0.5)
    assert len(notifications.of("bad", "VIDEO_FAILED")) == 1
    await wait_until(lambda: "Failed" in _reasons(kube, "vt-bad"), what="Failed event")


async def test_disruption_is_a_retry_not_a_failure(kube, operator, lectures, notifications):
    _lecture(lectures, "dis")
    kube.create(make_cr("vt-dis", "dis"))
    vt = await kube.await_for("vt", "vt-dis", NS, phase_is("Running"))
    job = await kube.await_for("jobs", vt["status"]["jobName"], NS)
    fake_pod(kube, "vt-dis", job, 0, phase="Failed", exit_code=143, message="",
             conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}])
    fake_pod(kube, "vt-dis", job, 1, phase="Running")
    vt = await kube.await_for("vt", "vt-dis", NS, lambda o: o["status"].get("attempts") == 2)
    assert vt["status"]["phase"] == "Running"
    await wait_until(lambda: "Retrying" in _reasons(kube, "vt-dis"), what="Retrying event")
    _succeed(kube, "vt-dis", "dis")
    await kube.await_for("vt", "vt-dis", NS, phase_is("Succeeded"))
    await wait_until(lambda: lectures.find_one({"_id": "dis"})["status"] == "READY", what="lecture READY")


@pytest.mark.parametrize("cap", [1])
async def test_priority_then_fifo(kube, operator_factory, lectures, cap):
    await operator_factory(max_concurrent=cap)
    _lecture(lectures, "block")
    kube.create(make_cr("vt-block", "block"))
    await kube.await_for("vt", "vt-block", NS, phase_is("Running"))
    order = [("vt-low", 0), ("vt-high-a", 10), ("vt-mid", 5), ("vt-high-b", 10)]
    for name, prio in order:
        _lecture(lectures, name)
        kube.create(make_cr(name, name, priority=prio))
        await kube.await_for("vt", name, NS, phase_is("Queued"))
        await asyncio.sleep(1.05)  # creationTimestamp has one-second resolution, as in a real API server
    started = []
    current = "vt-block"
    for _ in order:
        _succeed(kube, current, current)
        await kube.await_for("vt", current, NS, phase_is("Succeeded"))
        nxt = await wait_until(lambda: [n for n, _ in order if n not in started
                                        and kube.get("vt", n, NS)["status"]["phase"] == "Running"], what="next admitted")
        assert len(nxt) == 1, nxt  # never more than the cap
        started.append(nxt[0])
        current = nxt[0]
    assert started == ["vt-high-a", "vt-high-b", "vt-mid", "vt-low"]


async def test_operator_restart_mid_flight(kube, operator, lectures, notifications):
    names = [f"vt-r{i}" for i in range(3)]
    for i in range(3):
        _lecture(lectures, f"r{i}")
        kube.create(make_cr(f"vt-r{i}", f"r{i}"))
    (a, b), queued = await _two_running_one_queued(kube, names)
    lid_a, lid_b = (kube.get("vt", n, NS)["spec"]["lectureId"] for n in (a, b))
    await wait_until(lambda: lectures.find_one({"_id": lid_a})["status"] == "PROCESSING", what="PROCESSING")
    await wait_until(lambda: notifications.of(lid_b, "VIDEO_PROCESSING"), what="processing")
    await operator.stop()
    jobs_before = sorted(j["metadata"]["name"] for j in kube.list("jobs", NS))
    _succeed(kube, a, lid_a)                        # finishes while the operator is down
    kube.close_watches()                            # and the API server restarts too
    await operator.start()
    await kube.await_for("vt", a, NS, phase_is("Succeeded"))
    await kube.await_for("vt", queued, NS, phase_is("Running"))   # the slot is given after the restart
    await wait_until(lambda: notifications.of(lid_a, "VIDEO_READY"), what="ready")
    # restart again after the final: nothing is sent twice
    await operator.restart()
    await asyncio.sleep(1.5)
    assert len(notifications.of(lid_a, "VIDEO_READY")) == 1
    assert len(notifications.of(lid_a, "VIDEO_PROCESSING")) == 1
    assert len(notifications.of(lid_b, "VIDEO_PROCESSING")) == 1
    jobs_after = sorted(j["metadata"]["name"] for j in kube.list("jobs", NS))
    assert len(jobs_after) == 3 and set(jobs_before) <= set(jobs_after)  # no duplicate Job
    running = [v for v in kube.list("vt", NS) if v["status"]["phase"] == "Running"]
    assert sorted(v["metadata"]["name"] for v in running) == sorted([b, queued])
    assert _reasons(kube, b).count("Started") == 1


async def test_final_notification_once_when_operator_dies_after_sending(kube, operator, lectures, notifications):
    """The status write recording the notification is lost: the Redis marker still stops a second send."""
    _lecture(lectures, "once")
    kube.create(make_cr("vt-once", "once"))
    await kube.await_for("vt", "vt-once", NS, phase_is("Running"))
    _succeed(kube, "vt-once", "once")
    await kube.await_for("vt", "vt-once", NS, lambda o: (o["status"].get("notified") or {}).get("final") == "ready")
    await operator.stop()
    kube.patch("vt", "vt-once", {"status": {"notified": {"final": None}}}, NS, subresource="status")
    await operator.start()
    await kube.await_for("vt", "vt-once", NS, lambda o: (o["status"].get("notified") or {}).get("final") == "ready")
    await asyncio.sleep(0.5)
    assert len(notifications.of("once", "VIDEO_READY")) == 1


async def test_stale_transcode_never_overwrites_a_newer_upload(kube, operator, lectures, notifications):
    _lecture(lectures, "stale")
    kube.create(make_cr("vt-stale", "stale"))
    await kube.await_for("vt", "vt-stale", NS, phase_is("Running"))
    await wait_until(lambda: lectures.find_one({"_id": "stale"})["status"] == "PROCESSING", what="PROCESSING")
    newer = "https://res.cloudinary.com/demo/video/upload/stale-v2.mov"
    lectures.update_one({"_id": "stale"}, {"$set": {"rawVideoUrl": newer, "status": "PROCESSING"}})  # new upload
    _succeed(kube, "vt-stale", "stale")
    vt = await kube.await_for("vt", "vt-stale", NS, lambda o: (o["status"].get("lecture") or {}).get("superseded"))
    assert vt["status"]["phase"] == "Succeeded"
    cond = {c["type"]: c for c in vt["status"]["conditions"]}["LectureSynced"]
    assert cond["status"] == "False" and cond["reason"] == "Superseded"
    doc = lectures.find_one({"_id": "stale"})
    assert doc["rawVideoUrl"] == newer and doc["status"] == "PROCESSING" and "videoUrl" not in doc
    await asyncio.sleep(0.5)
    assert not notifications.of("stale", "VIDEO_READY") and not notifications.of("stale", "VIDEO_FAILED")
    await wait_until(lambda: "LectureSuperseded" in _reasons(kube, "vt-stale"), what="LectureSuperseded event")


async def test_mongo_down_then_up(kube, operator_factory, lectures, notifications, tmp_path):
    mongo = MongoServer(workdir=tmp_path)
    mongo.start()
    try:
        import pymongo
        coll = pymongo.MongoClient(mongo.url)["lectern"]["lectures"]
        coll.insert_one({"_id": "mdown", "status": "AWAITING_MEDIA", "rawVideoUrl": RAW.format("mdown")})
        await operator_factory(mongo_url=mongo.url, mongo_db="lectern", mongo_collection="lectures")
        kube.create(make_cr("vt-mdown", "mdown"))
        await kube.await_for("vt", "vt-mdown", NS, phase_is("Running"))
        await wait_until(lambda: coll.find_one({"_id": "mdown"})["status"] == "PROCESSING", what="PROCESSING")
        mongo.stop()
        _succeed(kube, "vt-mdown", "mdown")
        vt = await kube.await_for("vt", "vt-mdown", NS, lambda o: (o["status"].get("lecture") or {}).get("pending") == "READY",
                                  timeout=15)
        assert vt["status"]["phase"] == "Succeeded"
        cond = {c["type"]: c for c in vt["status"]["conditions"]}["LectureSynced"]
        assert cond["status"] == "False" and cond["reason"] == "MongoUnavailable"
        await wait_until(lambda: "LectureUnavailable" in _reasons(kube, "vt-mdown"), what="LectureUnavailable event")
        await asyncio.sleep(1.0)
        assert not notifications.of("mdown", "VIDEO_READY")  # the notification waits for the Lecture
        mongo.start()
        vt = await kube.await_for("vt", "vt-mdown", NS, lambda o: (o["status"].get("lecture") or {}).get("applied") == "READY",
                                  timeout=20)
        cond = {c["type"]: c for c in vt["status"]["conditions"]}["LectureSynced"]
        assert cond["status"] == "True"
        doc = coll.find_one({"_id": "mdown"})
        assert doc["status"] == "READY" and doc["videoUrl"] == OUT.format("mdown")
        await wait_until(lambda: notifications.of("mdown", "VIDEO_READY"), what="ready after Mongo is back")
        assert len(notifications.of("mdown", "VIDEO_READY")) == 1
    finally:
        mongo.stop()


async def test_watchdog_deletes_a_stalled_pod(kube, operator_factory, lectures):
    await operator_factory(stall_timeout_seconds=1.0)
    _lecture(lectures, "hung")
    kube.create(make_cr("vt-hung", "hung"))
    vt = await kube.await_for("vt", "vt-hung", NS, phase_is("Running"))
    job = await kube.await_for("jobs", vt["status"]["jobName"], NS)
    pod = fake_pod(kube, "vt-hung", job, 0, phase="Running")
    _report(kube, "vt-hung", stage="encoding", progress=12)
    await kube.await_for("pods", pod["metadata"]["name"], NS,
                         lambda o: o is None or o["metadata"].get("deletionTimestamp"), timeout=8)
    vt = await kube.await_for("vt", "vt-hung", NS, lambda o: o["status"].get("stalls") == 1)
    await wait_until(lambda: "Stalled" in _reasons(kube, "vt-hung"), what="Stalled event")
    assert vt["status"]["phase"] == "Running"


async def test_deleting_a_running_transcode(kube, operator, lectures, notifications):
    _lecture(lectures, "del")
    _lecture(lectures, "delq", status="READY")
    kube.create(make_cr("vt-del", "del"))
    vt = await kube.await_for("vt", "vt-del", NS, phase_is("Running"))
    await wait_until(lambda: lectures.find_one({"_id": "del"})["status"] == "PROCESSING", what="PROCESSING")
    job_name = vt["status"]["jobName"]
    kube.delete("vt", "vt-del", NS)
    await kube.await_for("vt", "vt-del", NS, lambda o: o is None)
    await kube.await_for("jobs", job_name, NS, lambda o: o is None)
    doc = lectures.find_one({"_id": "del"})
    assert doc["status"] == "FAILED" and doc["failureReason"] == "transcode cancelled"
    assert doc["rawVideoUrl"] == RAW.format("del")
    await wait_until(lambda: notifications.of("del", "VIDEO_FAILED"), what="failed notification")


async def test_deleting_a_queued_transcode_leaves_the_lecture(kube, operator_factory, lectures):
    await operator_factory(max_concurrent=1)
    _lecture(lectures, "a")
    _lecture(lectures, "b", status="READY")
    kube.create(make_cr("vt-a", "a"))
    await kube.await_for("vt", "vt-a", NS, phase_is("Running"))
    kube.create(make_cr("vt-b", "b"))
    await kube.await_for("vt", "vt-b", NS, phase_is("Queued"))
    kube.delete("vt", "vt-b", NS)
    await kube.await_for("vt", "vt-b", NS, lambda o: o is None)
    assert lectures.find_one({"_id": "b"})["status"] == "READY"


async def test_kubectl_apply_sample_and_invalid_refused(kube, operator, lectures, kubectl):
    """What a person types: the valid sample is accepted and shows up with the printer
    columns; the invalid one is refused by the API server (schema), not by the operator."""
    out = kubectl("apply", "--validate=false", "-n", NS, "-f", str(ROOT / "examples" / "videotranscode.yaml"))
    assert "created" in out.stdout
    name = "lecture-65f1c2a9e4b0c3d2a1f00001"
    await kube.await_for("vt", name, NS, phase_is("Running"))
    table = kubectl("get", "vt", "-n", NS, "-o", "wide").stdout
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "LECTURE", "PHASE", "PROGRESS", "ATTEMPTS", "AGE"], table
    assert "JOB" in header and "Running" in table
    bad = kubectl("apply", "--validate=false", "-n", NS, "-f", str(ROOT / "examples" / "invalid-videotranscode.yaml"),
                  check=False)
    assert bad.returncode != 0 and "Invalid" in bad.stderr, bad.stderr
    for field in ("spec.lectureId", "spec.rawVideoUrl", "spec.priority"):
        assert field in bad.stderr, bad.stderr
    assert kube.get("vt", "broken-transcode", NS) is None
    described = kubectl("describe", "vt", name, "-n", NS).stdout
    assert "Started" in described and "Queued" in described


PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {"scope": "Namespaced", "group": "kopf.dev",
             "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


async def test_two_replicas_never_both_act(kube, operator_factory, lectures, notifications):
    kube.register_crd(PEERING_CRD)
    kube.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "lectern", "namespace": NS}})
    await asyncio.sleep(0.3)
    first = await operator_factory(standalone=False, peering_name="lectern", peering_priority=2)
    await operator_factory(standalone=False, peering_name="lectern", peering_priority=1)
    await asyncio.sleep(1.0)
    for i in range(4):
        _lecture(lectures, f"p{i}")
        kube.create(make_cr(f"vt-p{i}", f"p{i}"))
    await wait_until(lambda: sum(v.get("status", {}).get("phase") == "Running" for v in kube.list("vt", NS)) == 2,
                     what="two running")
    await wait_until(lambda: len(kube.list("jobs", NS)) == 2, what="two Jobs")
    await asyncio.sleep(1.0)
    assert len(kube.list("jobs", NS)) == 2
    for v in kube.list("vt", NS):
        assert _reasons(kube, v["metadata"]["name"]).count("Queued") == 1
    # the active replica goes away: the standby takes over
    await first.stop()
    running = [v for v in kube.list("vt", NS) if v["status"]["phase"] == "Running"]
    _succeed(kube, running[0]["metadata"]["name"], running[0]["spec"]["lectureId"])
    await kube.await_for("vt", running[0]["metadata"]["name"], NS, phase_is("Succeeded"), timeout=20)
    await wait_until(lambda: sum(v.get("status", {}).get("phase") == "Running" for v in kube.list("vt", NS)) == 2,
                     what="slot refilled by the standby", timeout=15)
    await wait_until(lambda: len(kube.list("jobs", NS)) == 3, what="its Job")
