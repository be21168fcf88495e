"""End to end on the stand-ins, Job states set by hand (no kubelet): admission, cap, status."""

from __future__ import annotations

import asyncio

from tests.operator.conftest import NS, make_cr, phase_is, wait_until


def _finish_job(kube, job_name: str, ok: bool = True, reason: str = "BackoffLimitExceeded", message: str = "") -> None:
    cond = [{"type": "Complete" if ok else "Failed", "status": "True", "reason": reason if not ok else "Completed",
             "message": message}]
    kube.patch("jobs", job_name, {"status": {"conditions": cond, "succeeded": 1 if ok else 0, "failed": 0 if ok else 1}},
               NS, subresource="status")


async def test_cap_and_success_flow(kube, operator, lectures, notifications):
    for i in range(3):
        lectures.insert_one({"_id": f"lec{i}", "status": "AWAITING_MEDIA",
                             "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/lec{i}.mov"})
        kube.create(make_cr(f"vt-{i}", f"lec{i}"))
        await asyncio.sleep(0.05)
    await kube.await_for("vt", "vt-0", NS, phase_is("Running"))
    await kube.await_for("vt", "vt-1", NS, phase_is("Running"))
    vt2 = await kube.await_for("vt", "vt-2", NS, phase_is("Queued"))
    await asyncio.sleep(0.5)
    assert kube.get("vt", "vt-2", NS)["status"]["phase"] == "Queued"
    jobs = kube.list("jobs", NS)
    assert len(jobs) == 2
    await wait_until(lambda: lectures.find_one({"_id": "lec0"})["status"] == "PROCESSING", what="lecture PROCESSING")
    vt0 = kube.get("vt", "vt-0", NS)
    kube.patch("vt", "vt-0", {"status": {"report": {"stage": "encoding", "progress": 40, "cpuSeconds": 12.5,
                                                    "bytesDownloaded": 1000, "speed": 2.5}}}, NS, subresource="status")
    await kube.await_for("vt", "vt-0", NS, lambda o: o["status"].get("progress") == 40)
    await wait_until(lambda: notifications.of("lec0", "progress"), what="progress notification")
    kube.patch("vt", "vt-0", {"status": {"report": {"stage": "done", "progress": 100, "bytesUploaded": 500,
                                                    "videoUrl": "https://res.cloudinary.com/demo/video/upload/out.mp4"}}},
               NS, subresource="status")
    _finish_job(kube, vt0["status"]["jobName"])
    done = await kube.await_for("vt", "vt-0", NS, phase_is("Succeeded"))
    st = done["status"]
    assert st["videoUrl"] == "https://res.cloudinary.com/demo/video/upload/out.mp4" and st["progress"] == 100
    assert st["cost"]["cpuSeconds"] == 12.5 and st["cost"]["bytesUploaded"] == 500 and st["cost"]["speed"] == 2.5
    await kube.await_for("vt", "vt-2", NS, phase_is("Running"))
    await wait_until(lambda: lectures.find_one({"_id": "lec0"})["status"] == "READY", what="lecture READY")
    assert lectures.find_one({"_id": "lec0"})["videoUrl"] == st["videoUrl"]
    await wait_until(lambda: notifications.of("lec0", "ready"), what="ready notification")
    kinds = [m["type"] for m in notifications.of("lec0")]
    assert kinds[0] == "processing" and kinds[-1] == "ready" and kinds.count("ready") == 1
    reasons = [e["reason"] for e in kube.events(done)]
    for r in ("Queued", "Started", "LectureUpdated", "Succeeded", "Notified"):
        assert r in reasons, reasons
