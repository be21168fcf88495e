"""What the real cluster showed about the operator (issue 11), one test per fix of commit
1616535; each fails on the code before it. (The watchdog's clock, fix 2, is
test_operator_kubelet.py::test_watchdog_clock_starts_when_the_container_runs.)"""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.error
import urllib.request

import pytest

from tests.operator.conftest import (LONG, cloudinary_secret, lecture, make_cr, phase_is, reasons, status_of,
                                     wait_until)

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _final(kube, names):
    return {n: status_of(kube, n).get("phase") for n in names}


async def test_a_burst_of_new_transcodes_all_start(kube, operator_factory, lectures):
    """Fix 1: kopf's own annotation patch after the create handler races admission's
    compare-and-swap on a real API server. Many CRs created at once with a cap of 1: every one
    runs and succeeds, with nothing else happening to wake the queue."""
    await operator_factory(max_concurrent=1)
    names = [f"vt-burst-{i}" for i in range(5)]
    for i in range(5):
        lecture(lectures, f"burst{i}")
    barrier = threading.Barrier(len(names))

    def create(i: int) -> None:
        barrier.wait()
        kube.create(make_cr(names[i], f"burst{i}"))  # no plan: each succeeds at once
    await asyncio.gather(*(asyncio.to_thread(create, i) for i in range(len(names))))
    await wait_until(lambda: all(p == "Succeeded" for p in _final(kube, names).values()), timeout=90,
                     what=f"all Succeeded (last: {_final(kube, names)})")
    runs = sorted((status_of(kube, n)["startedAt"], status_of(kube, n)["completedAt"]) for n in names)
    for (_, prev_end), (start, _) in zip(runs, runs[1:]):
        assert start >= prev_end, "cap 1 exceeded"


async def test_operator_logs_in_again_when_its_token_is_refused(kube, operator_identity, operator_factory,
                                                                 lectures, tmp_path, monkeypatch, cluster):
    """Fix 3: the operator's token (a `tokenFile`, bound to a Secret) is revoked; a fresh one
    is written to the file. The operator's own client must read it again on the 401, as kopf
    does, or Job creation and status writes keep failing."""
    for s in ("op-login-1", "op-login-2"):
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s}, "stringData": {"x": "y"}})
    token_file = tmp_path / "operator-token"
    old = operator_identity.token("operator", bound_secret="op-login-1")
    token_file.write_text(old)
    monkeypatch.setenv("KUBECONFIG", str(operator_identity.kubeconfig("operator", token_file=token_file)))
    await operator_factory()
    lecture(lectures, "before")
    kube.create(make_cr("vt-before", "before"))
    await kube.await_for("vt", "vt-before", predicate=phase_is("Succeeded"), timeout=30)

    kube.delete("secrets", "op-login-1")  # revokes the token bound to it

    def refused() -> bool:
        req = urllib.request.Request(f"{cluster.server}/api/v1/namespaces/{kube.namespace}/pods",
                                     headers={"Authorization": f"Bearer {old}"})
        import ssl
        ctx = ssl.create_default_context(cafile=str(cluster.ca))
        try:
            urllib.request.urlopen(req, context=ctx, timeout=5).read()
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        return False
    await wait_until(refused, what="the old token refused (401)")
    token_file.write_text(operator_identity.token("operator", bound_secret="op-login-2"))

    lecture(lectures, "after")
    kube.create(make_cr("vt-after", "after"))
    vt = await kube.await_for("vt", "vt-after", predicate=phase_is("Succeeded", "Failed"), timeout=40)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]
    assert kube.get("jobs", vt["status"]["jobName"]) is not None  # the operator created it
    await wait_until(lambda: lectures.find_one({"_id": "after"})["status"] == "READY", what="READY")


async def test_long_names_and_odd_lecture_ids_make_valid_jobs(kube, operator, lectures):
    """Fix 4: a CR name of 100+ characters and lectureIds ending in `-` or `_` are not valid
    label values; the Job's labels and name must still be, and the transcode must run."""
    cases = {"vt-" + "long" * 30: "long-name", "vt-dash": "lecture-ends-", "vt-underscore": "lecture_ends_"}
    for name, lid in cases.items():
        assert len(name) > 100 or not LABEL_VALUE.match(lid)
        lecture(lectures, lid)
        kube.create(make_cr(name, lid))
    await wait_until(lambda: all(p in ("Succeeded", "Failed") for p in _final(kube, list(cases)).values()),
                     timeout=60, what="all finished")
    for name, lid in cases.items():
        st = status_of(kube, name)
        assert st["phase"] == "Succeeded", (name, st)
        assert st["attempts"] == 1, (name, st)  # its pod was found by the label selector
        job = kube.get("jobs", st["jobName"])
        assert len(job["metadata"]["name"]) <= 63
        for value in job["metadata"]["labels"].values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), value
        await wait_until(lambda: lectures.find_one({"_id": lid})["status"] == "READY", what=f"{lid} READY")


