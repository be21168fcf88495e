"""A transcode pod is the least trusted part of Lectern (issue 12, item 1): on the real cluster,
what its report and termination message say is checked before it reaches a Lecture or a person.

The fake transcoder (tests/fake_transcoder.py) plays a compromised pod: it finishes with exit 0
and reports a video URL of its choosing, or fails with ffmpeg-like stderr full of terminal
escapes. The operator must fail the transcode with the reason (CR status, condition, event,
Lecture FAILED, the failure notification), never mark it READY; and what reaches people is one
clean, bounded line."""

from __future__ import annotations

import pytest

from lectern_operator import jobs
from lectern_operator.settings import Settings
from tests.operator.conftest import RAW, lecture, make_cr, own_video_url, phase_is, reasons, wait_until

OTHER_LECTURE = jobs.output_target(Settings(), "someone-else", RAW.format("someone-else")).split(":", 1)[1]


@pytest.mark.parametrize("attack, url, why", [
    ("other-cloud", lambda lid: own_video_url(lid, cloud="evil"), "not under an allowed"),
    ("other-lecture", lambda lid: f"https://res.cloudinary.com/demo/video/upload/v7/{OTHER_LECTURE}.mp4",
     "not this transcode's upload"),
    ("fetch", lambda lid: "https://res.cloudinary.com/demo/video/fetch/https://evil.example/x.mp4", "refused"),
    ("not-cloudinary", lambda lid: "https://evil.example/demo/video/upload/x.mp4", "not an allowed media host"),
])
async def test_a_reported_url_that_is_not_this_upload_fails_the_transcode(kube, operator, plan, lectures,
                                                                          notifications, attack, url, why):
    lid = f"untrusted-{attack}"
    bad = url(lid)
    lecture(lectures, lid)
    plan(lid, videoUrl=bad)  # exit 0, "done", with that URL in the report and the termination message
    name = f"vt-{attack}"
    kube.create(make_cr(name, lid))
    vt = await kube.await_for("vt", name, predicate=phase_is("Succeeded", "Failed"), timeout=60)
    st = vt["status"]
    assert st["phase"] == "Failed", st
    assert why in st["message"] and "videoUrl" not in st and "hlsUrl" not in st, st
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "UntrustedReport" and why in failed["message"]
    assert "Complete" not in {c["type"] for c in st["conditions"] if c["status"] == "True"}
    await wait_until(lambda: "Failed" in reasons(kube, name), what="the Failed event")
    assert "Succeeded" not in reasons(kube, name)
    doc = await wait_until(lambda: (d := lectures.find_one({"_id": lid})) and d["status"] == "FAILED" and d,
                           what="Lecture FAILED")
    assert why in doc["failureReason"] and bad not in str(doc.get("videoUrl"))
    (msg,) = await wait_until(lambda: notifications.of(lid, "VIDEO_FAILED"), what="the failure notification")
    assert why in msg["message"] and msg["videoUrl"] is None
    assert not notifications.of(lid, "VIDEO_READY")


async def test_the_own_upload_is_accepted(kube, operator, plan, lectures, notifications):
    """The control: the URL of exactly this transcode's upload, in the configured cloud."""
    lid = "trusted-own"
    lecture(lectures, lid)
    plan(lid, videoUrl=own_video_url(lid))
    kube.create(make_cr("vt-own", lid))
    vt = await kube.await_for("vt", "vt-own", predicate=phase_is("Succeeded", "Failed"), timeout=60)
    assert vt["status"]["phase"] == "Succeeded" and vt["status"]["videoUrl"] == own_video_url(lid), vt["status"]
    await wait_until(lambda: notifications.of(lid, "VIDEO_READY"), what="VIDEO_READY")


async def test_ffmpeg_stderr_reaches_people_as_one_clean_bounded_line(kube, operator, plan, lectures, notifications):
    """An unusable input whose reason is ffmpeg's coloured stderr (what a crafted file controls):
    escapes, newlines, a bidi override, NUL and 3,000 characters become one line of at most 500."""
    lid = "hostile-stderr"
    lecture(lectures, lid)
    stderr = ("\x1b[1;31m[mov,mp4,m4a @ 0x55d0]\x1b[0m moov atom not found\r\n"
              "\x1b]8;;https://evil.example\x07click here\x1b]8;;\x07\n"
              "input.mp4: Invalid data found when processing input\u202e4pm.exe\x00" + "A" * 3000)
    plan(lid, exit=65, reason=stderr)
    kube.create(make_cr("vt-stderr", lid))
    vt = await kube.await_for("vt", "vt-stderr", predicate=phase_is("Succeeded", "Failed"), timeout=60)
    message = vt["status"]["message"]
    assert vt["status"]["phase"] == "Failed"
    assert message.startswith("unusable input: [mov,mp4,m4a @ 0x55d0] moov atom not found click here input.mp4:"), message
    (note,) = await wait_until(lambda: notifications.of(lid, "VIDEO_FAILED"), what="the failure notification")
    doc = lectures.find_one({"_id": lid})
    for text in (message, note["message"], doc["failureReason"]):
        assert "moov atom not found" in text
        assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or c in "\u202e\u2028\u2029" for c in text), repr(text)
        assert "[1;31m" not in text and "8;;" not in text
    assert len(message) <= 500 and message.endswith("…")
    assert len(doc["failureReason"]) <= 500
