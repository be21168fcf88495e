"""The HLS ladder (issue 15): rungs by source size (never upscaled, portrait, aspect kept),
keyframes aligned across rungs at every segment boundary, a master playlist whose attributes
are what ffprobe and the bytes say, the MP4 unchanged in contract (and the same stream as the
720p rung), the set uploaded to the Cloudinary emulator with content types, and every
temporary file removed on success, failure and SIGTERM.

Clips are short (13 s at 10 fps: three segments of 6, 6 and 1 s) so the suite stays quick."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import pytest

from lectern_transcoder import encode, hls, profile
from lectern_transcoder.probe import parse

from tests.standins.services import spawn

from .conftest import CLI, assert_streamable, compliant_input, ffprobe, streams

SEG = profile.HLS_SEGMENT_SECONDS


def master_variants(path: Path) -> tuple[list[dict], dict | None]:
    """Parse a master playlist: [{attrs..., uri}] and the audio EXT-X-MEDIA attributes."""
    variants, audio, pending = [], None, None
    for line in path.read_text().splitlines():
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1]))
            pending = {k: v.strip('"') for k, v in pending.items()}
        elif line.startswith("#EXT-X-MEDIA:"):
            audio = {k: v.strip('"') for k, v in re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1])}
        elif line and not line.startswith("#") and pending is not None:
            variants.append({**pending, "uri": line})
            pending = None
    return variants, audio


def video_packets(path: Path) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts_time,pos,flags,size", "-of", "json", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)["packets"]


def probe_of(w: int, h: int, fps: float = 30, rotate: int = 0, codec: str = "mpeg4"):
    stream = {"index": 0, "codec_type": "video", "codec_name": codec, "width": w, "height": h, "pix_fmt": "yuv420p",
              "avg_frame_rate": f"{int(fps)}/1", "bit_rate": "5000000", "tags": {"rotate": str(rotate)} if rotate else {}}
    audio = {"index": 1, "codec_type": "audio", "codec_name": "aac", "channels": 2, "sample_rate": "48000",
             "bit_rate": "192000", "disposition": {"default": 1}}
    return parse({"format": {"duration": "60", "format_name": "mov"}, "streams": [stream, audio]})


@pytest.mark.parametrize("size, rotate, rungs", [
    ((640, 360), 0, [(640, 360, "mp4")]),                                          # no upscale, one rung
    ((1280, 720), 0, [(1280, 720, "mp4"), (854, 480, "low")]),
    ((1920, 1080), 0, [(1920, 1080, "top"), (1280, 720, "mp4"), (854, 480, "low")]),
    ((3840, 2160), 0, [(1920, 1080, "top"), (1280, 720, "mp4"), (854, 480, "low")]),
    ((1080, 1920), 0, [(1080, 1920, "top"), (720, 1280, "mp4"), (480, 854, "low")]),  # portrait
    ((1920, 1080), 90, [(1080, 1920, "top"), (720, 1280, "mp4"), (480, 854, "low")]),  # phone, rotated
    ((1440, 1080), 0, [(1440, 1080, "top"), (960, 720, "mp4"), (640, 480, "low")]),  # 4:3 kept
    ((1600, 900), 0, [(1280, 720, "mp4"), (854, 480, "low")]),                      # no 1080p in the source
    ((960, 540), 0, [(960, 540, "mp4")]),                                           # 480p would buy nothing
])
def test_rungs_by_source_size(size, rotate, rungs):
    p = probe_of(*size, rotate=rotate)
    lp = hls.plan_ladder(p, encode.plan(p, 2))
    assert [(r.width, r.height, r.kind) for r in lp.rungs] == rungs
    for r in lp.rungs:
        assert r.width % 2 == 0 and r.height % 2 == 0
        assert r.name == f"{min(r.width, r.height)}p"
        dw, dh = p.video.display_size
        assert r.width <= dw and r.height <= dh  # never upscaled
        assert abs(r.width / r.height - dw / dh) < 0.01  # aspect kept
    assert [r.shared for r in lp.rungs] == [r.kind == "mp4" for r in lp.rungs]  # the MP4 is the mp4 rung's encode


def test_a_remuxed_mp4_shares_no_rung():
    p = probe_of(1280, 720, codec="h264")
    p = parse({"format": {"duration": "60", "format_name": "mov"}, "streams": [
        {"index": 0, "codec_type": "video", "codec_name": "h264", "profile": "High", "width": 1280, "height": 720,
         "pix_fmt": "yuv420p", "avg_frame_rate": "30/1", "bit_rate": "900000"}]})
    mp4 = encode.plan(p, 2)
    assert mp4.copy_video
    lp = hls.plan_ladder(p, mp4)
    assert lp.shared is None and [r.name for r in lp.rungs] == ["720p", "480p"]


@pytest.fixture(scope="module")
def ladder_1080(tmp_path_factory, media):
    """One run on a 1920x1080 lecture clip (13 s, 10 fps): the three-rung case, shared by the
    structure, alignment, master-playlist and MP4 tests."""
    d = tmp_path_factory.mktemp("ladder1080")
    src = media("lecture-1080.mp4", duration=13, size="1920x1080", fps=10, video_codec="libx264", crf=28)
    scratch = d / "scratch"
    scratch.mkdir()
    term = d / "termination-log"
    env = {**os.environ, "TMPDIR": str(scratch), "LECTERN_TERMINATION_LOG": str(term)}
    done = subprocess.run([CLI, str(src), str(d / "out.mp4"), "--hls", str(d / "hls"), "--progress", "json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(scratch.iterdir()) == [], "temporary files left behind"
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return {"src": src, "dir": d / "hls", "mp4": d / "out.mp4", "events": events,
            "termination": json.loads(term.read_text()), "done": next(e for e in events if e["event"] == "done")}


def test_ladder_structure_and_report(ladder_1080):
    d, done = ladder_1080["dir"], ladder_1080["done"]
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["master.m3u8", "poster.jpg", "audio.m3u8", "audio.mp4", "1080p.m3u8", "1080p.mp4", "720p.m3u8",
         "720p.mp4", "480p.m3u8", "480p.mp4"])
    assert done["hlsUrl"] == str(d / "master.m3u8") == ladder_1080["termination"]["hlsUrl"]
    assert done["posterUrl"] == str(d / "poster.jpg") == ladder_1080["termination"]["posterUrl"]
    assert done["videoUrl"] == ladder_1080["termination"]["videoUrl"]
    assert [r["name"] for r in done["hls"]["rungs"]] == ["720p", "1080p", "480p"]  # the MP4's size first
    assert done["hlsBytes"] == sum(p.stat().st_size for p in d.iterdir())
    (ladder,) = [e for e in ladder_1080["events"] if e["event"] == "ladder"]
    assert [(r["name"], r["sharedWithMp4"]) for r in ladder["rungs"]] == [("1080p", False), ("720p", True),
                                                                          ("480p", False)]
    for name, (w, h) in {"1080p": (1920, 1080), "720p": (1280, 720), "480p": (854, 480)}.items():
        info = ffprobe(d / f"{name}.mp4")
        (v,) = streams(info, "video")
        assert (v["codec_name"], v["profile"], v["pix_fmt"], v["width"], v["height"]) == ("h264", "High", "yuv420p", w, h)
        assert streams(info, "audio") == []  # one audio rendition, not one per rung
    (a,) = streams(ffprobe(d / "audio.mp4"), "audio")
    assert (a["codec_name"], a["profile"], a["channels"]) == ("aac", "LC", profile.AUDIO_CHANNELS)
    poster = ffprobe(d / "poster.jpg")["streams"][0]
    assert (poster["codec_name"], poster["width"], poster["height"]) == ("mjpeg", 1280, 720)


def test_keyframes_aligned_at_every_segment_boundary(ladder_1080):
    """Each segment of each rung starts with a keyframe, at the same time in every rung, on
    the segment grid; segment durations are identical across rungs."""
    d = ladder_1080["dir"]
    starts = {}
    for name in ("1080p", "720p", "480p"):
        pl = hls.parse_media_playlist(d / f"{name}.m3u8")
        assert [round(s.duration, 3) for s in pl.segments] == [6.0, 6.0, 1.0]
        packets = video_packets(d / f"{name}.mp4")
        firsts = []
        for seg in pl.segments:
            inside = [p for p in packets if seg.offset <= int(p["pos"]) < seg.offset + seg.bytes]
            assert inside, (name, seg)
            assert inside[0]["flags"].startswith("K"), (name, seg, inside[0])
            firsts.append(round(float(inside[0]["pts_time"]), 3))
        starts[name] = firsts
    assert starts["1080p"] == starts["720p"] == starts["480p"] == [0.0, 6.0, 12.0], starts


def test_master_playlist_is_what_was_measured(ladder_1080):
    """BANDWIDTH / AVERAGE-BANDWIDTH from the segment bytes (recomputed here from the byte
    ranges), CODECS from ffprobe's profile and level, RESOLUTION and FRAME-RATE from ffprobe."""
    d = ladder_1080["dir"]
    variants, audio = master_variants(d / "master.m3u8")
    assert audio["TYPE"] == "AUDIO" and audio["URI"] == "audio.m3u8" and audio["CHANNELS"] == "1"
    apl = hls.parse_media_playlist(d / "audio.m3u8")

    def rates(pl):
        dur = sum(s.duration for s in pl.segments)
        avg = sum(s.bytes for s in pl.segments) * 8 / dur
        windows = []
        for i in range(len(pl.segments)):
            for j in range(i, len(pl.segments)):
                w = pl.segments[i:j + 1]
                t = sum(s.duration for s in w)
                if 0.5 * pl.target_duration <= t <= 1.5 * pl.target_duration:
                    windows.append(sum(s.bytes for s in w) * 8 / t)
        return max(windows), avg

    a_peak, a_avg = rates(apl)
    assert [v["uri"] for v in variants] == ["720p.m3u8", "1080p.m3u8", "480p.m3u8"]
    for v in variants:
        name = v["uri"].removesuffix(".m3u8")
        pl = hls.parse_media_playlist(d / v["uri"])
        peak, avg = rates(pl)
        assert abs(int(v["BANDWIDTH"]) - (peak + a_peak)) <= 2, (v, peak, a_peak)
        assert abs(int(v["AVERAGE-BANDWIDTH"]) - (avg + a_avg)) <= 2
        assert int(v["AVERAGE-BANDWIDTH"]) <= int(v["BANDWIDTH"])
        (s,) = streams(ffprobe(d / f"{name}.mp4"), "video")
        assert v["RESOLUTION"] == f"{s['width']}x{s['height']}"
        assert float(v["FRAME-RATE"]) == pytest.approx(float(Fraction(s["avg_frame_rate"])), abs=0.001)
        assert float(v["FRAME-RATE"]) == 10.0
        profile_idc = {"High": 100, "Main": 77, "Constrained Baseline": 66}[s["profile"]]
        video_codec, audio_codec = v["CODECS"].split(",")
        assert video_codec.startswith(f"avc1.{profile_idc:02x}") and video_codec.endswith(f"{s['level']:02x}")
        assert audio_codec == "mp4a.40.2"  # AAC-LC
        assert v["AUDIO"] == audio["GROUP-ID"]
    # the bytes on disk are exactly what the playlists describe (nothing between or after)
    for name in ("1080p", "720p", "480p", "audio"):
        pl = hls.parse_media_playlist(d / f"{name}.m3u8")
        assert pl.init_range[1] == 0
        end = pl.init_range[0]
        for s in pl.segments:
            assert s.offset == end
            end += s.bytes
        assert end == (d / f"{name}.mp4").stat().st_size