@pytest.mark.parametrize("cause", ["image", "secret"])
async def test_a_pod_that_cannot_start_fails_the_transcode_and_frees_its_slot(kube, operator_factory, plan,
                                                                              lectures, notifications, cause):
    """Fix 5: a pod that cannot start (image pull, missing Secret) says why in the CR at once,
    fails the transcode after startTimeoutSeconds and frees the slot."""
    overrides = {"transcoder_image": "lectern.test/no-such-image"} if cause == "image" else {}
    if cause == "secret":
        kube.delete("secrets", "lectern-cloudinary")
    await operator_factory(max_concurrent=1, start_timeout_seconds=4, **overrides)
    lecture(lectures, "stuck")
    lecture(lectures, "next")
    plan("next", hang=LONG)
    kube.create(make_cr("vt-stuck", "stuck"))
    await kube.await_for("vt", "vt-stuck", predicate=phase_is("Running"), timeout=20)
    kube.create(make_cr("vt-next", "next"))
    await kube.await_for("vt", "vt-next", predicate=phase_is("Queued"))
    why = "ErrImagePull" if cause == "image" else "CreateContainerConfigError"
    vt = await kube.await_for("vt", "vt-stuck", predicate=lambda o: why in (o.get("status") or {}).get("message", ""),
                              timeout=15)
    assert vt["status"]["phase"] == "Running" and "cannot start" in vt["status"]["message"]
    if cause == "secret":
        assert "lectern-cloudinary" in vt["status"]["message"]
    vt = await kube.await_for("vt", "vt-stuck", predicate=phase_is("Failed", "Succeeded"), timeout=30)
    assert vt["status"]["phase"] == "Failed"
    assert "could not start" in vt["status"]["message"] and why in vt["status"]["message"], vt["status"]
    assert {c["type"]: c for c in vt["status"]["conditions"]}["Failed"]["reason"] == "PodNotStarting"
    evs = reasons(kube, "vt-stuck")
    assert "PodNotStarting" in evs and "Failed" in evs, evs
    said = [e["message"] for e in kube.events(vt, reason="PodNotStarting")]
    assert all(a != b for a, b in zip(said, said[1:])), said  # once per reason, not once per reconcile pass
    await kube.await_for("jobs", vt["status"]["jobName"], predicate=lambda o: o is None, timeout=20)
    await wait_until(lambda: lectures.find_one({"_id": "stuck"})["status"] == "FAILED", what="Lecture FAILED")
    await wait_until(lambda: notifications.of("stuck", "VIDEO_FAILED"), what="failed notification")
    if cause == "secret":
        cloudinary_secret(kube)
    await kube.await_for("vt", "vt-next", predicate=phase_is("Running"), timeout=20)  # the slot is free
    if cause == "secret":
        await kube.await_for("vt", "vt-next", predicate=lambda o: (o.get("status") or {}).get("containerStartedAt"),
                             timeout=30)


async def test_a_job_the_api_server_refuses_fails_the_transcode(kube, operator_factory, lectures, notifications):
    """Fix 6: a Job the API server refuses (422: here an imagePullPolicy it does not know)
    fails the transcode with the server's message instead of holding a slot."""
    await operator_factory(max_concurrent=1, transcoder_image_pull_policy="Sometimes")
    for lid in ("rej1", "rej2"):
        lecture(lectures, lid)
        kube.create(make_cr(f"vt-{lid}", lid))
    await wait_until(lambda: all(p == "Failed" for p in _final(kube, ["vt-rej1", "vt-rej2"]).values()),
                     timeout=30, what="both Failed (the slot was freed)")
    for lid in ("rej1", "rej2"):
        st = status_of(kube, f"vt-{lid}")
        assert st["message"].startswith("the API server refused the transcode Job:"), st
        assert "imagePullPolicy" in st["message"], st
        assert {c["type"]: c for c in st["conditions"]}["Failed"]["reason"] == "JobRejected"
        await wait_until(lambda: lectures.find_one({"_id": lid})["status"] == "FAILED", what="Lecture FAILED")
        await wait_until(lambda: notifications.of(lid, "VIDEO_FAILED"), what="failed notification")
    assert kube.list("jobs") == []


async def test_the_cluster_never_sees_more_running_than_the_cap(kube, operator_factory, lectures):
    """A finished transcode's final phase is written before admission starts the next one:
    counted from a watch (etcd's own order of changes), never more than the cap Running. On
    the real API server the old order (kopf writing the phase after the handler, admission
    already under way) showed 101 of 100 for moments (bench/operator.py)."""
    cap, names = 2, [f"vt-cap-{i}" for i in range(8)]
    rv = kube.request("GET", kube.path("vt"))["metadata"]["resourceVersion"]
    phases: dict[str, str | None] = {}
    peak = [0]
    done = threading.Event()

    def follow() -> None:
        for _, obj in kube.watch("vt", resource_version=rv, timeout_seconds=120):
            phases[obj["metadata"]["name"]] = (obj.get("status") or {}).get("phase")
            peak[0] = max(peak[0], sum(p == "Running" for p in phases.values()))
            if len(phases) == len(names) and all(p == "Succeeded" for p in phases.values()):
                done.set()
                return
    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    await operator_factory(max_concurrent=cap)
    for i, name in enumerate(names):
        lecture(lectures, f"cap{i}")
        kube.create(make_cr(name, f"cap{i}"))  # no plan: each succeeds as soon as it runs
    await wait_until(done.is_set, timeout=120, what=f"all Succeeded (last: {phases})")
    assert peak[0] == cap, f"{peak[0]} Running at once with a cap of {cap}"
