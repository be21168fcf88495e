"""A lecture-like test clip from ffmpeg's lavfi sources alone: nothing to download or commit.

What matters for tuning and testing an encoder for lectures is the mix of content: mostly
static slides with sharp text and shapes that change every few seconds (cheap to encode, but
blur and ringing show at once), a small speaker inset with continuous motion and camera-like
noise (where the bits go), and speech-like audio (a voiced, pitch-varying harmonic tone in
syllable-rate bursts, with pauses and noisy fricatives). The default encode imitates a raw
camera/screen-recorder upload: H.264 at a high quality, stereo AAC at 192 kbit/s.

    python -m lectern_transcoder.sample OUT.mp4 --duration 20 --size 1920x1080
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                   "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                   "/usr/share/fonts/TTF/DejaVuSans.ttf", "/System/Library/Fonts/Supplemental/Arial.ttf")

LAYOUTS = 4  # slide layouts, cycled


def _font() -> str | None:
    for f in FONT_CANDIDATES:
        if Path(f).exists():
            return f
    return None


def _slides(w: int, h: int, slide_seconds: float) -> list[str]:
    """drawbox/drawtext filters: a title bar, bullet lines of varying length, a chart or a
    diagram, each layout shown for `slide_seconds` in turn."""
    u = max(1, h // 54)  # layout unit: 20 px at 1080p
    filters = [f"drawbox=x=0:y=0:w={w}:h={6 * u}:color=0x1F3A5F:t=fill"]
    for k in range(LAYOUTS):
        on = f"enable='eq(mod(floor(t/{slide_seconds}),{LAYOUTS}),{k})'"
        if k % 2 == 0:  # bullets
            for i in range(6):
                length = int(w * (0.35 + 0.08 * ((i * 7 + k * 3) % 5)))
                y = 10 * u + i * 5 * u
                filters.append(f"drawbox=x={4 * u}:y={y}:w={u}:h={u}:color=0x1F3A5F:t=fill:{on}")
                filters.append(f"drawbox=x={7 * u}:y={y}:w={length // 2}:h={u}:color=0x333333@0.9:t=fill:{on}")
        else:  # bar chart + frame
            filters.append(f"drawbox=x={4 * u}:y={10 * u}:w={w // 2 - 6 * u}:h={h // 2}:color=0x1F3A5F:t={max(1, u // 4)}:{on}")
            for i in range(5):
                bh = int(h / 2 * (0.2 + 0.15 * ((i + k) % 5)))
                filters.append(f"drawbox=x={6 * u + i * 4 * u}:y={10 * u + h // 2 - bh}:w={3 * u}:h={bh}:"
                               f"color=0xD0703A:t=fill:{on}")
    font = _font()
    if font:
        size = 3 * u
        filters.append(f"drawtext=fontfile={font}:fontsize={size}:fontcolor=white:x={4 * u}:y={int(1.5 * u)}:"
                       f"text='Lecture 7 - Signals and Systems - slide %{{eif\\:floor(t/{slide_seconds})+1\\:d}}'")
        for i, line in enumerate(("Sampling x of n equals x of nT", "Nyquist rate is twice fmax",
                                  "Aliasing folds the spectrum", "Reconstruction filter")):
            filters.append(f"drawtext=fontfile={font}:fontsize={int(size * 0.8)}:fontcolor=0x222222:"
                           f"x={w // 2 + 2 * u}:y={10 * u + i * 5 * u}:text='{line}'")
    return filters


def filter_graph(w: int, h: int, fps: float, slide_seconds: float = 5.0) -> str:
    # lavfi's colour sources round odd sizes down; odd test sizes are scaled at the end
    final = f",scale={w}:{h}" if w % 2 or h % 2 else ""
    w, h = w + w % 2, h + h % 2
    iw, ih = (w // 4) // 2 * 2, (h // 4) // 2 * 2
    head_w, head_h = max(2, iw // 4), max(2, ih * 2 // 5)
    slides = ",".join(_slides(w, h, slide_seconds))
    return (
        f"color=c=0xF4F1E8:s={w}x{h}:r={fps}[bg];"
        f"gradients=s={iw}x{ih}:r={fps}:speed=0.015:c0=0x2A3440:c1=0x5A6A7A[room];"
        f"color=c=0xC08A68:s={head_w}x{head_h}:r={fps}[head];"
        f"color=c=0x283C64:s={head_w * 2}x{ih // 2}:r={fps}[body];"
        f"[room][body]overlay=x='W/2-w/2+W/16*sin(t*0.7)':y='H-h'[r1];"
        f"[r1][head]overlay=x='W/2-w/2+W/14*sin(t*0.9)':y='H/5+H/30*sin(t*2.3)',noise=alls=8:allf=t[speaker];"
        f"[bg]{slides}[slides];"
        f"[slides][speaker]overlay=x=W-w-{w // 40}:y=H-h-{h // 30}:shortest=1{final}[v]"
    )


def speech_expr() -> str:
    """Voiced harmonics (pitch gliding around 130 Hz) in ~3 Hz syllables, gated into phrases
    with pauses, plus short noise bursts like fricatives."""
    f0 = "(130+25*sin(2*PI*0.7*t))"
    voiced = f"(sin(2*PI*{f0}*t)+0.5*sin(4*PI*{f0}*t)+0.25*sin(6*PI*{f0}*t))"
    syllables = "(0.55+0.45*sin(2*PI*3.3*t))"
    phrases = "gt(sin(2*PI*0.27*t)+0.3*sin(2*PI*1.1*t),-0.5)"
    fricatives = "0.08*(2*random(0)-1)*gt(sin(2*PI*1.7*t),0.85)"
    return f"0.22*{syllables}*{phrases}*{voiced}+{fricatives}*{phrases}"


def argv(out: Path, duration: float = 20.0, size: str = "1920x1080", fps: float = 30, *, audio: bool = True,
         audio_tracks: int = 1, video_codec: str = "libx264", pix_fmt: str = "yuv420p", crf: int = 18,
         preset: str = "veryfast", profile: str | None = None, faststart: bool = False,
         audio_codec: str = "aac", audio_bitrate: str = "192k", audio_channels: int = 2, slide_seconds: float = 5.0,
         extra: list[str] | None = None, ffmpeg: str = "ffmpeg") -> list[str]:
    w, h = (int(x) for x in size.lower().split("x"))
    graph = filter_graph(w, h, fps, slide_seconds)
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-filter_complex", graph]
    if audio:
        for i in range(audio_tracks):
            # Extra tracks differ (another pitch) so a test can tell which one was kept.
            expr = speech_expr() if i == 0 else speech_expr().replace("130+", f"{300 + 100 * i}+")
            cmd += ["-f", "lavfi", "-i", f"aevalsrc=exprs='{expr}':s=48000:c=mono"]
    cmd += ["-map", "[v]"]
    for i in range(audio_tracks if audio else 0):
        cmd += ["-map", f"{i}:a"]
    cmd += ["-t", f"{duration}", "-c:v", video_codec, "-preset", preset, "-crf", str(crf), "-pix_fmt", pix_fmt]
    if profile:
        cmd += ["-profile:v", profile]
    if video_codec == "libx265":
        cmd += ["-x265-params", "log-level=error", "-tag:v", "hvc1"]
    if audio:
        cmd += ["-c:a", audio_codec, "-b:a", audio_bitrate, "-ac", str(audio_channels)]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    return cmd + list(extra or []) + [str(out)]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"sample generation failed: {done.stderr.decode(errors='replace').strip()[-500:]}")


def generate(out: Path, duration: float = 20.0, size: str = "1920x1080", *, rotate: int = 0, **kw) -> Path:
    """Write the clip to `out` (any container ffmpeg knows by the extension). `rotate` adds
    display-rotation metadata like a phone's (ffmpeg 5.1 only sets it when stream-copying,
    hence the second pass)."""
    out = Path(out)
    if not rotate:
        _run(argv(out, duration, size, **kw))
        return out
    tmp = out.with_name(f".unrotated-{out.name}")
    try:
        _run(argv(tmp, duration, size, **kw))
        _run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(tmp), "-map", "0",
              "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", str(out)])
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(args: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lectern_transcoder.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    p.add_argument("--size", default="1920x1080", help="WxH (default 1920x1080)")
    p.add_argument("--fps", type=float, default=30)
    p.add_argument("--slide-seconds", type=float, default=5.0)
    p.add_argument("--crf", type=int, default=18, help="quality of the 'raw upload' (default 18)")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--codec", default="libx264", help="libx264 or libx265")
    p.add_argument("--pix-fmt", default="yuv420p")
    p.add_argument("--no-audio", action="store_true")
    p.add_argument("--audio-tracks", type=int, default=1)
    p.add_argument("--rotate", type=int, default=0, help="display rotation metadata in degrees (phone clips)")
    a = p.parse_args(args)
    if not shutil.which("ffmpeg"):
        print("ffmpeg not found on PATH", file=sys.stderr)
        return 1
    generate(a.out, a.duration, a.size, fps=a.fps, slide_seconds=a.slide_seconds, crf=a.crf, preset=a.preset,
             video_codec=a.codec, pix_fmt=a.pix_fmt, audio=not a.no_audio, audio_tracks=a.audio_tracks,
             rotate=a.rotate)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