def test_the_mp4_keeps_its_contract_and_is_the_720p_rung(ladder_1080):
    mp4, d = ladder_1080["mp4"], ladder_1080["dir"]
    info = assert_streamable(mp4)  # H.264 High yuv420p, 1280x720, one AAC track, faststart
    (v,) = streams(info, "video")
    assert (v["width"], v["height"]) == (1280, 720)
    (a,) = streams(info, "audio")
    assert a["codec_name"] == "aac" and a["channels"] == profile.AUDIO_CHANNELS
    assert float(info["format"]["duration"]) == pytest.approx(13, abs=0.15)
    # the MP4's video is the 720p rung's stream, packet for packet (one encode for both)
    assert [p["size"] for p in video_packets(mp4)] == [p["size"] for p in video_packets(d / "720p.mp4")]
    assert float(v.get("start_time", 0)) == pytest.approx(float(a.get("start_time", 0)), abs=0.05)


def test_portrait_phone_clip(media, run_cli, tmp_path):
    src = media("portrait-rotated.mp4", duration=7, size="640x360", fps=10, rotate=90)
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--hls", str(tmp_path / "hls"))
    assert res.returncode == 0, res.stderr
    variants, _ = master_variants(tmp_path / "hls" / "master.m3u8")
    assert [v["RESOLUTION"] for v in variants] == ["360x640"]
    assert_streamable(tmp_path / "out.mp4")
    assert (ffprobe(tmp_path / "hls" / "poster.jpg")["streams"][0]["width"],
            ffprobe(tmp_path / "hls" / "poster.jpg")["streams"][0]["height"]) == (360, 640)


