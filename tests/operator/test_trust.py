"""operator/trust.py: what the operator believes of a transcode pod's report (issue 12, item 1)."""

from __future__ import annotations

import pytest

from lectern_operator import jobs
from lectern_operator.settings import Settings
from lectern_operator.trust import Untrusted, accept_video_url, user_text

CLOUD = "acme"
PID = "lectern/lectures/l1/0123456789ab"


def test_the_expected_upload_is_accepted():
    for url in (f"https://res.cloudinary.com/acme/video/upload/v1712/{PID}.mp4",
                f"https://res.cloudinary.com/acme/video/upload/{PID}.mp4"):
        assert accept_video_url(url, CLOUD, PID) == url


def test_the_public_id_matches_what_the_operator_chose():
    target = jobs.output_target(Settings(), "l1", "https://res.cloudinary.com/acme/video/upload/raw.mov")
    pid = target.split(":", 1)[1]
    assert accept_video_url(f"https://res.cloudinary.com/acme/video/upload/v2/{pid}.mp4", CLOUD, pid)


@pytest.mark.parametrize("url, why", [
    (None, "no video URL"),
    ("", "no video URL"),
    (f"http://res.cloudinary.com/acme/video/upload/{PID}.mp4", "https"),
    (f"https://res.cloudinary.com/other/video/upload/{PID}.mp4", "not under an allowed"),
    ("https://res.cloudinary.com/acme/video/upload/lectern/lectures/l2/0123456789ab.mp4", "not this transcode"),
    (f"https://res.cloudinary.com/acme/video/upload/{PID}x.mp4", "not this transcode"),
    (f"https://res.cloudinary.com/acme/video/upload/{PID}.mp4?x=1", "query"),
    (f"https://res.cloudinary.com/acme/video/upload/{PID}.mp4#x", "query"),
    (f"https://res.cloudinary.com/acme/video/fetch/https://evil.example/{PID}.mp4", "refused"),
    (f"https://res.cloudinary.com/acme/image/upload/{PID}.mp4", "not this transcode"),
    (f"https://res.cloudinary.com/acme/video/upload/e_blur/{PID}.mp4", "not this transcode"),
    (f"https://res.cloudinary.com/acme/video/upload/x/../{PID}.mp4", "dot segments"),
    (f"https://evil.example/acme/video/upload/{PID}.mp4", "not an allowed media host"),
    (f"https://res.cloudinary.com.evil.example/acme/video/upload/{PID}.mp4", "not an allowed media host"),
    (f"https://user@res.cloudinary.com/acme/video/upload/{PID}.mp4", "credentials"),
    (f"https://res.cloudinary.com/acme/video/upload/{PID}.mp4\n", "control"),
    (f"javascript:alert(1)//res.cloudinary.com/acme/video/upload/{PID}.mp4", "https"),
])
def test_anything_else_is_refused_with_a_reason(url, why):
    with pytest.raises(Untrusted, match=why):
        accept_video_url(url, CLOUD, PID)


def test_no_cloud_configured_is_refused():
    with pytest.raises(Untrusted, match="cloud"):
        accept_video_url(f"https://res.cloudinary.com/acme/video/upload/{PID}.mp4", "", PID)


def test_local_emulator_escape():
    url = f"http://127.0.0.1:8123/acme/video/upload/v1/{PID}.mp4"
    assert accept_video_url(url, CLOUD, PID, insecure_loopback=frozenset({("127.0.0.1", 8123)})) == url
    with pytest.raises(Untrusted):
        accept_video_url(url, CLOUD, PID)


@pytest.mark.parametrize("raw, clean", [
    ("moov atom not found", "moov atom not found"),
    ("a\nb\r\nc\td", "a b c d"),
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[1;38;5;196mError\x1b[0m while decoding\r\n", "Error while decoding"),
    ("\x1b]8;;https://evil.example\x07click\x1b]8;;\x07 here", "click here"),
    ("\x9b2Jcleared", "cleared"),
    ("nul\x00byte", "nul byte"),
    ("bidi \u202egnp.exe\u202c", "bidi gnp.exe"),
    ("zero\u200bwidth", "zero width"),
    ("line\u2028sep", "line sep"),
    ("c1\x85ctl", "c1 ctl"),
    (None, ""),
    (42, "42"),
])
def test_user_text_strips_control_characters(raw, clean):
    assert user_text(raw) == clean


def test_user_text_is_bounded():
    assert user_text("x" * 1000, 100) == "x" * 99 + "…"
    assert len(user_text("word " * 500, 300)) <= 300
    assert user_text("short", 100) == "short"


def test_an_ffmpeg_killed_for_memory_fails_the_job_without_retries():
    """transcoder exit 71 (errors.OutOfMemory) is a FailJob rule of the Job's podFailurePolicy."""
    from lectern_operator.api import v1alpha1 as api
    from lectern_transcoder.errors import EXIT_OUT_OF_MEMORY, OutOfMemory

    assert OutOfMemory("x").exit_code == EXIT_OUT_OF_MEMORY == jobs.EXIT_OUT_OF_MEMORY == 71
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": "l1", "namespace": "lectern", "uid": "0b6f7c1e-1111-2222-3333-444455556666"},
            "spec": {"lectureId": "l1", "instructorId": "i1",
                     "rawVideoUrl": "https://res.cloudinary.com/demo/video/upload/raw.mov"}}
    rules = jobs.build_job(body, Settings())["spec"]["podFailurePolicy"]["rules"]
    fail_codes = {c for r in rules if r["action"] == "FailJob" for c in r.get("onExitCodes", {}).get("values", [])}
    assert {65, 71} <= fail_codes
    assert 75 not in fail_codes and 137 not in fail_codes  # transient and node-lost pods are retried


def test_raw_resources_such_as_the_hls_master():
    pid = "lectern/lectures/l1/0123456789ab/hls/master.m3u8"
    url = f"https://res.cloudinary.com/acme/raw/upload/v3/{pid}"
    assert accept_video_url(url, CLOUD, pid, extensions=(), resource_type="raw") == url
    with pytest.raises(Untrusted):
        accept_video_url(url + ".mp4", CLOUD, pid, extensions=(), resource_type="raw")
