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
2. `filters()`: the gain that puts the measured integrated loudness on the target (exact, a
   plain `volume`), then a limiter for the peaks that gain pushes over the ceiling (quiet
   speech with sharp consonants). The encoded track's true peak is then checked (AAC and
   inter-sample peaks can exceed a sample-peak limiter) and, if over, the track is encoded
   again with the ceiling lowered by the excess (`encode.py`). (`loudnorm`'s two-pass mode was
   tried first: its dynamic fallback let true peaks through up to 0.0 dBTP on quiet speech.)

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

# The targets (they live here because only this module uses them).
TARGET_LUFS = -16.0
TOLERANCE_LU = 1.0
MAX_TRUE_PEAK_DBTP = -1.5
HIGHPASS_HZ = 80
# Two 2-pole sections (24 dB/octave): 50 Hz mains hum drops by ~16 dB, 100 Hz barely.
HIGHPASS_SECTIONS = 2
# Below this integrated loudness a track is silence (EBU's absolute gate is -70 LUFS).
SILENCE_LUFS = -60.0
# A window counts as a pause when its momentary loudness is this far under the integrated level.
PAUSE_BELOW_LU = 10.0
SPEECH_MIN_PAUSE_SHARE = 0.04
# The limiter's ceiling sits this far under MAX_TRUE_PEAK_DBTP: AAC at 48 kbit/s reshapes
# the waveform and its peaks come out higher, usually by < 1 dB but by 2.2 dB on speech with
# hum. So the encoded track's true peak is measured, and when it is over the limit the track is
# encoded once more with the ceiling lowered by the excess (`encode.py`, PEAK_RETRIES).
TRUE_PEAK_MARGIN_DB = 1.5
PEAK_RETRIES = 3

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


def true_peak_filters() -> str:
    """Measuring an encoded track's true peak (the retry's check)."""
    return "ebur128=peak=true:framelog=verbose"


def speech_chain() -> list[str]:
    """What speech goes through before measuring and before encoding: one channel, no rumble."""
    return ["aformat=channel_layouts=mono", *[f"highpass=f={HIGHPASS_HZ}"] * HIGHPASS_SECTIONS]


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


def parse_true_peak(stderr: str) -> float:
    """The true peak (dBTP) from an ebur128 summary."""
    m = re.search(r"Peak:\s+" + _NUMBER + r" dBFS", stderr[stderr.rfind("Summary:"):])
    if not m:
        raise ValueError("no true peak in ebur128's summary")
    return _num(m.group(1))


def filters(m: Measurement, headroom_db: float = 0.0, rate: int = profile.AUDIO_SAMPLE_RATE) -> list[str]:
    """The audio filters for a track so measured (empty: leave its level alone); `headroom_db`
    lowers the limiter's ceiling further (the retry when AAC pushed a peak over, `encode.py`)."""
    if not m.normalise:
        return []
    gain = TARGET_LUFS - m.integrated
    ceiling = 10 ** ((MAX_TRUE_PEAK_DBTP - TRUE_PEAK_MARGIN_DB - headroom_db) / 20)
    # Always limited: the measured true peak is that of the input, not of what AAC makes of
    # the louder signal; the limiter costs ~nothing where no peak reaches the ceiling.
    return [*speech_chain(), f"volume={gain:.2f}dB", f"alimiter=limit={ceiling:.4f}:level=false:attack=2:release=40",
            f"aresample={rate}"]


def log_path(workdir: Path) -> Path:
    return workdir / "loudness.log"
