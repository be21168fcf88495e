"""A cheap look at the source before encoding: how much moves, how noisy it is, how often it cuts.

One profile does not fit all lectures (issue 14): slides and screen recordings are static and
sharp, a laptop camera or a phone in a dark hall adds sensor noise to every frame, a film clip
moves everywhere. `analyse()` decodes WINDOWS short windows spread over the input (at most 3 s
of decoding, and at most 3 % of a short input: nothing for an hour's lecture) and
measures per frame, with ffmpeg's `signalstats` and `scdet`:

* motion: the mean absolute luma difference between consecutive frames of a 160x90 copy
  (YDIF). Scaling down averages sensor noise away, so what is left is content that moves;
* fine change: the same difference at full resolution on a 640x360 centre crop. Noise changes
  every pixel every frame, so fine change far above motion means noise (grain, not movement);
* scene cuts: scdet's score (slide changes, cuts) on the small copy.

`classify()` turns the figures into a content class, and `encode.py` picks the x264 settings
for that class from `profile.CONTENT_SETTINGS` (the measured reasons are there)."""

from __future__ import annotations

import dataclasses
import re
import statistics
import subprocess
from pathlib import Path

from lectern_transcoder import ffsafe
from lectern_transcoder.probe import Probe

WINDOWS = 3
WINDOW_SECONDS = 1.0
# ... but never more than this share of the input per window (a 30 s clip: 0.3 s windows),
# and not less than MIN_WINDOW_SECONDS (enough frames for a median).
WINDOW_MAX_SHARE = 0.01
MIN_WINDOW_SECONDS = 0.3
TIMEOUT = 120
# Classes, in the order they are tested (`classify`).
STATIC_MAX_MOTION = 0.1  # YDIF of the 160x90 copy: slides, code, handwriting <= 0.043; a talking head 0.17-0.36
NOISY_MIN_FINE = 1.0  # YDIF at full resolution: clean sources stay under ~0.3
NOISY_MIN_RATIO = 2.5  # fine change / motion: noise is fine-grained, motion is not
CLASSES = ("static", "noisy", "motion")


@dataclasses.dataclass(frozen=True)
class Analysis:
    motion: float  # median YDIF, 160x90 copy
    fine: float  # median YDIF, full-resolution centre crop
    cut_share: float  # share of frames that scdet scores >= 10 (a cut or a slide change)
    frames: int
    seconds_decoded: float

    @property
    def content(self) -> str:
        return classify(self)

    def as_json(self) -> dict:
        return {"content": self.content, "motion": round(self.motion, 3), "fine": round(self.fine, 3),
                "cutShare": round(self.cut_share, 4), "frames": self.frames}


def classify(a: Analysis) -> str:
    """static: nothing moves (slides, code, handwriting, screen captures); noisy: fine-grained
    change well above the motion (sensor noise); else motion (camera footage, animation)."""
    if a.motion <= STATIC_MAX_MOTION and a.fine < NOISY_MIN_FINE:
        return "static"
    if a.fine >= NOISY_MIN_FINE and a.fine >= NOISY_MIN_RATIO * max(a.motion, 0.05):
        return "noisy"
    return "motion"


def window_starts(duration: float) -> list[float]:
    """Where the windows start: spread over the middle of the input (titles and fades at the
    ends say little), or just the start when the input is short."""
    if duration <= WINDOWS * WINDOW_SECONDS * 2:
        return [0.0]
    return [duration * (i + 1) / (WINDOWS + 1) for i in range(WINDOWS)]


_GRAPH = ("split[a][b];[a]crop=w='min(640,iw)':h='min(360,ih)',signalstats,"
          "metadata=mode=print:key=lavfi.signalstats.YDIF,nullsink;"
          "[b]scale=160:90,signalstats,scdet=threshold=10,metadata=mode=print,nullsink")


def argv(p: Probe, src: Path, start: float, seconds: float, ffmpeg: str = "ffmpeg") -> list[str]:
    """One window: seek to the keyframe before `start` (no accurate seek: nothing decoded to
    be thrown away), decode `seconds`, measure, write nothing."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", "-noaccurate_seek",
            "-ss", f"{start:.3f}", *ffsafe.input_args(p.demuxer, seconds), "-i", ffsafe.input_url(src),
            "-map", f"0:{p.video.index}", "-an", "-sn", "-dn", "-filter_complex_threads", "1",
            "-filter_complex", f"[0:{p.video.index}]{_GRAPH}", "-f", "null", "-"]


_LINE = re.compile(r"\[Parsed_metadata_(\d+) @ [^\]]+\] lavfi\.(signalstats\.YDIF|scd\.score)=([\d.]+)")


def parse(stderr: str) -> tuple[list[float], list[float], list[float]]:
    """(fine YDIFs, motion YDIFs, scene scores) from metadata=print's lines: the crop branch's
    printer is the lower-numbered filter instance."""
    by_filter: dict[int, dict[str, list[float]]] = {}
    for m in _LINE.finditer(stderr):
        by_filter.setdefault(int(m.group(1)), {}).setdefault(m.group(2), []).append(float(m.group(3)))
    if len(by_filter) != 2:
        return [], [], []
    first, second = (by_filter[k] for k in sorted(by_filter))
    return (first.get("signalstats.YDIF", []), second.get("signalstats.YDIF", []), second.get("scd.score", []))


def analyse(p: Probe, src: Path) -> Analysis:
    """Measure the windows (sequentially: a few seconds of decoding in all)."""
    fine: list[float] = []
    motion: list[float] = []
    scores: list[float] = []
    decoded = 0.0
    starts = window_starts(p.duration)
    seconds = (p.duration if len(starts) == 1 else
               max(MIN_WINDOW_SECONDS, min(WINDOW_SECONDS, WINDOW_MAX_SHARE * p.duration)))
    for start in starts:
        done = subprocess.run(argv(p, src, start, seconds), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=TIMEOUT, env=ffsafe.child_env())
        f, m, s = parse(done.stderr.decode("utf-8", "replace"))
        # The first frame of a window has no predecessor: its YDIF is 0 by definition.
        fine += f[1:]
        motion += m[1:]
        scores += s[1:]
        decoded += seconds
    if not motion:
        # Nothing decodable in the windows: treat as moving content (the safe, general settings);
        # the encode itself will report a broken input.
        return Analysis(motion=float("inf"), fine=0.0, cut_share=0.0, frames=0, seconds_decoded=decoded)
    return Analysis(motion=statistics.median(motion), fine=statistics.median(fine) if fine else 0.0,
                    cut_share=sum(1 for s in scores if s >= 10) / max(1, len(scores)), frames=len(motion),
                    seconds_decoded=decoded)
