"""ffprobe's view of the input as a typed model, and the verdict whether it is a usable video.

Everything here is decided before a single frame is encoded, so a file that can never work
(no video stream, not media at all, truncated before its index, no duration, absurd size) fails
in a second with exit 65 and a one-line reason, instead of burning a CPU-limited pod."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

from lectern_transcoder.errors import UnusableInput

MIN_SIDE = 16
MAX_SIDE = 8192  # DCI 8K; anything larger is a decompression bomb, not a lecture
MAX_ASPECT = 10.0
MIN_DURATION = 0.1
PROBE_TIMEOUT = 120


@dataclasses.dataclass(frozen=True)
class VideoStream:
    index: int
    codec: str
    profile: str | None
    pix_fmt: str | None
    width: int
    height: int
    sar: Fraction
    rotation: int  # 0, 90, 180 or 270, as the display matrix / `rotate` tag says
    fps: float | None
    bit_rate: int | None
    bits_per_raw_sample: int | None

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as shown: sample aspect ratio applied, then rotation (ffmpeg
        autorotates, so the scaler sees the rotated frame)."""
        w = round(self.width * self.sar) if self.sar > 0 else self.width
        h = self.height
        return (h, w) if self.rotation in (90, 270) else (w, h)


@dataclasses.dataclass(frozen=True)
class AudioStream:
    index: int
    codec: str
    channels: int
    sample_rate: int | None
    default: bool
    bit_rate: int | None


@dataclasses.dataclass(frozen=True)
class Probe:
    format_name: str
    duration: float
    size: int | None
    bit_rate: int | None
    video: VideoStream
    audio: tuple[AudioStream, ...]

    @property
    def default_audio(self) -> AudioStream | None:
        """The track a player would play: the one flagged default, else the first."""
        for a in self.audio:
            if a.default:
                return a
        return self.audio[0] if self.audio else None

    @property
    def video_bit_rate(self) -> int | None:
        """The video stream's bitrate, or an estimate from the container's (Matroska and
        friends do not store per-stream bitrates)."""
        if self.video.bit_rate:
            return self.video.bit_rate
        if self.bit_rate:
            audio = sum(a.bit_rate or 128_000 for a in self.audio)
            return max(0, self.bit_rate - audio)
        return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _rate(value: str | None) -> float | None:
    try:
        r = Fraction(value or "")
    except (ValueError, ZeroDivisionError):
        return None
    return float(r) if r > 0 else None


def _sar(value: str | None) -> Fraction:
    try:
        num, den = (int(x) for x in (value or "").split(":"))
        return Fraction(num, den) if num > 0 and den > 0 else Fraction(1)
    except ValueError:
        return Fraction(1)


def _rotation(stream: dict) -> int:
    rotation = None
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            rotation = _float(side["rotation"])
    if rotation is None:
        rotation = _float((stream.get("tags") or {}).get("rotate"))
    return int(round(rotation or 0)) % 360 // 90 * 90 if rotation else 0


def parse(data: dict) -> Probe:
    """Build the model from ffprobe's JSON (`-show_format -show_streams`), or raise
    UnusableInput saying what makes it unusable."""
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    if not videos:
        kinds = sorted({s.get("codec_type", "unknown") for s in streams})
        found = f" (only {', '.join(kinds)})" if kinds else ""
        raise UnusableInput(f"input has no video stream{found}")
    v = videos[0]
    width, height = _int(v.get("width")) or 0, _int(v.get("height")) or 0
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) or \
            max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
        raise UnusableInput(f"video is {width}x{height} pixels: sides must be {MIN_SIDE}–{MAX_SIDE} "
                            f"with an aspect ratio of at most {MAX_ASPECT:g}:1")
    duration = _float(fmt.get("duration")) or _float(v.get("duration")) or 0.0
    if duration < MIN_DURATION:
        raise UnusableInput(f"input has no usable duration ({duration:g} s)")
    video = VideoStream(
        index=int(v["index"]), codec=v.get("codec_name") or "unknown", profile=v.get("profile"),
        pix_fmt=v.get("pix_fmt"), width=width, height=height, sar=_sar(v.get("sample_aspect_ratio")),
        rotation=_rotation(v), fps=_rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate")),
        bit_rate=_int(v.get("bit_rate")), bits_per_raw_sample=_int(v.get("bits_per_raw_sample")))
    audio = tuple(
        AudioStream(index=int(s["index"]), codec=s.get("codec_name") or "unknown",
                    channels=_int(s.get("channels")) or 0, sample_rate=_int(s.get("sample_rate")),
                    default=bool((s.get("disposition") or {}).get("default")), bit_rate=_int(s.get("bit_rate")))
        for s in streams if s.get("codec_type") == "audio" and (_int(s.get("channels")) or 0) > 0)
    return Probe(format_name=fmt.get("format_name") or "unknown", duration=duration, size=_int(fmt.get("size")),
                 bit_rate=_int(fmt.get("bit_rate")), video=video, audio=audio)


def probe(path: Path, ffprobe: str = "ffprobe") -> Probe:
    """Run ffprobe on a path this program generated (never a user-supplied one)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnusableInput(f"input cannot be read: {exc.strerror}") from None
    if size == 0:
        raise UnusableInput("input is empty (0 bytes)")
    argv = [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "-i", str(path)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UnusableInput(f"ffprobe did not finish within {PROBE_TIMEOUT} s") from None
    if done.returncode != 0:
        raise UnusableInput(f"input is not a readable video: {last_line(done.stderr, path)}")
    try:
        data = json.loads(done.stdout or b"{}")
    except json.JSONDecodeError:
        raise UnusableInput("input is not a readable video: ffprobe gave no result") from None
    return parse(data)


_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")
_GENERIC = ("Invalid data found when processing input", "Conversion failed!", "Error opening input files")


def last_line(stderr: bytes, path: Path | None = None) -> str:
    """The meaningful end of ffmpeg/ffprobe stderr as one line, with our temp path and the
    `[mov,mp4 @ 0x55…]` prefixes taken out; when the last line is a generic one ("Invalid data
    found…"), the specific line before it is kept too ("moov atom not found")."""
    lines = []
    for raw in stderr.decode("utf-8", "replace").splitlines():
        text = _CONTEXT.sub("", raw.strip())
        if path is not None:
            text = text.replace(str(path) + ": ", "").replace(str(path), "input")
        if text and (not lines or lines[-1] != text):
            lines.append(text)
    if not lines:
        return "unknown error"
    text = lines[-1]
    if len(lines) > 1 and any(text.startswith(g) for g in _GENERIC):
        text = f"{lines[-2]} ({text})"
    return text[:300]
