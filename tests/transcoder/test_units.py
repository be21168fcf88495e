"""Pure-logic pieces: the Cloudinary URL rewrite, the cgroup thread count, the progress maths,
the output size. No processes, no network: fast and exact."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from lectern_transcoder import cgroup
from lectern_transcoder.cloudinary_url import rendition_url
from lectern_transcoder.encode import plan, target_size
from lectern_transcoder.probe import AudioStream, Probe, VideoStream
from lectern_transcoder.progress import ProgressTracker, fraction_done, parse_progress

C = "c_limit,w_1280,h_1280"


@pytest.mark.parametrize("url, expected", [
    ("https://res.cloudinary.com/demo/video/upload/v1712345678/lectures/raw1.mov",
     f"https://res.cloudinary.com/demo/video/upload/{C}/v1712345678/lectures/raw1.mov"),
    ("https://res.cloudinary.com/demo/video/upload/lectures/raw1.mp4",
     f"https://res.cloudinary.com/demo/video/upload/{C}/lectures/raw1.mp4"),
    ("https://res.cloudinary.com/demo/video/upload/raw1.mp4",
     f"https://res.cloudinary.com/demo/video/upload/{C}/raw1.mp4"),
    # existing transformations stay first (e.g. a trim), ours is appended after them
    ("https://res.cloudinary.com/demo/video/upload/so_10,eo_60/v3/a/b.mp4",
     f"https://res.cloudinary.com/demo/video/upload/so_10,eo_60/{C}/v3/a/b.mp4"),
    ("https://res.cloudinary.com/demo/video/upload/q_auto/e_volume:50/v3/b.mp4",
     f"https://res.cloudinary.com/demo/video/upload/q_auto/e_volume:50/{C}/v3/b.mp4"),
    # a folder that merely contains an underscore is not a transformation
    ("https://res.cloudinary.com/demo/video/upload/raw_uploads/b.mp4",
     f"https://res.cloudinary.com/demo/video/upload/{C}/raw_uploads/b.mp4"),
    # query strings survive
    ("https://res.cloudinary.com/demo/video/upload/v1/b.mp4?_a=XYZ",
     f"https://res.cloudinary.com/demo/video/upload/{C}/v1/b.mp4?_a=XYZ"),
    # private CDN host: no cloud name in the path
    ("https://demo-res.cloudinary.com/video/upload/v1/b.mp4",
     f"https://demo-res.cloudinary.com/video/upload/{C}/v1/b.mp4"),
])
def test_rendition_url_inserts_limit(url, expected):
    assert rendition_url(url) == expected


@pytest.mark.parametrize("url", [
    "https://res.cloudinary.com/demo/video/upload/s--AbCd1234--/v1/lectures/raw1.mov",  # signed
    "https://res.cloudinary.com/demo/video/upload/s--AbCd1234--/c_scale,w_500/v1/raw1.mov",
    "https://res.cloudinary.com/demo/image/upload/v1/pic.jpg",  # not a video
    "https://res.cloudinary.com/demo/video/authenticated/v1/raw1.mov",
    "https://example.com/files/raw1.mp4",
    f"https://res.cloudinary.com/demo/video/upload/{C}/v1/raw1.mp4",  # already limited
])
def test_rendition_url_leaves_others_alone(url):
    assert rendition_url(url) == url


def test_rendition_never_smaller_than_target():
    # The seed asked for 480p and then encoded 720p; the box must hold a full 720p frame in
    # either orientation.
    url = rendition_url("https://res.cloudinary.com/d/video/upload/v1/x.mp4", 1280)
    assert "w_1280" in url and "h_1280" in url and "480" not in url


def _cg(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.mark.parametrize("cpu_max, cpus, threads", [
    ("200000 100000\n", 16, 2),
    ("150000 100000\n", 16, 2),   # 1.5 CPUs: two threads have work
    ("50000 100000\n", 16, 1),
    ("max 100000\n", 6, 6),       # no limit: every CPU we may run on
    ("400000 100000\n", 2, 2),    # never more than the CPUs available
])
def test_cgroup_v2_quota(tmp_path, cpu_max, cpus, threads):
    root = _cg(tmp_path, {"cgroup.controllers": "cpu memory", "cpu.max": cpu_max})
    assert cgroup.thread_count(root, proc_cgroup="0::/\n", cpus=cpus) == threads


def test_cgroup_v2_nested_limit_counts(tmp_path):
    # Without a cgroup namespace the container's cgroup is a subdirectory; a parent's limit
    # applies as well.
    root = _cg(tmp_path, {"cgroup.controllers": "cpu", "cpu.max": "max 100000",
                          "kubepods/cpu.max": "300000 100000",
                          "kubepods/pod1/ctr/cpu.max": "max 100000"})
    assert cgroup.cpu_quota(root, "0::/kubepods/pod1/ctr\n") == 3.0
    assert cgroup.thread_count(root, "0::/kubepods/pod1/ctr\n", cpus=32) == 3


def test_cgroup_v1_quota(tmp_path):
    root = _cg(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup.cpu_quota(root, "4:cpu,cpuacct:/\n") == 2.5
    assert cgroup.thread_count(root, "4:cpu,cpuacct:/\n", cpus=64) == 3


def test_cgroup_v1_unlimited_and_missing(tmp_path):
    root = _cg(tmp_path, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup.cpu_quota(root, "3:cpu:/\n") is None
    assert cgroup.thread_count(root, "3:cpu:/\n", cpus=5) == 5
    assert cgroup.thread_count(tmp_path / "nothing", "", cpus=3) == 3


def test_progress_blocks_and_microseconds():
    text = ["frame=10", "out_time_us=N/A", "out_time_ms=N/A", "speed=N/A", "progress=continue",
            "frame=20", "out_time_us=1500000", "out_time_ms=1500000", "speed=2.5x", "progress=continue",
            "frame=30", "out_time_ms=3000000", "progress=end"]
    blocks = list(parse_progress(text))
    assert len(blocks) == 3
    assert fraction_done(blocks[0], 3.0) is None
    # out_time_ms is in microseconds despite its name: 1.5 s of 3 s is half
    assert fraction_done(blocks[1], 3.0) == 0.5
    assert fraction_done(blocks[2], 3.0) == 1.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_tracker_monotonic_throttled_and_ends_at_100():
    clock, seen = FakeClock(), []
    tr = ProgressTracker(["downloading", "probing", "encoding", "uploading"], [seen.append], min_interval=1.0,
                         clock=clock)
    tr.start_stage("downloading")
    tr.update(0.5)                      # within 1 s of the stage start: held back
    clock.t = 1.1
    tr.update(0.5)                      # now sent (5 %)
    tr.update(0.9)                      # throttled
    clock.t = 2.2
    tr.update(0.9)                      # same integer as... no: 9 %, sent
    tr.update(0.9)                      # unchanged: never sent twice
    tr.start_stage("encoding")          # stage changes go out at once
    clock.t = 3.5
    tr.update(0.25)
    clock.t = 5.0
    tr.update(0.1)                      # ffmpeg's clock went back: progress does not
    clock.t = 6.0
    tr.update(1.0)                      # held at 99 until the output really exists
    tr.start_stage("uploading")
    tr.finish()
    values = [s.progress for s in seen]
    assert values == sorted(values), values
    assert values[-1] == 100 and seen[-1].stage == "done"
    assert 100 not in values[:-1]
    pairs = [(s.stage, s.progress) for s in seen]
    assert len(pairs) == len(set(pairs)), "an unchanged value was sent twice"
    assert ("downloading", 5) in pairs and ("downloading", 9) in pairs
    assert ("encoding", 30) in pairs  # 10 % download share + 80 % * 0.25


@pytest.mark.parametrize("src, max_h, out", [
    ((1920, 1080), 720, (1280, 720)),
    ((1080, 1920), 720, (720, 1280)),   # portrait fits 720x1280, not 405x720
    ((1440, 1080), 720, (960, 720)),    # 4:3
    ((3840, 2160), 720, (1280, 720)),
    ((320, 180), 720, (320, 180)),      # never upscaled
    ((641, 361), 720, (640, 360)),      # odd → even, not larger
    ((1280, 720), 720, (1280, 720)),
    ((2560, 1080), 720, (1280, 540)),   # ultra-wide: width binds
    ((640, 360), 180, (320, 180)),
    ((720, 720), 720, (720, 720)),
])
def test_target_size(src, max_h, out):
    assert target_size(*src, max_h) == out


@pytest.mark.parametrize("codec, channels, kbps, copied", [
    ("aac", 1, 48, True),
    ("aac", 2, 64, True),      # a small stereo track: copying beats another generation of loss
    ("aac", 2, 128, False),    # worth shrinking to mono 48k
    ("aac", 6, 64, False),     # 5.1: down-mixed for browsers
    ("aac", 2, None, False),   # unknown bitrate (Matroska)
    ("mp3", 1, 48, False),
])
def test_audio_copy_rule(codec, channels, kbps, copied):
    video = VideoStream(index=0, codec="h264", profile="High", pix_fmt="yuv420p", width=1920, height=1080,
                        sar=Fraction(1), rotation=0, fps=30.0, bit_rate=5_800_000, bits_per_raw_sample=8)
    audio = AudioStream(index=1, codec=codec, channels=channels, sample_rate=48000, default=True,
                        bit_rate=kbps and kbps * 1000)
    pl = plan(Probe("mp4", 60.0, None, None, video, (audio,)), threads=2)
    assert pl.copy_audio is copied
    assert pl.audio_mode == ("copy" if copied else "encode (parallel)")
