"""The probe verdict on ffprobe JSON shapes that are hard to produce as files (absurd sizes,
zero durations, cover art only, rotation variants), plus a still image as a real file."""

from __future__ import annotations

import subprocess

import pytest

from lectern_transcoder.errors import UnusableInput
from lectern_transcoder.probe import parse


def ffprobe_json(video: dict | None = None, duration="12.5", extra_streams=()):
    streams = list(extra_streams)
    if video is not None:
        streams.insert(0, {"index": 0, "codec_type": "video", "codec_name": "h264", "profile": "High",
                           "pix_fmt": "yuv420p", "width": 1920, "height": 1080, "sample_aspect_ratio": "1:1",
                           "avg_frame_rate": "30000/1001", "bit_rate": "4000000", **video})
    return {"format": {"format_name": "mov,mp4", "duration": duration, "size": "1000", "bit_rate": "4100000"},
            "streams": streams}


AUDIO = {"index": 1, "codec_type": "audio", "codec_name": "aac", "channels": 2, "sample_rate": "48000",
         "disposition": {"default": 1}}


def test_parses_a_normal_file():
    p = parse(ffprobe_json({}, extra_streams=[AUDIO]))
    assert (p.video.width, p.video.height, p.video.rotation) == (1920, 1080, 0)
    assert p.video.fps == pytest.approx(29.97, abs=0.01)
    assert p.duration == 12.5 and p.default_audio.index == 1


@pytest.mark.parametrize("w, h", [(20000, 1080), (1920, 9000), (8, 8), (0, 0), (4000, 100)])
def test_absurd_dimensions(w, h):
    with pytest.raises(UnusableInput, match=f"video is {w}x{h} pixels"):
        parse(ffprobe_json({"width": w, "height": h}))


@pytest.mark.parametrize("duration", ["0.000000", "N/A", None, "0.04"])
def test_no_usable_duration(duration):
    data = ffprobe_json({}, duration=duration)
    with pytest.raises(UnusableInput, match="no usable duration"):
        parse(data)


def test_cover_art_is_not_a_video():
    art = {"index": 0, "codec_type": "video", "codec_name": "mjpeg", "width": 600, "height": 600,
           "disposition": {"attached_pic": 1}}
    with pytest.raises(UnusableInput, match=r"no video stream \(only audio, video\)"):
        parse(ffprobe_json(None, extra_streams=[art, AUDIO]))


@pytest.mark.parametrize("video, rotation, display", [
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}, 270, (1080, 1920)),
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": 90}]}, 90, (1080, 1920)),
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": 180}]}, 180, (1920, 1080)),
    ({"tags": {"rotate": "90"}}, 90, (1080, 1920)),  # older muxers: a tag
    ({"sample_aspect_ratio": "4:3", "width": 1440}, 0, (1920, 1080)),  # anamorphic HDV
])
def test_rotation_and_sample_aspect(video, rotation, display):
    v = parse(ffprobe_json(video)).video
    assert v.rotation == rotation and v.display_size == display


def test_still_image_is_refused(run_cli, tmp_path):
    src = tmp_path / "slide.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x180", "-frames:v", "1", str(src)],
                   check=True)
    res = run_cli(str(src), str(tmp_path / "out.mp4"))
    assert res.returncode == 65, res.stderr
    # a PNG is not a container Lectern accepts: refused by the demuxer whitelist at probe
    assert "not in a video container Lectern accepts" in res.termination["reason"]
