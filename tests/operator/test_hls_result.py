"""HLS in the operator's result (issue 15), without a cluster: the termination message and the
report give hlsUrl/posterUrl, only https URLs reach the status, and a transcode that asked for
HLS but got none still succeeds with its MP4 (and says so)."""

from __future__ import annotations

import json

import pytest

from lectern_operator import reconcile
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


@pytest.mark.parametrize("spec,default,report,events", [
    ({}, True, {**V, "hlsUrl": HLS, "posterUrl": POSTER}, []),
    ({}, True, V, ["HlsMissing"]),                                      # asked for (default) and not delivered
    ({"outputs": [{"type": "hls"}]}, False, V, ["HlsMissing"]),         # asked for by the CR
    ({"outputs": [{"type": "mp4"}]}, True, V, []),                      # opted out: nothing to say
    ({}, False, V, []),                                                 # HLS off: exactly as before
    ({}, True, {**V, "hlsUrl": "http://plain/master.m3u8"}, ["HlsRefused", "HlsMissing"]),
])
def test_hls_outputs_for_the_status(monkeypatch, spec, default, report, events):
    sent = []
    monkeypatch.setattr(reconcile.kopf, "event", lambda body, **kw: sent.append(kw["reason"]))
    r = reconcile.Reconciler(Settings(hls_default=default), lambda: None, None, None)
    body = {"metadata": {"name": "vt", "namespace": "n"},
            "spec": {"lectureId": "l1", "instructorId": "u1", "rawVideoUrl": "https://res.cloudinary.com/r.mov", **spec}}
    urls = r.hls_outputs(body, report, {})
    assert urls == {k: v for k, v in report.items() if k != "videoUrl" and reconcile.https_url(v)}
    assert sent == events
