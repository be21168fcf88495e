"""Speech loudness (loudness.py) on real ffmpeg: quiet, loud and clipped speech come out at
-16 LUFS (±1 LU) with a true peak <= -1.5 dBTP as ffmpeg's own `ebur128` measures the output;
music keeps its level, silence stays silent; the remux path re-encodes audio only when it must
be normalised, and copies the video bit for bit either way."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lectern_transcoder import loudness
from lectern_transcoder.sample import speech_expr

from .conftest import assert_streamable, streams, ffprobe

pytestmark = pytest.mark.slow  # real encodes of generated media

SECONDS = 8  # long enough for several phrases and pauses of the speech-like signal

AUDIO = {
    # a laptop mic across the room: ~-39 LUFS, with fan noise
    "quiet": f"aevalsrc=exprs='0.1*({speech_expr()})':s=48000:c=mono[s];"
             f"anoisesrc=a=0.004:c=pink:r=48000:d={SECONDS}[n];[s][n]amix=inputs=2:normalize=0",
    # close to the mic, limited just under full scale: ~-10 LUFS, peaks ~-0.3 dBFS
    "loud": f"aevalsrc=exprs='3.2*({speech_expr()})':s=48000:c=mono,alimiter=limit=0.97:level=false",
    # overdriven: 4x gain, hard-clipped at 0.9 (true peak above 0 dBTP)
    "clipped": f"aevalsrc=exprs='4*({speech_expr()})':s=48000:c=mono,aeval=exprs='max(-0.9\\,min(0.9\\,val(0)))'",
    # speech with 50 Hz mains hum and harmonics under it
    "hum": f"aevalsrc=exprs='0.8*({speech_expr()})':s=48000:c=mono[s];"
           f"aevalsrc=exprs='0.05*sin(2*PI*50*t)+0.025*sin(2*PI*100*t)':s=48000:c=mono:d={SECONDS}[h];"
           f"[s][h]amix=inputs=2:normalize=0",
    # chords changing twice a second, no pauses: music
    "music": "aevalsrc=exprs='(0.6+0.4*exp(-4*mod(t,0.5)))*(0.18*sin(2*PI*(220*pow(2,floor(mod(t*2,8))/6))*t)"
             "+0.12*sin(2*PI*(275*pow(2,floor(mod(t*2,8))/6))*t))':s=48000:c=mono",
    "silence": "anullsrc=r=48000:cl=mono",
}


def make_clip(path: Path, audio: str, *, channels: int = 2, bitrate: str = "128k", crf: int = 30) -> Path:
    """A small H.264 clip (compliant: remuxable) with the given audio graph, AAC."""
    graph = f"color=c=0x336699:s=320x180:r=10,format=yuv420p[v];{audio},atrim=0:{SECONDS}[a]"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
                    "-t", str(SECONDS), "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-profile:v", "high",
                    "-c:a", "aac", "-b:a", bitrate, "-ac", str(channels), str(path)], check=True)
    return path


def r128(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of the first audio track, by ffmpeg's ebur128."""
    err = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-i", str(path), "-map", "0:a:0",
                          "-af", "ebur128=peak=true", "-f", "null", "-"], capture_output=True, text=True).stderr
    summary = err[err.rfind("Summary:"):]
    num = (lambda pat: float(re.search(pat, summary).group(1).replace("-inf", "-999")))  # noqa: E731
    return num(r"I:\s+(-?[\d.]+|-inf) LUFS"), num(r"Peak:\s+(-?[\d.]+|-inf) dBFS")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("loudness")
    return {name: make_clip(root / f"{name}.mp4", graph) for name, graph in AUDIO.items()}


@pytest.mark.parametrize("name", ["quiet", "loud", "clipped", "hum"])
def test_speech_is_normalised(clips, run_cli, tmp_path, name):
    before, _ = r128(clips[name])
    out = tmp_path / "out.mp4"
    res = run_cli(str(clips[name]), str(out))
    assert res.returncode == 0, res.stderr
    info = assert_streamable(out)
    (a,) = streams(info, "audio")
    assert a["channels"] == 1  # speech: mono
    lufs, peak = r128(out)
    assert abs(lufs - loudness.TARGET_LUFS) <= loudness.TOLERANCE_LU, (name, before, lufs)
    assert peak <= loudness.MAX_TRUE_PEAK_DBTP, (name, peak)
    assert abs(before - lufs) > 1  # it did need normalising: the test inputs are off target
    assert res.event("done")["audio"]["mode"] == "normalised"
    assert res.event("done")["audio"]["kind"] == "speech"


