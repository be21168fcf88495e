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


CONFIGS = {
    "seed": seed,
    # round 1 (default threads): presets, CRF, tunes, scaler
    "vf-crf23": lectern(crf=23),
    "vf-crf24": lectern(crf=24),
    "vf-crf26": lectern(crf=26),
    "vf-crf24-bilinear": lectern(crf=24, scale_extra=":flags=bilinear"),
    "vf-crf24-sws2": lectern(crf=24, scale_extra=":threads=2"),
    "vf-crf24-mono64": lectern(crf=24, abr="64k", ac=1),
    "vf-crf24-still": lectern(crf=24, tune="stillimage"),
    "vf-crf24-anim": lectern(crf=24, tune="animation"),
    "sf-crf23": lectern(preset="superfast", crf=23),
    "sf-crf24": lectern(preset="superfast", crf=24),
    "faster-crf24": lectern(preset="faster", crf=24),
    "vf-crf24-ref1": lectern(crf=24, x264="ref=1:rc-lookahead=10"),
    "vf-crf24-t2": lectern(crf=24, threads=2),
    "uf-crf24": lectern(preset="ultrafast", crf=24),
    # round 2: -threads 2 (what the transcoder sets from the CPU quota) and the audio
    "t2-vf-crf23": lectern(crf=23, threads=2),
    "t2-vf-crf24": lectern(crf=24, threads=2),
    "t2-vf-crf25": lectern(crf=25, threads=2),
    "t2-vf-crf26": lectern(crf=26, threads=2),
    "t2-vf-crf24-sws2": lectern(crf=24, threads=2, scale_extra=":threads=2"),
    "t2-vf-crf24-ref1": lectern(crf=24, threads=2, x264="ref=1"),
    "t2-vf-crf24-a96": lectern(crf=24, threads=2, abr="96k"),
    "t2-vf-crf24-a64": lectern(crf=24, threads=2, abr="64k"),
    "t2-vf-crf24-m64": lectern(crf=24, threads=2, abr="64k", ac=1),
    "t2-vf-crf24-m48": lectern(crf=24, threads=2, abr="48k", ac=1),
    "t2-faster-crf24": lectern(preset="faster", crf=24, threads=2),
    "t2-sf-crf24-mbtree": lectern(preset="superfast", crf=24, threads=2, x264="rc-lookahead=10:mbtree=1"),
    "t2-vf-crf24-still": lectern(crf=24, threads=2, tune="stillimage"),
    "t2d1-vf-crf24": lectern(crf=24, threads=2, dec_threads=1),
    "t2d1-vf-crf24-sws2": lectern(crf=24, threads=2, dec_threads=1, scale_extra=":threads=2"),
    "t2-vf-crf28": lectern(crf=28, threads=2),
    "t2-vf-crf24-ssim": lectern(crf=24, threads=2, tune="ssim"),
    "t2-vf-crf25-m48": lectern(crf=25, threads=2, abr="48k", ac=1),
    "t2-vf-crf26-m48": lectern(crf=26, threads=2, abr="48k", ac=1),
    "t2-vf-crf25-m64": lectern(crf=25, threads=2, abr="64k", ac=1),
    "t2-vf-crf25-s64": lectern(crf=25, threads=2, abr="64k", ac=2),
    "t2-vf-crf25-m48-g60": lectern(crf=25, threads=2, abr="48k", ac=1, gop=60),
    "t2-vf-crf25-m48-g240": lectern(crf=25, threads=2, abr="48k", ac=1, gop=240),
    "t2-vf-crf25-m48-g300": lectern(crf=25, threads=2, abr="48k", ac=1, gop=300),
    "t2-vf-crf25-m56": lectern(crf=25, threads=2, abr="56k", ac=1),
    "t2-vf-crf24-dia": lectern(crf=24, threads=2, x264="me=dia:subme=1"),
    "t2-sf-crf23-mbtree": lectern(preset="superfast", crf=23, threads=2, x264="rc-lookahead=10:mbtree=1"),
    "t2-sf-crf25-mbtree": lectern(preset="superfast", crf=25, threads=2, x264="rc-lookahead=10:mbtree=1"),
    "t2-sf-crf24-mbtree-la20": lectern(preset="superfast", crf=24, threads=2, x264="rc-lookahead=20:mbtree=1"),
    "t1e-sf-crf24-mbtree": lectern(preset="superfast", crf=24, threads=1, dec_threads=2, x264="rc-lookahead=10:mbtree=1"),
}


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
    print(f"\n| config | wall s | speed vs seed | CPU s | CPU speed vs seed | size MB | size vs seed | SSIM | ΔSSIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        w, c = min(r["wall"]), min(r["cpu"])
        print(f"| {name} | {w:.2f} | {sw / w:.2f}× | {c:.2f} | {sc / c:.2f}× | {r['size']/1e6:.2f} | "
              f"{r['size'] / s['size']:.2f}× | {r['ssim']:.4f} | {r['ssim'] - s['ssim']:+.4f} |")


if __name__ == "__main__":
    main()
