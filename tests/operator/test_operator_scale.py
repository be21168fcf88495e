"""Issue 17 (scale): the operator works from watches, keeps no history, admits in O(waiting).

- With the safety resync and the admit timer both at 10 minutes, transcodes still start, report
  progress, finish, free their slot and notify at once: every step after the first is driven by
  a Job/pod watch event or a report, not by a timer.
- A finished transcode is deleted after the retention period (its Job goes with it by
  ownerReferences, through the real garbage collector); one still running is not, however old.
- The queue index holds only transcodes in flight, and admission never looks at a finished one."""

from __future__ import annotations

import asyncio

from lectern_operator.queue import Admission, entry_from_body, in_flight, index_entry
from lectern_operator.settings import Settings
from tests.operator.conftest import LONG, lecture, make_cr, own_video_url, phase_is, status_of, wait_until

SLOW = 600  # resync / admit interval: longer than any test here runs


async def test_watch_driven_with_timers_out_of_the_way(kube, operator_factory, plan, lectures, notifications):
    await operator_factory(max_concurrent=1, reconcile_interval_seconds=SLOW, admit_interval_seconds=SLOW)
    for i in range(2):
        lecture(lectures, f"w{i}")
        plan(f"w{i}", progress=[30, 60], interval=0.5, videoUrl=own_video_url(f"w{i}"))
        kube.create(make_cr(f"vt-w{i}", f"w{i}"))
    for i in range(2):
        # The Job finishing (a watch event) moves the CR on; its final status frees the slot
        # for the next one at once (admission on finish), with the admit timer 10 minutes away.
        done = await kube.await_for("vt", f"vt-w{i}", predicate=phase_is("Succeeded", "Failed"), timeout=90)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["videoUrl"] == own_video_url(f"w{i}")
        await wait_until(lambda: notifications.of(f"w{i}", "VIDEO_READY"), what="ready notification")
        assert [m["progress"] for m in notifications.of(f"w{i}", "VIDEO_PROGRESS")][-1] == 60
        assert lectures.find_one({"_id": f"w{i}"})["status"] == "READY"
    # Cap 1 held: whichever the operator admitted first (created in the same instant: either)
    # finished before the other started.
    first, second = sorted((status_of(kube, "vt-w0"), status_of(kube, "vt-w1")), key=lambda st: st["startedAt"])
    assert first["completedAt"] <= second["startedAt"], (first, second)


async def test_finished_transcodes_expire_with_their_jobs(kube, operator_factory, plan, lectures, notifications):
    await operator_factory(retention_seconds=3, retention_check_seconds=1)
    lecture(lectures, "old")
    lecture(lectures, "busy")
    plan("old", videoUrl=own_video_url("old"))
    plan("busy", progress=[10], hang=LONG)
    kube.create(make_cr("vt-busy", "busy"))
    kube.create(make_cr("vt-old", "old"))
    done = await kube.await_for("vt", "vt-old", predicate=phase_is("Succeeded", "Failed"), timeout=60)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    job = done["status"]["jobName"]
    await wait_until(lambda: kube.get("vt", "vt-old") is None, timeout=60, what="the finished VT deleted")
    await wait_until(lambda: kube.get("jobs", job) is None, timeout=90, what="its Job garbage-collected")
    # What it decided stays: the Lecture, and exactly one final notification.
    assert lectures.find_one({"_id": "old"})["status"] == "READY"
    assert len(notifications.of("old", "VIDEO_READY")) == 1
    # A running transcode is never expired, however long it has existed.
    await kube.await_for("vt", "vt-busy", predicate=phase_is("Running"), timeout=30)
    await asyncio.sleep(5)
    assert status_of(kube, "vt-busy").get("phase") == "Running"


def _body(name: str, phase: str | None, priority: int = 0, created: str = "2026-01-01T00:00:00Z") -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "creationTimestamp": created},
            "spec": {"priority": priority}, "status": {"phase": phase} if phase else {}}


def test_index_holds_only_transcodes_in_flight():
    assert index_entry(_body("a", "Succeeded")) == {}
    assert index_entry(_body("b", "Failed")) == {}
    assert list(index_entry(_body("c", "Running"))) == ["Running"]
    assert list(index_entry(_body("d", "Queued"))) == ["Queued"]
    assert list(index_entry(_body("e", None))) == ["Pending"]


async def test_admission_reads_only_running_and_queued():
    class Exploding(list):
        def __iter__(self):
            raise AssertionError("admission walked the finished transcodes")

    started: list[str] = []

    async def start(entry) -> bool:
        started.append(entry.name)
        return True

    index = {"Running": [entry_from_body(_body("r1", "Running"))],
             "Queued": [entry_from_body(_body("q-low", "Queued", 0, "2026-01-01T00:00:01Z")),
                        entry_from_body(_body("q-high", "Queued", 5, "2026-01-01T00:00:02Z")),
                        entry_from_body(_body("q-old", "Queued", 0, "2026-01-01T00:00:00Z"))],
             "Succeeded": Exploding()}
    adm = Admission(Settings(max_concurrent=3), start)
    await adm.admit(index)
    assert started == ["q-high", "q-old"]  # priority first, then first come; the cap (3) holds
    assert adm.last_counts["Running"] == 3 and adm.last_counts["Queued"] == 1
    assert len(in_flight(index)) == 4
