"""ffprobe's view of the input as a typed model, and the verdict whether it is a usable video.

Everything here is decided before a single frame is encoded, so a file that can never work
(no video stream, not media at all, truncated before its index, no duration, absurd size) fails
in a second with exit 65 and a one-line reason, instead of burning a CPU-limited pod."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from fractions import Fraction
from pathlib import Path

from lectern_transcoder import ffsafe, profile
from lectern_transcoder.errors import ConfigurationError, UnusableInput

MIN_SIDE = 16
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
    # The duration limit it was judged by; ffmpeg stops reading the input there (`-t`).
    max_seconds: float | None = None

    @property
    def demuxer(self) -> str:
        """The accepted libavformat demuxer every later ffmpeg call on this input is pinned to."""
        return ffsafe.demuxer_of(self.format_name)

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


def max_input_seconds(override: float | None = None) -> float:
    """The duration limit: `override` (--max-duration), else $LECTERN_MAX_INPUT_SECONDS, else
    profile.MAX_INPUT_SECONDS (6 h)."""
    if override is not None:
        return float(override)
    env = os.environ.get(profile.MAX_INPUT_SECONDS_ENV, "").strip()
    try:
        value = float(env) if env else profile.MAX_INPUT_SECONDS
    except ValueError:
        raise ConfigurationError(f"{profile.MAX_INPUT_SECONDS_ENV}={env!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigurationError(f"{profile.MAX_INPUT_SECONDS_ENV}={env!r} must be positive")
    return value


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse(data: dict, max_seconds: float | None = None) -> Probe:
    """Build the model from ffprobe's JSON (`-show_format -show_streams`), or raise
    UnusableInput saying what makes it unusable (including what is over a limit: the
    duration, `max_seconds` or max_input_seconds(), and the frame size, 4K UHD)."""
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
    long_max, short_max = profile.MAX_FRAME_LONG_SIDE, profile.MAX_FRAME_SHORT_SIDE
    if max(width, height) > long_max or min(width, height) > short_max:
        raise UnusableInput(f"video is {width}x{height} pixels: more than the limit of {long_max}x{short_max} "
                            f"(4K UHD, landscape or portrait)")
    if min(width, height) < MIN_SIDE or max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
        raise UnusableInput(f"video is {width}x{height} pixels: sides must be at least {MIN_SIDE} "
                            f"with an aspect ratio of at most {MAX_ASPECT:g}:1")
    duration = _float(fmt.get("duration")) or _float(v.get("duration")) or 0.0
    if duration < MIN_DURATION:
        raise UnusableInput(f"input has no usable duration ({duration:g} s)")
    limit = max_input_seconds(max_seconds)
    if duration > limit:
        raise UnusableInput(f"input is {_hms(duration)} long: more than the limit of {_hms(limit)} "
                            f"({limit:g} s, {profile.MAX_INPUT_SECONDS_ENV})")
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
                 bit_rate=_int(fmt.get("bit_rate")), video=video, audio=audio, max_seconds=limit)


def probe(path: Path, ffprobe: str = "ffprobe", demuxer: str | None = None, max_seconds: float | None = None) -> Probe:
    """Run ffprobe on a path this program generated (never a user-supplied one).

    Without `demuxer` this is the first look at an untrusted file: only the `file` protocol and
    the accepted containers (ffsafe.probe_args); a playlist, a concat script or any other
    container is refused before its demuxer opens anything. With `demuxer` (our own outputs,
    "mov") the reading is pinned to it."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnusableInput(f"input cannot be read: {exc.strerror}") from None
    if size == 0:
        raise UnusableInput("input is empty (0 bytes)")
    limit = max_input_seconds(max_seconds)
    pin = ffsafe.input_args(demuxer) if demuxer else ffsafe.probe_args()
    argv = [ffprobe, "-v", "error", *pin, "-print_format", "json", "-show_format", "-show_streams",
            "-i", ffsafe.input_url(path)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                              env=ffsafe.child_env())
    except subprocess.TimeoutExpired:
        raise UnusableInput(f"ffprobe did not finish within {PROBE_TIMEOUT} s") from None
    if done.returncode != 0:
        if b"not on whitelist" in done.stderr:
            with open(path, "rb") as f:
                kind = ffsafe.sniff(f.read(8192))
            what = f"input is {kind}, not a video file" if kind else "input is not in a video container Lectern accepts"
            raise UnusableInput(f"{what}: only {ffsafe.accepted_names()} files are accepted "
                                f"(refused before anything it refers to was opened)")
        raise UnusableInput(f"input is not a readable video: {last_line(done.stderr, path)}")
    try:
        data = json.loads(done.stdout or b"{}")
    except json.JSONDecodeError:
        raise UnusableInput("input is not a readable video: ffprobe gave no result") from None
    result = parse(data, limit)
    result.demuxer  # noqa: B018 - raises UnusableInput for a container not accepted
    return result


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
            for spelling in (ffsafe.input_url(path), str(path)):
                text = text.replace(spelling + ": ", "").replace(spelling, "input")
        if text and (not lines or lines[-1] != text):
            lines.append(text)
    if not lines:
        return "unknown error"
    text = lines[-1]
    if len(lines) > 1 and any(text.startswith(g) for g in _GENERIC):
        text = f"{lines[-2]} ({text})"
    return text[:300]