def test_remux_input_keeps_the_remux_and_gets_a_ladder(media, run_cli, tmp_path):
    src = compliant_input(media)
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--hls", str(tmp_path / "hls"))
    assert res.returncode == 0, res.stderr
    assert res.event("done")["mode"] == "remux"
    assert [(r["name"], r["sharedWithMp4"]) for r in res.event("ladder")["rungs"]] == [("360p", False)]
    assert_streamable(tmp_path / "out.mp4")
    assert (tmp_path / "hls" / "360p.m3u8").exists()


def test_hls_off_is_as_before(media, run_cli, tmp_path):
    src = media("plain-mpeg4.mp4", size="320x180", video_codec="mpeg4", extra=["-q:v", "5"])
    res = run_cli(str(src), str(tmp_path / "out.mp4"))
    assert res.returncode == 0, res.stderr
    assert not [e for e in res.events if e["event"] == "ladder"]
    done = res.event("done")
    assert "hlsUrl" not in done and "posterUrl" not in done and "hls" not in done
    assert set(res.termination) == {"exitCode", "reason", "videoUrl"}


def test_existing_ladder_dir_is_replaced_other_dirs_refused(media, run_cli, tmp_path):
    src = media("plain-mpeg4.mp4", size="320x180", video_codec="mpeg4", extra=["-q:v", "5"])
    out = tmp_path / "hls"
    out.mkdir()
    (out / "master.m3u8").write_text("#EXTM3U\n")
    (out / "stale.m3u8").write_text("old")
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--hls", str(out))
    assert res.returncode == 0, res.stderr
    assert not (out / "stale.m3u8").exists() and (out / "180p.m3u8").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("x")
    res = run_cli(str(src), str(tmp_path / "out2.mp4"), "--hls", str(other))
    assert res.returncode == 64 and "other files" in res.stderr
    assert not (tmp_path / "out2.mp4").exists() and [p.name for p in other.iterdir()] == ["cat.jpg"]


