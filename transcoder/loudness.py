"""Speech that sounds right on a laptop speaker: measure the track, then normalise speech only.

Lecture audio arrives anywhere between a laptop mic across the room (-35 to -40 LUFS) and an
overdriven clip-on (-7 LUFS, clipped); players have no loudness normalisation of their own, so
a student turns the volume up for one lecture and is deafened by the next. EBU R128 as
streaming services apply it to speech: -16 LUFS integrated, true peak at most -1.5 dBTP, a
high-pass at 80 Hz against mains hum and handling rumble (speech has nothing below ~85 Hz).

Two passes, both in the parallel audio job (`encode.run`), so the video never waits:

1. `measure()`: one ffmpeg reads the audio only, down-mixed to mono and high-passed exactly
   as the output will be, through `ebur128` (integrated loudness, loudness range, true peak,
   and the momentary loudness every 100 ms).
2. `filters()`: `loudnorm` given those measurements (two-pass mode): a plain gain when the
   gain keeps the true peak under the ceiling ("linear"), else its dynamic mode with a
   true-peak limiter (quiet speech with sharp peaks, clipped speech).

What is speech is decided from the same measurement, simply: speech pauses. Between phrases
the momentary loudness drops far below the integrated level (>= SPEECH_MIN_PAUSE_SHARE of the
400 ms windows are 10 LU or more under it; speech in the corpus: 7-28 %, even with hum and
room noise in the pauses), music does not (1 %). A track under SILENCE_LUFS is silence.
Music and silence are left as they are (no gain, no filter, channels kept): no noise is
pumped up from a silent track and music keeps its level."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from lectern_transcoder import profile

# The targets (profile values live here because only this module uses them).
TARGET_LUFS = -16.0
TOLERANCE_LU = 1.0
MAX_TRUE_PEAK_DBTP = -1.5
# loudnorm's allowed loudness range: wide enough that speech (5-15 LU) stays linear.
TARGET_LRA = 20.0
HIGHPASS_HZ = 80
# Below this integrated loudness a track is silence (EBU's absolute gate is -70 LUFS).
SILENCE_LUFS = -60.0
# A window counts as a pause when its momentary loudness is this far under the integrated level.
PAUSE_BELOW_LU = 10.0
SPEECH_MIN_PAUSE_SHARE = 0.04
# loudnorm's true-peak ceiling sits this far under MAX_TRUE_PEAK_DBTP: AAC at 48 kbit/s
# reshapes the waveform and its peaks come out up to ~0.6 dB higher (measured: -2.0 -> -1.4).
TRUE_PEAK_MARGIN_DB = 1.0

_NUMBER = r"(-?\d+(?:\.\d+)?|-inf|inf|nan)"


def _num(text: str) -> float:
    return -math.inf if text == "-inf" else float(text)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """EBU R128 figures of a (mono, high-passed) track."""

    integrated: float  # LUFS
    threshold: float  # LUFS, the relative gate
    lra: float  # LU
    true_peak: float  # dBTP (-inf for digital silence)
    pause_share: float  # share of momentary windows PAUSE_BELOW_LU under `integrated`

    @property
    def kind(self) -> str:
        """"silence", "music" or "speech" (see the module doc)."""
        if self.integrated <= SILENCE_LUFS:
            return "silence"
        return "speech" if self.pause_share >= SPEECH_MIN_PAUSE_SHARE else "music"

    @property
    def within_target(self) -> bool:
        return abs(self.integrated - TARGET_LUFS) <= TOLERANCE_LU and self.true_peak <= MAX_TRUE_PEAK_DBTP

    @property
    def normalise(self) -> bool:
        """Whether the track gets the speech treatment (a re-encode, even if it could be copied)."""
        return self.kind == "speech" and not self.within_target

    def as_json(self) -> dict:
        fin = (lambda x: round(x, 2) if math.isfinite(x) else None)  # noqa: E731
        return {"kind": self.kind, "integratedLufs": fin(self.integrated), "truePeakDbtp": fin(self.true_peak),
                "lraLu": fin(self.lra), "pauseShare": round(self.pause_share, 3)}


def speech_chain() -> list[str]:
    """What speech goes through before measuring and before encoding: one channel, no rumble."""
    return ["aformat=channel_layouts=mono", f"highpass=f={HIGHPASS_HZ}"]


def measure_filters() -> str:
    return ",".join([*speech_chain(), "ebur128=peak=true:framelog=info"])


def parse(stderr: str) -> Measurement:
    """The ebur128 summary and its per-window log (info level) from ffmpeg's stderr."""
    summary = stderr[stderr.rfind("Summary:"):]
    if "Summary:" not in stderr:
        raise ValueError("no ebur128 summary in ffmpeg's output")

    def field(pattern: str) -> float:
        m = re.search(pattern, summary)
        if not m:
            raise ValueError(f"ebur128 summary lacks {pattern!r}")
        return _num(m.group(1))

    integrated = field(r"I:\s+" + _NUMBER + r" LUFS")
    windows = [_num(x) for x in re.findall(r"\bM:\s*" + _NUMBER, stderr[:stderr.rfind("Summary:")])]
    pauses = sum(1 for m in windows if not m > integrated - PAUSE_BELOW_LU)
    return Measurement(integrated=integrated, threshold=field(r"Threshold:\s+" + _NUMBER + r" LUFS"),
                       lra=field(r"LRA:\s+" + _NUMBER + r" LU"), true_peak=field(r"Peak:\s+" + _NUMBER + r" dBFS"),
                       pause_share=pauses / len(windows) if windows else 0.0)


def filters(m: Measurement) -> list[str]:
    """The audio filters for a track so measured (empty: leave its level alone)."""
    if not m.normalise:
        return []
    target = TARGET_LUFS
    loudnorm = (f"loudnorm=I={target:g}:TP={MAX_TRUE_PEAK_DBTP - TRUE_PEAK_MARGIN_DB:g}:LRA={TARGET_LRA:g}"
                f":measured_I={m.integrated:.2f}:measured_TP={max(m.true_peak, -99):.2f}:measured_LRA={m.lra:.2f}"
                f":measured_thresh={m.threshold:.2f}:linear=true")
    # loudnorm works at 192 kHz (true-peak detection); back to the output rate.
    return [*speech_chain(), loudnorm, f"aresample={profile.AUDIO_SAMPLE_RATE}"]


def log_path(workdir: Path) -> Path:
    return workdir / "loudness.log"
