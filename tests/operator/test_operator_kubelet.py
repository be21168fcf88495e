"""The operator end to end on the real cluster: the real Job controller makes the pods, the
scheduler binds them, the node agent runs the fake transcoder image, which reports through the
API with its pod's ServiceAccount token like the real one. Exit codes, retries, eviction,
the watchdog and deletion are the real controllers' doing."""

from __future__ import annotations

from tests.operator.conftest import (LONG, RAW, exit_records, lecture, make_cr, phase_is, reasons, release,
                                     running_pod, status_of, wait_until)


async def test_success_end_to_end(kube, cluster, operator, plan, lectures, notifications):
    lecture(lectures, "e2e")
    plan("e2e", progress=[10, 30, 50, 70, 90], interval=0.3, cpuSeconds=3.5)
    kube.create(make_cr("vt-e2e", "e2e"))
    vt = await kube.await_for("vt", "vt-e2e", predicate=phase_is("Succeeded", "Failed"), timeout=40)
    st = vt["status"]
    assert st["phase"] == "Succeeded", st
    assert st["videoUrl"].startswith("https://res.cloudinary.com/demo/video/upload/lectern/lectures/e2e/")
    assert st["attempts"] == 1 and st["progress"] == 100 and st["message"] == "ready"
    assert st["cost"]["bytesDownloaded"] == 4_000_000 and st["cost"]["bytesUploaded"] == 1_000_000
    assert st["cost"]["speed"] == 4.0 and st["cost"]["cpuSeconds"] == 3.5  # the pod's own figure, relayed
    assert st["report"]["pod"].startswith(st["jobName"])
    # The pod the real Job controller made: the chart's transcoder identity, the default
    # scratch request (2Gi, scheduled on the node), and it ran to exit 0 on the node.
    pod = kube.list("pods", labels=f"job-name={st['jobName']}")[0]
    assert pod["spec"]["serviceAccountName"] == "lectern-transcoder"
    assert pod["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "2Gi"
    assert pod["spec"]["nodeName"] == cluster.node_name
    assert [r["exitCode"] for r in exit_records(cluster, kube.namespace)] == [0]
    await wait_until(lambda: lectures.find_one({"_id": "e2e"})["status"] == "READY", what="READY")
    assert lectures.find_one({"_id": "e2e"})["videoUrl"] == st["videoUrl"]
    await wait_until(lambda: notifications.of("e2e", "VIDEO_READY"), what="ready")
    progress = [m["progress"] for m in notifications.of("e2e", "VIDEO_PROGRESS")]
    assert progress and progress == sorted(progress) and len(set(progress)) == len(progress)  # on change only
    assert [m["type"] for m in notifications.of("e2e")][0] == "VIDEO_PROCESSING"


async def test_exit_65_fails_at_once_without_retry(kube, cluster, operator, plan, lectures, notifications):
    lecture(lectures, "e65")
    plan("e65", exit=65, reason="no video stream in the input")
    kube.create(make_cr("vt-e65", "e65"))
    vt = await kube.await_for("vt", "vt-e65", predicate=phase_is("Failed", "Succeeded"), timeout=40)
    assert vt["status"]["message"] == "unusable input: no video stream in the input", vt["status"]
    assert vt["status"]["attempts"] == 1
    job = kube.get("jobs", vt["status"]["jobName"])
    assert job["status"].get("failed") == 1
    assert any(c["type"] == "Failed" and c["reason"] == "PodFailurePolicy" for c in job["status"]["conditions"])
    assert [r["exitCode"] for r in exit_records(cluster, kube.namespace)] == [65]  # no retry
    await wait_until(lambda: lectures.find_one({"_id": "e65"})["status"] == "FAILED", what="FAILED")
    doc = lectures.find_one({"_id": "e65"})
    assert doc["rawVideoUrl"] == RAW.format("e65") and "no video stream" in doc["failureReason"]
    await wait_until(lambda: notifications.of("e65", "VIDEO_FAILED"), what="failed notification")
    assert "no video stream" in notifications.of("e65", "VIDEO_FAILED")[0]["message"]
    await wait_until(lambda: "Failed" in reasons(kube, "vt-e65"), what="Failed event")
    # exactly one final notification, however many reconcile passes ran since
    await wait_until(lambda: (status_of(kube, "vt-e65").get("notified") or {}).get("final") == "failed",
                     what="final recorded")
    assert len(notifications.of("e65", "VIDEO_FAILED")) == 1


async def test_transient_failures_are_retried_then_exhaust(kube, cluster, operator_factory, plan, lectures):
    await operator_factory(transcoder_backoff_limit=1)
    lecture(lectures, "e75")
    plan("e75", exit=75, reason="CDN 503 on upload")
    kube.create(make_cr("vt-e75", "e75"))
    vt = await kube.await_for("vt", "vt-e75", predicate=phase_is("Failed", "Succeeded"), timeout=60)
    assert vt["status"]["attempts"] == 2, vt["status"]
    assert vt["status"]["message"].startswith("failed after 2 attempts: CDN 503 on upload"), vt["status"]
    assert [r["exitCode"] for r in exit_records(cluster, kube.namespace)] == [75, 75]
    await wait_until(lambda: "Retrying" in reasons(kube, "vt-e75"), what="Retrying event")
    await wait_until(lambda: lectures.find_one({"_id": "e75"})["status"] == "FAILED", what="FAILED")


async def test_eviction_retries_without_spending_the_budget(kube, operator_factory, plan, lectures):
    """Disruption is not a failure: the Eviction API marks the pod DisruptionTarget and the
    Job's pod failure policy ignores it, even with a backoff limit of 0."""
    await operator_factory(transcoder_backoff_limit=0)  # any counted failure would fail the Job
    lecture(lectures, "evi")
    plan("evi", progress=[5], hang=LONG)
    kube.create(make_cr("vt-evi", "evi"))
    await kube.await_for("vt", "vt-evi", predicate=lambda o: (o or {}).get("status", {}).get("progress") == 5,
                         timeout=40)
    await release(kube, plan, "vt-evi", "evi", progress=[50, 90])
    vt = await kube.await_for("vt", "vt-evi", predicate=phase_is("Succeeded", "Failed"), timeout=40)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]
    assert vt["status"]["attempts"] == 2
    job = kube.get("jobs", vt["status"]["jobName"])
    assert not job["status"].get("failed")  # the disrupted pod is not counted
    await wait_until(lambda: "Retrying" in reasons(kube, "vt-evi"), what="Retrying event")
    await wait_until(lambda: lectures.find_one({"_id": "evi"})["status"] == "READY", what="READY")


