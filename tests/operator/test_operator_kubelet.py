"""End to end with the local kubelet + Job controller: the Job's pod runs a scripted stand-in
of the transcoder that reports through the API like the real one."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

from tests.operator.conftest import NS, make_cr, phase_is, wait_until

FAKE = str(Path(__file__).with_name("fake_transcoder.py"))


def _setup(kube, lectures, lid: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-cloudinary", "namespace": NS},
                 "stringData": {"CLOUDINARY_URL": "cloudinary://key:secret@demo"}}) if not kube.get(
        "secrets", "lectern-cloudinary", NS) else None
    lectures.insert_one({"_id": lid, "status": "AWAITING_MEDIA",
                         "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/{lid}.mov"})


def _script(kubelet, plans: dict[str, list[dict]]):
    """plans[lectureId] = one plan per attempt (the last one repeats)."""
    attempts: dict[str, int] = collections.defaultdict(int)

    def hook(job, pod, container):
        lid = pod["metadata"]["labels"]["media.lectern.dev/lecture-id"]
        n = attempts[lid]
        attempts[lid] += 1
        plan = plans[lid][min(n, len(plans[lid]) - 1)]
        return [sys.executable, FAKE, json.dumps(plan), *container["args"]]
    kubelet.override_command(hook)
    return attempts


def _reasons(kube, name):
    return [e["reason"] for e in kube.events(kube.get("vt", name, NS))]


async def test_success_end_to_end(kube, kubelet, operator, lectures, notifications):
    _setup(kube, lectures, "e2e")
    _script(kubelet, {"e2e": [{"progress": [10, 30, 50, 70, 90], "interval": 0.3}]})
    kube.create(make_cr("vt-e2e", "e2e"))
    vt = await kube.await_for("vt", "vt-e2e", NS, phase_is("Succeeded"), timeout=20)
    st = vt["status"]
    assert st["videoUrl"].startswith("https://res.cloudinary.com/demo/video/upload/lectern/lectures/e2e/")
    assert st["attempts"] == 1 and st["progress"] == 100
    assert st["cost"]["bytesDownloaded"] == 4_000_000 and st["cost"]["bytesUploaded"] == 1_000_000
    assert st["cost"]["speed"] == 4.0 and st["cost"]["cpuSeconds"] > 0
    assert st["report"]["pod"].startswith(st["jobName"])
    await wait_until(lambda: lectures.find_one({"_id": "e2e"})["status"] == "READY", what="READY")
    await wait_until(lambda: notifications.of("e2e", "VIDEO_READY"), what="ready")
    progress = [m["progress"] for m in notifications.of("e2e", "VIDEO_PROGRESS")]
    assert progress and progress == sorted(progress) and len(set(progress)) == len(progress)  # on change only
    assert [m["type"] for m in notifications.of("e2e")][0] == "VIDEO_PROCESSING"


async def test_exit_65_fails_at_once_without_retry(kube, kubelet, operator, lectures, notifications):
    _setup(kube, lectures, "e65")
    attempts = _script(kubelet, {"e65": [{"progress": [], "exit": 65, "reason": "no video stream"}]})
    kube.create(make_cr("vt-e65", "e65"))
    vt = await kube.await_for("vt", "vt-e65", NS, phase_is("Failed"), timeout=20)
    assert vt["status"]["message"] == "unusable input: no video stream"
    assert vt["status"]["attempts"] == 1 and attempts["e65"] == 1
    job = kube.get("jobs", vt["status"]["jobName"], NS)
    assert job["status"].get("failed") == 1
    assert any(c["type"] == "Failed" and c["reason"] == "PodFailurePolicy" for c in job["status"]["conditions"])
    await wait_until(lambda: lectures.find_one({"_id": "e65"})["status"] == "FAILED", what="FAILED")
    await wait_until(lambda: notifications.of("e65", "VIDEO_FAILED"), what="failed")
    assert "no video stream" in notifications.of("e65", "VIDEO_FAILED")[0]["message"]


async def test_transient_failures_are_retried_then_exhaust(kube, kubelet, operator_factory, lectures, notifications):
    await operator_factory(transcoder_backoff_limit=1)
    _setup(kube, lectures, "e75")
    attempts = _script(kubelet, {"e75": [{"exit": 75, "reason": "CDN 503 on upload"}]})
    kube.create(make_cr("vt-e75", "e75"))
    vt = await kube.await_for("vt", "vt-e75", NS, phase_is("Failed"), timeout=25)
    assert attempts["e75"] == 2 and vt["status"]["attempts"] == 2
    assert vt["status"]["message"].startswith("failed after 2 attempts: CDN 503 on upload")
    await wait_until(lambda: "Retrying" in _reasons(kube, "vt-e75"), what="Retrying event")
    await wait_until(lambda: lectures.find_one({"_id": "e75"})["status"] == "FAILED", what="FAILED")


async def test_eviction_retries_without_spending_the_budget(kube, kubelet, operator_factory, lectures, notifications):
    await operator_factory(transcoder_backoff_limit=0)  # any counted failure would fail the Job
    _setup(kube, lectures, "evi")
    _script(kubelet, {"evi": [{"progress": [5], "hang": 30}, {"progress": [50, 90]}]})
    kube.create(make_cr("vt-evi", "evi"))
    vt = await kube.await_for("vt", "vt-evi", NS, lambda o: (o or {}).get("status", {}).get("progress") == 5, timeout=15)
    pod = kubelet.wait_for_pod(vt["status"]["jobName"], NS)
    kubelet.evict(pod["metadata"]["name"], NS)
    vt = await kube.await_for("vt", "vt-evi", NS, phase_is("Succeeded", "Failed"), timeout=25)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]
    assert vt["status"]["attempts"] == 2
    await wait_until(lambda: lectures.find_one({"_id": "evi"})["status"] == "READY", what="READY")


async def test_watchdog_restarts_a_hung_transcode(kube, kubelet, operator_factory, lectures, notifications):
    await operator_factory(stall_timeout_seconds=1.5)
    _setup(kube, lectures, "hang")
    attempts = _script(kubelet, {"hang": [{"progress": [20], "hang": 60}, {"progress": [40, 80]}]})
    kube.create(make_cr("vt-hang", "hang"))
    vt = await kube.await_for("vt", "vt-hang", NS, phase_is("Succeeded", "Failed"), timeout=30)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]
    assert vt["status"]["stalls"] == 1 and attempts["hang"] == 2
    await wait_until(lambda: "Stalled" in _reasons(kube, "vt-hang"), what="Stalled event")
    stalled = [e for e in kube.events(vt) if e["reason"] == "Stalled"][0]
    assert stalled["type"] == "Warning" and "no progress" in stalled["message"]


async def test_deleting_stops_the_running_pod(kube, kubelet, operator, lectures, notifications):
    _setup(kube, lectures, "stop")
    _script(kubelet, {"stop": [{"progress": [5], "hang": 60}]})
    kube.create(make_cr("vt-stop", "stop"))
    vt = await kube.await_for("vt", "vt-stop", NS, lambda o: (o or {}).get("status", {}).get("progress") == 5, timeout=15)
    job = vt["status"]["jobName"]
    pod = kubelet.wait_for_pod(job, NS)["metadata"]["name"]
    kube.delete("vt", "vt-stop", NS)
    await kube.await_for("vt", "vt-stop", NS, lambda o: o is None, timeout=15)
    await kube.await_for("jobs", job, NS, lambda o: o is None, timeout=15)
    await kube.await_for("pods", pod, NS, lambda o: o is None, timeout=15)
    doc = lectures.find_one({"_id": "stop"})
    assert doc["status"] == "FAILED" and doc["failureReason"] == "transcode cancelled"
