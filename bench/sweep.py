"""Encode-parameter sweep behind `transcoder/profile.py`: run candidate ffmpeg command lines on
a short lecture-like clip, beside the seed's command, and print time/size/SSIM ratios.

    .venv/bin/python bench/sweep.py [--duration 20] [--only NAME,NAME] [--repeat 1]

The machine is shared and noisy, so every figure is a ratio to the seed measured in the same
run, and CPU seconds (user+sys of ffmpeg, far less noisy than wall time) are printed too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transcode import OUT_DIR, lecture_sample, run_timed, ssim  # noqa: E402

SCALE = "scale=w='min(1280,iw)':h='min(720,ih)':force_original_aspect_ratio=decrease:force_divisible_by=2"


def lectern(preset="veryfast", crf=24, abr="96k", ac=2, scale_extra="", tune=None,
            x264=None, maxrate="2500k", bufsize="5000k", gop=120, threads=None, dec_threads=None):
    """A candidate command line (the shape `encode.py` builds), as a function of the knobs."""
    def argv(src: Path, out: Path) -> list[str]:
        a = ["ffmpeg", "-nostdin", "-y", "-v", "error"]
        if dec_threads or threads:
            a += ["-threads", str(dec_threads or threads)]
        a += ["-i", str(src), "-map", "0:v:0", "-map", "0:a:0?", "-vf", SCALE + scale_extra,
              "-fpsmax", "30", "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
              "-profile:v", "high", "-pix_fmt", "yuv420p", "-g", str(gop)]
        if maxrate:
            a += ["-maxrate", maxrate, "-bufsize", bufsize]
        if tune:
            a += ["-tune", tune]
        if x264:
            a += ["-x264-params", x264]
        if threads:
            a += ["-threads", str(threads)]
        a += ["-c:a", "aac", "-b:a", abr, "-ac", str(ac), "-movflags", "+faststart", str(out)]
        return a
    return argv


def seed(src: Path, out: Path) -> list[str]:
    return ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), "-s", "1280x720", str(out)]


# The chosen line (profile.py) and one-knob-at-a-time variations around it.
BASE = dict(preset="veryfast", crf=24, gop=240, abr="48k", ac=1, threads=2)
VARIANTS = {
    "chosen": {},
    "preset=ultrafast": dict(preset="ultrafast"),
    "preset=superfast": dict(preset="superfast"),
    # superfast+mbtree is the line profile.py uses now (BASE, "chosen", is the previous veryfast one)
    "preset=superfast+mbtree": dict(preset="superfast", x264="rc-lookahead=10:mbtree=1"),
    "superfast+mbtree+tune=animation": dict(preset="superfast", x264="rc-lookahead=10:mbtree=1",
                                            tune="animation"),
    "superfast+mbtree+animation+bicublin": dict(preset="superfast", x264="rc-lookahead=10:mbtree=1",
                                                tune="animation", scale_extra=":flags=bicublin"),
    "preset=faster": dict(preset="faster"),
    "preset=medium": dict(preset="medium"),
    "crf=22": dict(crf=22),
    "crf=26": dict(crf=26),
    "crf=28": dict(crf=28),
    "gop=2s": dict(gop=60),
    "gop=4s": dict(gop=120),
    "gop=10s": dict(gop=300),
    "audio=128k stereo": dict(abr="128k", ac=2),
    "audio=96k stereo": dict(abr="96k", ac=2),
    "audio=64k mono": dict(abr="64k", ac=1),
    "tune=stillimage": dict(tune="stillimage"),
    "tune=animation": dict(tune="animation"),
    "scale threads=2": dict(scale_extra=":threads=2"),
    "scale bilinear": dict(scale_extra=":flags=bilinear"),
    "threads=auto": dict(threads=None),
    "x264 threads=1": dict(threads=1, dec_threads=2),
}
CONFIGS = {"seed": seed, **{name: lectern(**{**BASE, **v}) for name, v in VARIANTS.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--only", default="")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    src = lecture_sample(args.duration)
    names = [n for n in (args.only.split(",") if args.only else CONFIGS) if n]
    if "seed" not in names:
        names.insert(0, "seed")
    rows = {}
    for _ in range(args.repeat):
        for name in names:
            out = OUT_DIR / f"sweep-{name}.mp4"
            wall, cpu = run_timed(CONFIGS[name](src, out))
            r = rows.setdefault(name, {"wall": [], "cpu": [], "size": out.stat().st_size})
            r["wall"].append(wall)
            r["cpu"].append(cpu)
            if "ssim" not in r:
                r["ssim"] = ssim(out, src)
            print(f"  {name:22s} wall {wall:6.2f}s cpu {cpu:6.2f}s size {r['size']/1e6:6.2f}MB "
                  f"ssim {r['ssim']:.4f}", flush=True)
    s = rows["seed"]
    sw, sc = min(s["wall"]), min(s["cpu"])
    print("\n| config | wall s | speed vs seed | CPU s | CPU speed vs seed | size MB | size vs seed | SSIM | ΔSSIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        w, c = min(r["wall"]), min(r["cpu"])
        print(f"| {name} | {w:.2f} | {sw / w:.2f}× | {c:.2f} | {sc / c:.2f}× | {r['size']/1e6:.2f} | "
              f"{r['size'] / s['size']:.2f}× | {r['ssim']:.4f} | {r['ssim'] - s['ssim']:+.4f} |")


if __name__ == "__main__":
    main()