def test_sigterm_during_the_ladder_cleans_up(media, tmp_path, scratch):
    src = media("ladder-long.mp4", duration=30, size="1280x720", fps=30, video_codec="mpeg4", extra=["-q:v", "6"])
    term = tmp_path / "termination-log"
    env = {**os.environ, "TMPDIR": str(scratch), "LECTERN_TERMINATION_LOG": str(term)}
    proc = spawn([CLI, str(src), str(tmp_path / "out.mp4"), "--hls", str(tmp_path / "hls"),
                  "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if json.loads(line).get("stage") == "encoding":
                break
        time.sleep(1.0)
        assert proc.poll() is None, "finished before it could be interrupted"
        assert any((p / "hls").exists() for p in scratch.iterdir()), "no ladder being written?"
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "hls").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert json.loads(term.read_text())["exitCode"] == 143


# -- upload to the Cloudinary emulator -----------------------------------------------------------


@pytest.fixture
def cli_env(emu):
    return {"LECTERN_TEST_INSECURE_LOOPBACK": f"127.0.0.1:{emu.port}", "LECTERN_UPLOAD_CHUNK_BYTES": "65536"}


def test_upload_of_the_set_with_content_types(media, emu, run_cli, cli_env):
    src = media("upload-720.mp4", duration=7, size="1280x720", fps=10, video_codec="mpeg4", extra=["-q:v", "5"])
    emu.put_asset(src, "raw/lec9")
    res = run_cli(emu.secure_url_for("raw/lec9"), "cloudinary:lectures/lec9/abc", "--hls",
                  "cloudinary:lectures/lec9/abc-hls", "--lecture-id", "lec9", env=cli_env, timeout=180)
    assert res.returncode == 0, res.stderr
    done = res.event("done")
    master = emu.asset("lectures/lec9/abc-hls/master.m3u8", "raw")
    assert done["hlsUrl"] == emu.secure_url_for(master.public_id, resource_type="raw") == res.termination["hlsUrl"]
    assert done["posterUrl"] == emu.secure_url_for("lectures/lec9/abc-hls/poster", resource_type="image") \
        == res.termination["posterUrl"]
    assert done["videoUrl"] == emu.secure_url_for("lectures/lec9/abc") == res.termination["videoUrl"]
    # everything under one folder; the master playlist last, once all it points at is there
    ups = [(u["result"]["public_id"], u["result"]["resource_type"]) for u in emu.uploads]
    assert ups[0] == ("lectures/lec9/abc", "video")
    assert ups[-1] == ("lectures/lec9/abc-hls/master.m3u8", "raw")
    assert sorted(ups[1:]) == sorted([(f"lectures/lec9/abc-hls/{n}", "raw") for n in
                                      ("720p.mp4", "480p.mp4", "audio.mp4", "720p.m3u8", "480p.m3u8", "audio.m3u8",
                                       "master.m3u8")] + [("lectures/lec9/abc-hls/poster", "image")])
    assert done["stageSeconds"]["uploading"] > 0
    # served with the right content types; the playlists' relative URIs resolve next to the master
    base = done["hlsUrl"].rsplit("/", 1)[0]
    types = {"master.m3u8": "application/vnd.apple.mpegurl", "720p.m3u8": "application/vnd.apple.mpegurl",
             "720p.mp4": "video/mp4", "audio.mp4": "video/mp4"}
    for name, ctype in types.items():
        with urllib.request.urlopen(f"{base}/{name}", timeout=30) as r:
            assert r.headers["Content-Type"] == ctype
    with urllib.request.urlopen(done["posterUrl"], timeout=30) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    with urllib.request.urlopen(done["hlsUrl"], timeout=30) as r:
        variants = re.findall(r"^(\w+\.m3u8)$", r.read().decode(), re.M)
    assert variants == ["720p.m3u8", "480p.m3u8"]


def test_upload_failure_of_the_set_is_transient_and_cleans_up(media, emu, run_cli, cli_env, tmp_path):
    src = media("plain-mpeg4.mp4", size="320x180", video_codec="mpeg4", extra=["-q:v", "5"])
    emu.fail_next(times=100, status=503, route="upload")
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--hls", "cloudinary:lectures/x/hls",
                  env=cli_env, timeout=120)
    assert res.returncode == 75, res.stderr
    assert "hlsUrl" not in res.termination
    assert emu.temp_files() == []