def test_hum_is_cut(clips, run_cli, tmp_path):
    """The 80 Hz high-pass: the 50 Hz line drops by more than 12 dB relative to the speech."""
    def hum_db(path):
        # level of a narrow band around 50 Hz minus the overall level
        def level(af):
            err = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-i", str(path), "-map", "0:a:0",
                                  "-af", f"{af}astats=measure_overall=RMS_level:measure_perchannel=0", "-f", "null", "-"],
                                 capture_output=True, text=True).stderr
            return float(re.findall(r"RMS level dB:\s*(-?[\d.]+)", err)[-1])
        return level("bandpass=f=50:width_type=q:w=8,bandpass=f=50:width_type=q:w=8,") - level("")

    out = tmp_path / "out.mp4"
    assert run_cli(str(clips["hum"]), str(out)).returncode == 0
    assert hum_db(out) < hum_db(clips["hum"]) - 12


def test_music_keeps_its_level(clips, run_cli, tmp_path):
    before, _ = r128(clips["music"])
    out = tmp_path / "out.mp4"
    res = run_cli(str(clips["music"]), str(out))
    assert res.returncode == 0, res.stderr
    after, _ = r128(out)
    assert abs(after - before) <= 0.5, (before, after)
    assert res.event("done")["audio"]["kind"] == "music"
    (a,) = streams(ffprobe(out), "audio")
    assert a["channels"] == 2  # music keeps its channels


def test_silence_stays_silent(clips, run_cli, tmp_path):
    out = tmp_path / "out.mp4"
    res = run_cli(str(clips["silence"]), str(out))
    assert res.returncode == 0, res.stderr
    lufs, _ = r128(out)
    assert lufs <= -70  # ebur128's floor: nothing pumped up
    assert res.event("done")["audio"]["kind"] == "silence"


def _packets(path: Path) -> str:
    return subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size,flags",
                           "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout


def test_remux_path_normalises_audio_that_needs_it(tmp_path, run_cli):
    """A compliant file with quiet speech in small AAC (copyable): the video is copied bit for
    bit, the audio re-encoded at -16 LUFS."""
    src = make_clip(tmp_path / "quiet-compliant.mp4", AUDIO["quiet"], channels=1, bitrate="48k")
    out = tmp_path / "out.mp4"
    res = run_cli(str(src), str(out))
    assert res.returncode == 0, res.stderr
    assert res.event("plan")["mode"] == "remux"
    assert _packets(out) == _packets(src)
    assert res.event("done")["audio"]["mode"] == "normalised"
    lufs, peak = r128(out)
    assert abs(lufs - loudness.TARGET_LUFS) <= loudness.TOLERANCE_LU and peak <= loudness.MAX_TRUE_PEAK_DBTP


def test_remux_path_copies_audio_already_on_target(tmp_path, run_cli):
    """Lectern's own output fed back in: nothing to fix, so both streams are copied."""
    first = tmp_path / "first.mp4"
    assert run_cli(str(make_clip(tmp_path / "loud.mp4", AUDIO["loud"], channels=1, bitrate="48k")),
                   str(first)).returncode == 0
    out = tmp_path / "again.mp4"
    res = run_cli(str(first), str(out))
    assert res.returncode == 0, res.stderr
    assert res.event("done")["audio"]["mode"] == "copy"

    def audio_packets(path):
        return subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "packet=size",
                               "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    assert audio_packets(out) == audio_packets(first)


def test_measurement_classifies_real_signals(clips):
    """parse() on ffmpeg's real ebur128 log: speech has pauses, music none, silence is silence."""
    from lectern_transcoder import encode
    from lectern_transcoder.probe import probe

    kinds = {}
    for name in ("quiet", "clipped", "music", "silence"):
        p = probe(clips[name])
        done = subprocess.run(encode.argv_measure(p.default_audio, p, clips[name]), capture_output=True, text=True)
        kinds[name] = loudness.parse(done.stderr).kind
    assert kinds == {"quiet": "speech", "clipped": "speech", "music": "music", "silence": "silence"}


def test_parse_refuses_output_without_summary():
    with pytest.raises(ValueError, match="no ebur128 summary"):
        loudness.parse("[aac @ 0x1] something else\n")
