"""Shared helpers for the transcoder tests: generated media, the CLI as a subprocess, ffprobe.

Media is generated per session by real ffmpeg into a temp dir (nothing is committed) and kept
tiny (mostly 320x180–640x360, 1 s, 15 fps) so the whole suite stays within about a minute on
a busy 2-core machine. Scaling is exercised cheaply with `--max-height` where the exact 720p
bound is not the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lectern_transcoder import profile, sample
from tests.standins.services import die_with_parent

CLI = str(Path(sys.executable).with_name("lectern-transcode"))


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)


def streams(info: dict, kind: str) -> list[dict]:
    return [s for s in info["streams"] if s["codec_type"] == kind]


def moov_before_mdat(path: Path) -> bool:
    """Walk the top-level MP4 boxes: +faststart puts `moov` before `mdat`."""
    data = path.read_bytes()
    pos, order = 0, []
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        order.append(kind)
        if size < 8:
            break
        pos += size
    return "moov" in order and "mdat" in order and order.index("moov") < order.index("mdat")


def assert_streamable(path: Path, max_w: int = 1280, max_h: int = 720) -> dict:
    """The output contract: H.264 High yuv420p, even dims within bounds, at most one AAC
    track, faststart. Returns ffprobe's JSON for further checks."""
    info = ffprobe(path)
    (v,) = streams(info, "video")
    assert v["codec_name"] == "h264"
    assert v["profile"] in ("High", "Main", "Constrained Baseline")
    assert v["pix_fmt"] == "yuv420p"
    w, h = v["width"], v["height"]
    assert w % 2 == 0 and h % 2 == 0, (w, h)
    assert (w <= max_w and h <= max_h) or (w <= max_h and h <= max_w), (w, h)
    audio = streams(info, "audio")
    assert len(audio) <= 1
    for a in audio:
        assert a["codec_name"] == "aac"
    assert moov_before_mdat(path)
    return info


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    events: list[dict]
    termination: dict | None

    def event(self, name: str) -> dict:
        return next(e for e in self.events if e.get("event") == name)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """The TMPDIR given to the CLI: must be empty again after every run."""
    d = tmp_path / "scratch"
    d.mkdir()
    return d


@pytest.fixture
def run_cli(tmp_path, scratch):
    """Run `lectern-transcode` as a subprocess (the real console script), with TMPDIR and the
    termination log in the test's directory; asserts the scratch dir is left empty."""

    def run(*args: str, env: dict | None = None, timeout: float = 60) -> CliResult:
        term = tmp_path / "termination-log"
        term.unlink(missing_ok=True)
        full_env = {**os.environ, "TMPDIR": str(scratch), "LECTERN_TERMINATION_LOG": str(term), **(env or {})}
        done = subprocess.run([CLI, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                              preexec_fn=die_with_parent)
        events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        termination = json.loads(term.read_text()) if term.exists() else None
        assert list(scratch.iterdir()) == [], "temporary files left behind"
        return CliResult(done.returncode, done.stdout, done.stderr, events, termination)

    return run


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """`media(name, **sample_kwargs)` → a generated clip, made once per session."""
    root = tmp_path_factory.mktemp("media")
    made: dict[str, Path] = {}

    def make(name: str, duration: float = 1.0, size: str = "320x180", fps: float = 15, **kw) -> Path:
        if name not in made:
            kw.setdefault("preset", "ultrafast")  # inputs only: fast to make
            made[name] = sample.generate(root / name, duration, size, fps=fps, **kw)
        return made[name]

    make.root = root
    return make


def compliant_input(media):
    """H.264 High 8-bit 4:2:0 within bounds at a low bitrate, with AAC as the profile makes it."""
    return media(f"compliant-{profile.AUDIO_CHANNELS}ch-{profile.AUDIO_BITRATE_KBPS}k.mp4", size="640x360",
                 preset="veryfast", crf=30, audio_bitrate=f"{profile.AUDIO_BITRATE_KBPS}k",
                 audio_channels=profile.AUDIO_CHANNELS)


@pytest.fixture
def emu(cloudinary_env):
    """The Cloudinary emulator the transcoder uploads to (the SDK pointed at it)."""
    return cloudinary_env
