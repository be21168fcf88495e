"""The CR reporter: merge patches of `status.report` on the status subresource, as the
operator expects them (docs/architecture.md), and never a failed transcode because the API
server is away."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest

from lectern_operator.api.v1alpha1 import TranscoderReport
from lectern_transcoder.report import CrReporter

API_PATH = "/apis/media.lectern.dev/v1alpha1/namespaces/lectures/videotranscodes/vt-lec1"


class _ApiServer(http.server.BaseHTTPRequestHandler):
    patches: list = []

    def do_PATCH(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).patches.append({"path": self.path, "type": self.headers["Content-Type"],
                                   "auth": self.headers.get("Authorization"), "body": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass


@pytest.fixture
def api_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    _ApiServer.patches = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_reporter_sends_merge_patches(api_server):
    r = CrReporter(API_PATH, api_server, pod="vt-lec1-abcde")
    r.update(stage="encoding", progress=42, speed=1.5)
    r.update(stage="done", progress=100, video_url="https://res.cloudinary.com/x.mp4")
    r.close()
    assert _ApiServer.patches, "nothing arrived"
    last = _ApiServer.patches[-1]
    assert last["path"] == API_PATH + "/status"
    assert last["type"] == "application/merge-patch+json"
    assert list(last["body"]) == ["status"] and list(last["body"]["status"]) == ["report"]
    report = last["body"]["status"]["report"]
    assert report["stage"] == "done" and report["progress"] == 100
    assert report["videoUrl"] == "https://res.cloudinary.com/x.mp4" and report["pod"] == "vt-lec1-abcde"
    TranscoderReport.model_validate(report)  # the operator's model accepts it


def test_cli_reports_progress_to_the_cr(api_server, media, run_cli, tmp_path):
    src = media("report.mp4", duration=3, video_codec="mpeg4", extra=["-q:v", "5"])
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--report-cr", API_PATH, "--lecture-id", "lec1",
                  env={"LECTERN_KUBE_API_URL": api_server})
    assert res.returncode == 0, res.stderr
    reports = [p["body"]["status"]["report"] for p in _ApiServer.patches]
    assert all(p["path"] == API_PATH + "/status" for p in _ApiServer.patches)
    progress = [r["progress"] for r in reports]
    assert progress == sorted(progress)
    assert reports[-1]["stage"] == "done" and reports[-1]["progress"] == 100
    assert reports[-1]["videoUrl"] == str(tmp_path / "out.mp4")
    assert reports[-1]["inputDurationSeconds"] == pytest.approx(3, abs=0.1)
    assert "encoding" in [r["stage"] for r in reports]


def test_reporter_sends_the_hls_urls(api_server):
    r = CrReporter(API_PATH, api_server, pod="vt-lec1-abcde")
    r.update(stage="done", progress=100, video_url="https://res.cloudinary.com/x.mp4",
             hls_url="https://res.cloudinary.com/raw/upload/x-hls/master.m3u8",
             poster_url="https://res.cloudinary.com/image/upload/x-hls/poster.jpg")
    r.close()
    report = _ApiServer.patches[-1]["body"]["status"]["report"]
    assert report["hlsUrl"] == "https://res.cloudinary.com/raw/upload/x-hls/master.m3u8"
    assert report["posterUrl"] == "https://res.cloudinary.com/image/upload/x-hls/poster.jpg"
    assert TranscoderReport.model_validate(report).hls_url == report["hlsUrl"]


def test_cli_reports_the_hls_urls_with_the_video_url(api_server, media, run_cli, tmp_path):
    src = media("report-hls.mp4", duration=3, video_codec="mpeg4", extra=["-q:v", "5"])
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--hls", str(tmp_path / "hls"), "--report-cr", API_PATH,
                  "--lecture-id", "lec1", env={"LECTERN_KUBE_API_URL": api_server})
    assert res.returncode == 0, res.stderr
    reports = [p["body"]["status"]["report"] for p in _ApiServer.patches]
    first_with_video = next(r for r in reports if r.get("videoUrl"))
    assert first_with_video["hlsUrl"] and first_with_video["posterUrl"]  # one patch carries all three
    assert reports[-1]["hlsUrl"] == res.termination["hlsUrl"]
    assert reports[-1]["posterUrl"] == res.termination["posterUrl"]


def test_cli_reports_failure(api_server, run_cli, tmp_path):
    src = tmp_path / "bad.mp4"
    src.write_bytes(b"not a video at all" * 100)
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--report-cr", API_PATH,
                  env={"LECTERN_KUBE_API_URL": api_server})
    assert res.returncode == 65
    assert _ApiServer.patches[-1]["body"]["status"]["report"]["stage"] == "failed"


def test_unreachable_api_server_never_fails_a_transcode(media, run_cli, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = media("report.mp4", duration=3, video_codec="mpeg4", extra=["-q:v", "5"])
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--report-cr", API_PATH,
                  env={"LECTERN_KUBE_API_URL": f"http://127.0.0.1:{port}"})
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("cannot report") == 1  # said once, not per update
