"""Download from and upload to the Cloudinary emulator with the real SDK: the Job's path.

The emulator listens on 127.0.0.1 over plain http, which the SSRF rules refuse; the tests open
exactly its port with the test-only `LECTERN_TEST_INSECURE_LOOPBACK`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from lectern_transcoder import upload as upload_mod
from lectern_transcoder.errors import Transient

from tests.standins.services import spawn

from .conftest import CLI, assert_streamable, compliant_input



@pytest.fixture
def cli_env(emu):
    return {"LECTERN_TEST_INSECURE_LOOPBACK": f"127.0.0.1:{emu.port}", "LECTERN_UPLOAD_CHUNK_BYTES": "16384"}


@pytest.fixture
def raw(media, emu):
    """A raw upload the API already stored: 640x360, non-compliant (mpeg4) so it is encoded."""
    src = media("raw-mpeg4.mp4", size="640x360", video_codec="mpeg4", extra=["-q:v", "4"])
    emu.put_asset(src, "raw/lec1")
    return src


@pytest.fixture
def compliant(media, emu):
    """A raw upload that is already streamable: the remux path, so tests about the transfer
    itself spend no CPU on encoding."""
    src = compliant_input(media)
    emu.put_asset(src, "raw/lec2")
    return src


def _delivery(emu):
    return [r for r in emu.requests if r["route"] == "delivery"]


def test_download_encode_upload(emu, raw, run_cli, cli_env):
    url = emu.secure_url_for("raw/lec1")  # with its v123 version segment, as the API stores it
    assert "/v" in url
    res = run_cli(url, "cloudinary:lectures/lec1/0123456789ab", "--lecture-id", "lec1", env=cli_env)
    assert res.returncode == 0, res.stderr
    asset = emu.asset("lectures/lec1/0123456789ab")
    assert res.termination["videoUrl"] == emu.secure_url_for("lectures/lec1/0123456789ab")
    done = res.event("done")
    assert done["videoUrl"] == res.termination["videoUrl"]
    # where the time went, stage by stage, within the whole run; every line is timestamped
    assert set(done["stageSeconds"]) == {"downloading", "probing", "encoding", "uploading"}, done
    assert all(v >= 0 for v in done["stageSeconds"].values())
    assert sum(done["stageSeconds"].values()) <= done["seconds"] + 0.05, done
    assert done["stageSeconds"]["encoding"] > 0.1, done
    stamps = [e["ts"] for e in res.events]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] <= done["seconds"] + 1, stamps
    # the bandwidth saver asked for a rendition no larger than the target
    (get,) = _delivery(emu)
    assert "/c_limit,w_1280,h_1280/v" in get["path"]
    # chunked upload_large (16 KiB chunks here), deterministic public id, overwrite
    (up,) = emu.uploads
    assert up["parts"] > 1
    assert up["params"]["public_id"] == "lectures/lec1/0123456789ab"
    assert up["params"]["overwrite"] in ("1", "true", "True")
    v = next(s for s in asset.probe["streams"] if s["codec_type"] == "video")
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert_streamable(asset.path)
    stages = [e["stage"] for e in res.events if e["event"] == "progress"]
    assert stages[0] == "downloading" and "uploading" in stages and stages[-1] == "done"
    # a retry of the same transcode overwrites, never duplicates
    again = upload_mod.upload(asset.path, "lectures/lec1/0123456789ab")
    assert again["public_id"] == "lectures/lec1/0123456789ab"
    assert [a for a in emu.assets if a[1].startswith("lectures/")] == [("video", "lectures/lec1/0123456789ab")]
    assert emu.uploads[-1]["params"]["overwrite"] in ("1", "true", "True")


def test_download_resumes_after_dropped_connection(emu, compliant, run_cli, cli_env, tmp_path):
    raw = compliant
    url = emu.delivery_url("raw/lec2")
    n = raw.stat().st_size // 3
    emu.drop_connection_after(n, times=2)
    res = run_cli(url, str(tmp_path / "out.mp4"), env=cli_env)
    assert res.returncode == 0, res.stderr
    gets = _delivery(emu)
    assert len(gets) == 3
    assert gets[0]["range"] is None
    assert gets[1]["range"] == f"bytes={n}-" and gets[2]["range"] == f"bytes={2 * n}-"
    assert sum(g["bytes"] for g in gets) == raw.stat().st_size  # nothing fetched twice
    assert_streamable(tmp_path / "out.mp4")


def test_download_retries_5xx(emu, compliant, run_cli, cli_env, tmp_path):
    emu.fail_next(2, status=503, route="delivery", body="html")
    res = run_cli(emu.delivery_url("raw/lec2"), str(tmp_path / "out.mp4"), env=cli_env)
    assert res.returncode == 0, res.stderr
    assert [g["status"] for g in _delivery(emu)] == [503, 503, 200]


def test_missing_asset_is_unusable(emu, run_cli, cli_env, tmp_path):
    res = run_cli(emu.delivery_url("raw/nothing-here"), str(tmp_path / "out.mp4"), env=cli_env)
    assert res.returncode == 65, res.stderr
    assert "HTTP 404" in res.termination["reason"]


def test_download_size_cap(emu, raw, run_cli, cli_env, tmp_path):
    res = run_cli(emu.delivery_url("raw/lec1"), str(tmp_path / "out.mp4"), "--max-bytes", "10000", env=cli_env)
    assert res.returncode == 65, res.stderr
    # refused on the announced Content-Length, before streaming the body to disk
    assert f"input is {raw.stat().st_size} bytes, more than the 10000-byte limit" in res.termination["reason"]


def test_upload_retried_after_5xx(emu, compliant, run_cli, cli_env):
    emu.fail_next(1, status=500, route="upload")
    res = run_cli(emu.delivery_url("raw/lec2"), "cloudinary:lectures/lec1/retry", env=cli_env)
    assert res.returncode == 0, res.stderr
    assert emu.asset("lectures/lec1/retry")
    assert [r["status"] for r in emu.requests if r["route"] == "upload"][0] == 500


def test_upload_gives_up_as_transient(emu, compliant, tmp_path):
    src = compliant
    emu.fail_next(10, status=502, route="upload", body="html")
    with pytest.raises(Transient, match="after 3 attempts"):
        upload_mod.upload(src, "lectures/x/y", attempts=3, backoff_seconds=0.01)
    assert emu.request_count("upload") == 3


def test_cloudinary_output_needs_credentials(run_cli, media, tmp_path, monkeypatch):
    monkeypatch.delenv("CLOUDINARY_URL", raising=False)
    res = run_cli(str(compliant_input(media)), "cloudinary:a/b")
    assert res.returncode == 70 and "CLOUDINARY_URL is not set" in res.termination["reason"]
    assert not [e for e in res.events if e.get("stage") == "encoding"]  # failed before any work


def test_secret_never_printed(emu, compliant, run_cli, cli_env):
    emu.fail_next(10, status=401, route="upload")  # a credentials failure is reported...
    res = run_cli(emu.delivery_url("raw/lec2"), "cloudinary:lectures/lec1/s", env=cli_env)
    assert res.returncode == 70, res.stderr
    for text in (res.stdout, res.stderr, str(res.termination)):
        assert emu.api_secret not in text  # ...without the secret


def test_rendition_refused_falls_back_to_the_raw_file(emu, run_cli, cli_env, tmp_path):
    # Cloudinary refuses on-the-fly transformations it cannot do (large videos: 400/423); the
    # raw file is then fetched as it is. Here the "video" is audio only, so the emulator
    # cannot derive a rendition, and the transcoder then judges the raw file itself.
    audio = tmp_path / "talk.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=220:d=2", "-c:a", "aac", str(audio)],
                   check=True)
    emu.put_asset(audio, "raw/audio-only")
    res = run_cli(emu.delivery_url("raw/audio-only", format="m4a"), str(tmp_path / "out.mp4"), env=cli_env)
    gets = _delivery(emu)
    assert [("c_limit" in g["path"], g["status"]) for g in gets] == [(True, 400), (False, 200)]
    assert res.returncode == 65 and "no video stream" in res.termination["reason"]


def test_sigterm_during_upload(emu, compliant, cli_env, tmp_path, scratch):
    # The upload runs in a worker thread; the main thread must still react to SIGTERM at once,
    # clean up and exit 143 even though the SDK call is blocked on a slow server.
    emu.set_latency(10, route="upload")
    env = {**os.environ, **cli_env, "TMPDIR": str(scratch), "LECTERN_TERMINATION_LOG": str(tmp_path / "term")}
    proc = spawn([CLI, emu.delivery_url("raw/lec2"), "cloudinary:lectures/lec1/slow"],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if json.loads(line).get("stage") == "uploading":
                break
        time.sleep(0.5)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(8)
        assert time.monotonic() - t < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    assert list(scratch.iterdir()) == []
    assert json.loads((tmp_path / "term").read_text())["exitCode"] == 143