async def test_watchdog_restarts_a_hung_transcode(kube, operator_factory, plan, lectures):
    await operator_factory(stall_timeout_seconds=2.0)
    lecture(lectures, "hang")
    plan("hang", progress=[20], hang=LONG)
    kube.create(make_cr("vt-hang", "hang"))
    await kube.await_for("vt", "vt-hang", predicate=lambda o: (o or {}).get("status", {}).get("progress") == 20,
                         timeout=40)
    plan("hang", progress=[40, 80], interval=0.2)  # the attempt after the watchdog's restart moves on
    vt = await kube.await_for("vt", "vt-hang", predicate=phase_is("Succeeded", "Failed"), timeout=40)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]
    assert vt["status"]["stalls"] == 1 and vt["status"]["attempts"] == 2
    await wait_until(lambda: "Stalled" in reasons(kube, "vt-hang"), what="Stalled event")
    stalled = [e for e in kube.events(vt) if e["reason"] == "Stalled"][0]
    assert stalled["type"] == "Warning" and "no progress" in stalled["message"]


async def test_watchdog_clock_starts_when_the_container_runs(kube, cluster, operator_factory, plan, lectures):
    """Fix 2: a pod that waits (here on its missing Secret) for longer than the stall timeout is
    not deleted as "stalled" the moment its container starts."""
    await operator_factory(stall_timeout_seconds=3.0)
    kube.delete("secrets", "lectern-cloudinary")
    lecture(lectures, "late")
    plan("late", progress=[10, 30, 50, 70, 90], interval=0.5)
    kube.create(make_cr("vt-late", "late"))
    await kube.await_for("vt", "vt-late", predicate=lambda o: "CreateContainerConfigError" in
                         ((o or {}).get("status") or {}).get("message", ""), timeout=40)
    started = status_of(kube, "vt-late")["startedAt"]
    # Pending for longer than the stall timeout, on the clock of the API server.
    from tests.operator.conftest import cloudinary_secret
    from lectern_operator.reconcile import now, parse_time
    await wait_until(lambda: (now() - parse_time(started)).total_seconds() > 4.0, what="pending > stall timeout")
    cloudinary_secret(kube)
    vt = await kube.await_for("vt", "vt-late", predicate=phase_is("Succeeded", "Failed"), timeout=60)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]
    assert not vt["status"].get("stalls"), vt["status"]
    assert "Stalled" not in reasons(kube, "vt-late")
    exits = exit_records(cluster, kube.namespace)
    assert [r["exitCode"] for r in exits] == [0] and vt["status"]["attempts"] == 1, (exits, vt["status"])


async def test_deleting_stops_the_running_pod(kube, operator, plan, lectures, notifications):
    lecture(lectures, "stop")
    plan("stop", progress=[5], hang=LONG)
    kube.create(make_cr("vt-stop", "stop"))
    vt = await kube.await_for("vt", "vt-stop", predicate=lambda o: (o or {}).get("status", {}).get("progress") == 5,
                              timeout=40)
    job = vt["status"]["jobName"]
    pod = (await wait_until(lambda: running_pod(kube, job), what="running pod"))["metadata"]["name"]
    await wait_until(lambda: lectures.find_one({"_id": "stop"})["status"] == "PROCESSING", what="PROCESSING")
    kube.delete("vt", "vt-stop")
    await kube.await_for("vt", "vt-stop", predicate=lambda o: o is None, timeout=30)
    await kube.await_for("jobs", job, predicate=lambda o: o is None, timeout=30)
    await kube.await_for("pods", pod, predicate=lambda o: o is None, timeout=30)
    doc = lectures.find_one({"_id": "stop"})
    assert doc["status"] == "FAILED" and doc["failureReason"] == "transcode cancelled"
    assert doc["rawVideoUrl"] == RAW.format("stop")
    await wait_until(lambda: notifications.of("stop", "VIDEO_FAILED"), what="failed notification")
