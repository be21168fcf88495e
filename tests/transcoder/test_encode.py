"""The CLI on real, odd inputs: every output must meet the streaming contract (H.264 High
8-bit 4:2:0, even size within 1280x720 / 720x1280, one AAC track, faststart), keep the aspect
ratio, never be upscaled, and take the remux path only when the input already complies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import assert_streamable, compliant_input, ffprobe, streams

pytestmark = pytest.mark.slow  # real encodes of generated media


def transcode(run_cli, src, out, *extra):
    res = run_cli(str(src), str(out), *extra)
    assert res.returncode == 0, res.stderr
    assert res.termination == {"exitCode": 0, "reason": res.termination["reason"], "videoUrl": str(out)}
    return res


def test_1080p_lecture_becomes_720p(media, run_cli, tmp_path):
    # Matroska stores no per-stream bitrate: the audio is re-encoded in a parallel process
    src = media("hd.mkv", duration=1, size="1920x1080", fps=10)
    res = transcode(run_cli, src, tmp_path / "out.mp4")
    assert res.event("plan")["audio"] == "encode (parallel)"
    info = assert_streamable(tmp_path / "out.mp4")
    (v,) = streams(info, "video")
    assert (v["width"], v["height"]) == (1280, 720)
    assert v["profile"] == "High"
    assert res.event("plan")["mode"] == "transcode"
    assert len(streams(info, "audio")) == 1


@pytest.mark.parametrize("name, size, kw, max_h, expected", [
    ("portrait.mp4", "360x640", {}, 180, (180, 320)),
    ("four-three.mp4", "640x480", {}, 180, (240, 180)),
    # a phone clip stored landscape with a 90° display rotation plays portrait
    ("rotated.mp4", "640x360", {"rotate": 90}, 180, (180, 320)),
    ("odd.mkv", "321x181", {"pix_fmt": "yuv444p"}, 720, (320, 180)),
])
def test_geometry(media, run_cli, tmp_path, name, size, kw, max_h, expected):
    src = media(name, size=size, **kw)
    (v_in,) = streams(ffprobe(src), "video")
    assert f"{v_in['width']}x{v_in['height']}" == size
    out = tmp_path / "out.mp4"
    res = transcode(run_cli, src, out, "--max-height", str(max_h))
    info = assert_streamable(out)
    (v,) = streams(info, "video")
    assert (v["width"], v["height"]) == expected
    assert v.get("sample_aspect_ratio", "1:1") in ("1:1", "0:1")
    # the rotation is applied to the pixels, not left as metadata a player might ignore
    assert not any("rotation" in sd for sd in v.get("side_data_list", [])) and "rotate" not in v.get("tags", {})
    assert res.event("plan")["mode"] == "transcode"


def test_no_audio(media, run_cli, tmp_path):
    src = media("noaudio.mkv", audio=False, video_codec="mpeg4", extra=["-q:v", "5"])
    out = tmp_path / "out.mp4"
    transcode(run_cli, src, out)
    info = assert_streamable(out)
    assert streams(info, "audio") == []


@pytest.mark.parametrize("name, kw", [
    ("hevc10.mkv", {"video_codec": "libx265", "pix_fmt": "yuv420p10le"}),
    ("h264-444-10bit.mkv", {"video_codec": "libx264", "pix_fmt": "yuv444p10le"}),
])
def test_high_bit_depth_becomes_8bit_420(media, run_cli, tmp_path, name, kw):
    src = media(name, **kw)
    (v_in,) = streams(ffprobe(src), "video")
    assert v_in["pix_fmt"] == kw["pix_fmt"]
    out = tmp_path / "out.mp4"
    res = transcode(run_cli, src, out)
    (v,) = streams(assert_streamable(out), "video")
    assert v["profile"] == "High" and v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (320, 180)
    assert res.event("plan")["mode"] == "transcode"


def test_several_audio_tracks_keeps_the_default_one(media, run_cli, tmp_path):
    # three tracks; the second is the default and the only one at 44.1 kHz (which the encode
    # keeps), so the output's sample rate shows which track was kept
    src = media("tracks.mkv", audio_tracks=3,
                extra=["-ar:a:1", "44100", "-disposition:a:0", "0", "-disposition:a:1", "default",
                       "-disposition:a:2", "0"])
    info_in = ffprobe(src)
    assert [a["sample_rate"] for a in streams(info_in, "audio")] == ["48000", "44100", "48000"]
    out = tmp_path / "out.mp4"
    transcode(run_cli, src, out)
    (a,) = streams(assert_streamable(out), "audio")
    assert a["sample_rate"] == "44100"


def test_tiny_input_is_not_upscaled(media, run_cli, tmp_path):
    src = media("tiny.avi", size="176x144", video_codec="mpeg4", extra=["-q:v", "4"])
    out = tmp_path / "out.mp4"
    transcode(run_cli, src, out)
    (v,) = streams(assert_streamable(out), "video")
    assert (v["width"], v["height"]) == (176, 144)


def test_compliant_input_is_remuxed(media, run_cli, tmp_path):
    src = compliant_input(media)
    out = tmp_path / "out.mp4"
    res = transcode(run_cli, src, out)
    assert res.event("plan")["mode"] == "remux"
    assert res.event("plan")["audio"] == "copy"
    assert_streamable(out)
    # a remux copies the video packets bit for bit
    def packets(path):
        return subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                               "packet=size,flags", "-of", "csv=p=0", str(path)],
                              capture_output=True, text=True, check=True).stdout
    assert packets(out) == packets(src)


def test_compliant_input_over_bitrate_is_reencoded(media, run_cli, tmp_path):
    # same format, but far above the remux bitrate cap: worth shrinking
    src = media("fat.mp4", size="640x360", preset="veryfast", crf=0, extra=["-x264-params", "log-level=error"],
                pix_fmt="yuv420p")
    out = tmp_path / "out.mp4"
    res = transcode(run_cli, src, out)
    assert res.event("plan")["mode"] == "transcode"
    assert out.stat().st_size < src.stat().st_size


def test_shell_metacharacters_in_file_names(media, run_cli, tmp_path):
    weird_dir = tmp_path / "dir with space;$(touch PWNED)"
    weird_dir.mkdir()
    src = weird_dir / "lec `touch PWNED2` 'a\"b' & | > < * ? -i $HOME.mp4"
    shutil.copyfile(media("plain.mp4", video_codec="mpeg4", extra=["-q:v", "5"]), src)
    out = weird_dir / "-out; rm -rf ~ $(id).mp4"
    transcode(run_cli, src, out)
    assert_streamable(out)
    leftovers = {p.name for d in (tmp_path, Path.cwd(), Path.home()) for p in d.glob("PWNED*")}
    leftovers |= {p.name for p in tmp_path.rglob("PWNED*")}
    assert leftovers == set()
