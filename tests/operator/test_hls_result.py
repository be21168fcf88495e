"""HLS in the operator's result (issue 15), without a cluster: the termination message and the
report give hlsUrl/posterUrl, only https URLs reach the status, and a transcode that asked for
HLS but got none still succeeds with its MP4 (and says so)."""

from __future__ import annotations

import json

import pytest

from lectern_operator import jobs, reconcile
from lectern_operator.settings import Settings

HLS = "https://res.cloudinary.com/d/raw/upload/v2/lectern/lectures/l1/abc-hls/master.m3u8"
POSTER = "https://res.cloudinary.com/d/image/upload/v2/lectern/lectures/l1/abc-hls/poster.jpg"
VIDEO = "https://res.cloudinary.com/d/video/upload/v2/lectern/lectures/l1/abc.mp4"


def _pod(message: str) -> dict:
    return {"status": {"containerStatuses": [{"name": "transcoder", "state": {"terminated": {
        "exitCode": 0, "reason": "Completed", "message": message}}}]}}


def test_termination_message_gives_the_hls_urls():
    line = json.dumps({"exitCode": 0, "reason": "encode done", "videoUrl": VIDEO, "hlsUrl": HLS,
                       "posterUrl": POSTER, "other": "ignored"})
    term = reconcile.termination(_pod("some log\n" + line))
    assert term == {"exitCode": 0, "reason": "encode done", "videoUrl": VIDEO, "hlsUrl": HLS, "posterUrl": POSTER}
    plain = reconcile.termination(_pod(json.dumps({"exitCode": 0, "reason": "ok", "videoUrl": VIDEO})))
    assert "hlsUrl" not in plain and "posterUrl" not in plain


V = {"videoUrl": VIDEO}


@pytest.mark.parametrize("report,term,urls,refused", [
    ({**V, "hlsUrl": HLS, "posterUrl": POSTER}, {}, {"hlsUrl": HLS, "posterUrl": POSTER}, 0),
    ({}, {**V, "hlsUrl": HLS, "posterUrl": POSTER}, {"hlsUrl": HLS, "posterUrl": POSTER}, 0),  # report lost
    # the three URLs come from one place, as the transcoder writes them together
    ({**V, "hlsUrl": HLS}, {**V, "hlsUrl": HLS + "?old", "posterUrl": POSTER}, {"hlsUrl": HLS}, 0),
    ({"hlsUrl": HLS + "?partial"}, {**V, "hlsUrl": HLS, "posterUrl": POSTER}, {"hlsUrl": HLS, "posterUrl": POSTER}, 0),
    (V, V, {}, 0),                                                                          # HLS off
    ({**V, "hlsUrl": "http://res.cloudinary.com/x/master.m3u8"}, {}, {}, 1),                # not https
    ({**V, "hlsUrl": "/scratch/hls/master.m3u8", "posterUrl": "javascript:alert(1)"}, {}, {}, 2),
    ({**V, "hlsUrl": "https://res.cloudinary.com/a b.m3u8", "posterUrl": POSTER}, {}, {"posterUrl": POSTER}, 1),
    ({**V, "hlsUrl": "https://x/" + "a" * 2050}, {}, {}, 1),
    ({**V, "hlsUrl": 42}, {}, {}, 1),
])
def test_hls_result_only_https(report, term, urls, refused):
    got, why = reconcile.hls_result(report, term)
    assert got == urls and len(why) == refused


# What the operator told this transcode's Job to write (jobs.output_target / hls_target).
RAW = "https://res.cloudinary.com/d/video/upload/r.mov"
PID = jobs.output_target(Settings(), "l1", RAW).split(":", 1)[1]
OWN_HLS = f"https://res.cloudinary.com/d/raw/upload/v2/{PID}-hls/master.m3u8"
OWN_POSTER = f"https://res.cloudinary.com/d/image/upload/v2/{PID}-hls/poster.jpg"
OWN = {"videoUrl": f"https://res.cloudinary.com/d/video/upload/v2/{PID}.mp4"}


@pytest.mark.parametrize("spec,default,report,urls,events", [
    ({}, True, {**OWN, "hlsUrl": OWN_HLS, "posterUrl": OWN_POSTER}, {"hlsUrl": OWN_HLS, "posterUrl": OWN_POSTER}, []),
    ({}, True, OWN, {}, ["HlsMissing"]),                                       # asked for (default), not delivered
    ({"outputs": [{"type": "hls"}]}, False, OWN, {}, ["HlsMissing"]),         # asked for by the CR
    ({"outputs": [{"type": "mp4"}]}, True, OWN, {}, []),                      # opted out: nothing to say
    ({}, False, OWN, {}, []),                                                 # HLS off: exactly as before
    ({}, True, {**OWN, "hlsUrl": "http://plain/master.m3u8"}, {}, ["HlsRefused", "HlsMissing"]),
    # https, but another lecture's ladder or another cloud's: not this transcode's upload (issue 12)
    ({}, True, {**OWN, "hlsUrl": HLS, "posterUrl": OWN_POSTER}, {"posterUrl": OWN_POSTER}, ["HlsRefused", "HlsMissing"]),
    ({}, True, {**OWN, "hlsUrl": OWN_HLS.replace("/d/", "/evil/"), "posterUrl": OWN_POSTER.replace("/d/", "/evil/")},
     {}, ["HlsRefused", "HlsRefused", "HlsMissing"]),
    ({}, True, {**OWN, "hlsUrl": f"https://res.cloudinary.com/d/raw/fetch/https://evil.example/{PID}-hls/master.m3u8"},
     {}, ["HlsRefused", "HlsMissing"]),
])
def test_hls_outputs_for_the_status(monkeypatch, spec, default, report, urls, events):
    sent = []
    monkeypatch.setattr(reconcile.kopf, "event", lambda body, **kw: sent.append(kw["reason"]))
    r = reconcile.Reconciler(Settings(hls_default=default, cloudinary_cloud_name="d"), lambda: None, None, None)
    body = {"metadata": {"name": "vt", "namespace": "n"},
            "spec": {"lectureId": "l1", "instructorId": "u1", "rawVideoUrl": RAW, **spec}}
    assert r.hls_outputs(body, report, {}) == urls
    assert sent == events
