"""Benchmark: Lectern's transcode against the seed's `ffmpeg -i input.mp4 -s 1280x720 output.mp4`.

    .venv/bin/python bench/transcode.py [--duration 120] [--no-vmaf] [--repeat 1]

On a generated lecture-like 1080p clip (slides, a speaker inset, speech-like audio; made once
and cached in bench/out/, which git ignores) it runs, side by side in one process:

1. the seed's command and `lectern-transcode IN OUT` (a subprocess, as a person would run it):
   wall time, CPU time, size, SSIM (and VMAF when the ffmpeg that `imageio-ffmpeg` ships is
   installed: `pip install -e '.[bench]'`) of each against the source scaled to output size;
2. the remux path against a full transcode, on an input that already is compliant;
3. the ingress bytes of the bandwidth-saving rendition (`w_1280,h_720,c_limit`) against the
   raw file, counted by the Cloudinary emulator's byte counter.

The machine is shared and noisy: compare the ratios measured in the same run, not absolute
seconds across runs. CPU seconds (user+sys of the child and its children) are steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import record  # noqa: E402

OUT_DIR = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent


# -- measuring ---------------------------------------------------------------------------------
def run_timed(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run argv; return (wall seconds, CPU seconds of it and its reaped children)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {stderr.decode()[-800:]}")
    return wall, usage.ru_utime + usage.ru_stime


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                          "-show_streams", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)


def video_dims(path: Path) -> tuple[int, int]:
    v = next(s for s in probe(path)["streams"] if s["codec_type"] == "video")
    return int(v["width"]), int(v["height"])


def _compare(ffmpeg: str, out: Path, src: Path, metric: str, pattern: str) -> float:
    """Score `out` against `src` scaled (bicubic) to `out`'s size, frame by frame."""
    w, h = video_dims(out)
    graph = (f"[0:v]setpts=PTS-STARTPTS[d];[1:v]scale={w}:{h}:flags=bicubic,"
             f"setpts=PTS-STARTPTS[r];[d][r]{metric}")
    proc = subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-filter_threads", "2",
                           "-i", str(out), "-i", str(src), "-lavfi", graph, "-f", "null", "-"],
                          capture_output=True, text=True)
    m = re.search(pattern, proc.stderr)
    if not m:
        raise RuntimeError(f"no {metric} score: {proc.stderr[-800:]}")
    return float(m.group(1))


def ssim(out: Path, src: Path) -> float:
    return _compare("ffmpeg", out, src, "ssim", r"All:(\d\.\d+)")


def vmaf_ffmpeg() -> str | None:
    """The libvmaf-capable ffmpeg that imageio-ffmpeg ships, if installed (bench extra)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    filters = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, text=True).stdout
    return exe if "libvmaf" in filters else None


def vmaf(out: Path, src: Path, exe: str) -> float:
    return _compare(exe, out, src, "libvmaf=n_threads=2:n_subsample=3", r"VMAF score: ([\d.]+)")


# -- the lecture-like sample -------------------------------------------------------------------
def lecture_sample(duration: float, size: str = "1920x1080") -> Path:
    """The cached clip, made by the transcoder's own generator (`lectern_transcoder.sample`:
    slides, a noisy speaker inset, speech-like stereo AAC) so that the benchmark, the sweep and
    the demo all see the same kind of lecture."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"lecture-lectern-{size}-{duration:g}s.mp4"
    if not out.exists():
        tmp = out.with_suffix(".tmp.mp4")
        print(f"generating {out.name} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "lectern_transcoder.sample", str(tmp),
                        "--duration", f"{duration:g}", "--size", size], check=True,
                       stdout=subprocess.DEVNULL)
        tmp.rename(out)
    return out


# -- the runs ----------------------------------------------------------------------------------
def seed_argv(src: Path, out: Path) -> list[str]:
    """The seed's command, verbatim (plus -y/-nostdin/-v error so it runs unattended)."""
    return ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), "-s", "1280x720", str(out)]


def lectern_argv(src: str | Path, out: Path) -> list[str]:
    return [str(BIN / "lectern-transcode"), str(src), str(out), "--progress", "none"]


def lectern_env(**extra: str) -> dict:
    env = dict(os.environ, TMPDIR=str(OUT_DIR / "tmp"), **extra)
    (OUT_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    return env


class Row(dict):
    def measure(self, argv: list[str], out: Path, env: dict | None = None) -> "Row":
        wall, cpu = run_timed(argv, env)
        self.setdefault("wall", []).append(wall)
        self.setdefault("cpu", []).append(cpu)
        self["size"] = out.stat().st_size
        return self


def full_transcode_argv(src: Path, out: Path) -> list[str]:
    """Lectern's own encode command line for `src` with the remux shortcut switched off: what
    a compliant input would cost without the remux path (built by `encode.py` itself)."""
    import dataclasses

    from lectern_transcoder import encode
    from lectern_transcoder.probe import probe as lprobe

    p = lprobe(src)
    pl = encode.plan(p, threads=2)
    forced = dataclasses.replace(pl, copy_video=False, parallel_audio=False, why_encode=("forced",))
    return encode.argv_main(forced, p, src, out)


def remux_mode(src: Path) -> str:
    from lectern_transcoder import encode
    from lectern_transcoder.probe import probe as lprobe

    pl = encode.plan(lprobe(src), threads=2)
    return f"{pl.mode}" + (f" ({', '.join(pl.why_encode)})" if pl.why_encode else "")


def ingress(src: Path, vmaf_exe: str | None) -> dict:
    """Download through the Cloudinary emulator: bytes served for the bandwidth-saving
    rendition that `lectern-transcode` asks for, against the raw file's size."""
    sys.path.insert(0, str(ROOT))
    from tests.standins.cloudinary import CloudinaryEmulator

    with CloudinaryEmulator(root=OUT_DIR / "cloudinary") as emu:
        emu.put_asset(src, "bench/raw")
        url = emu.delivery_url("bench/raw", version=emu.asset("bench/raw").version)
        env = lectern_env(CLOUDINARY_URL=emu.cloudinary_url,
                          LECTERN_ALLOWED_HOSTS=f"127.0.0.1:{emu.port}",
                          LECTERN_TEST_INSECURE_LOOPBACK=f"127.0.0.1:{emu.port}")
        # Warm the server-side rendition first: Cloudinary's encode is not our wall time.
        import urllib.request
        warm = urllib.request.Request(emu.delivery_url("bench/raw", "c_limit,w_1280,h_1280"), method="HEAD")
        urllib.request.urlopen(warm, timeout=900).close()
        emu.bytes_served = 0
        out = OUT_DIR / "bench-lectern-from-cdn.mp4"
        row = Row().measure(lectern_argv(url, out), out, env)
        served = emu.bytes_served
        paths = [r["path"] for r in emu.requests if r["route"] == "delivery" and r["method"] == "GET"]
    row.update(ingress=served, raw=src.stat().st_size, paths=paths, ssim=ssim(out, src))
    if vmaf_exe:
        row["vmaf"] = vmaf(out, src, vmaf_exe)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120, help="clip length in seconds (default 120)")
    ap.add_argument("--repeat", type=int, default=1, help="alternate seed/lectern runs this many times")
    ap.add_argument("--no-vmaf", action="store_true", help="skip VMAF even if libvmaf is available")
    ap.add_argument("--skip-ingress", action="store_true")
    args = ap.parse_args()
    src = lecture_sample(args.duration)
    vmaf_exe = None if args.no_vmaf else vmaf_ffmpeg()
    load = os.getloadavg()[0]
    print(f"source: {src.name}, {src.stat().st_size / 1e6:.1f} MB, load average {load:.1f} on "
          f"{os.cpu_count()} CPUs, VMAF {'on' if vmaf_exe else 'off'}", flush=True)

    # 1. seed vs lectern, alternating so that both see the same machine.
    outs = {"seed": OUT_DIR / "bench-seed.mp4", "lectern": OUT_DIR / "bench-lectern.mp4"}
    rows = {"seed": Row(), "lectern": Row()}
    for _ in range(args.repeat):
        rows["seed"].measure(seed_argv(src, outs["seed"]), outs["seed"])
        rows["lectern"].measure(lectern_argv(src, outs["lectern"]), outs["lectern"], lectern_env())
    for name, row in rows.items():
        row["ssim"] = ssim(outs[name], src)
        if vmaf_exe:
            row["vmaf"] = vmaf(outs[name], src, vmaf_exe)
        row["dims"] = "x".join(map(str, video_dims(outs[name])))
    s, lec = rows["seed"], rows["lectern"]
    print("\n## Full transcode: seed command vs lectern-transcode\n")
    print("| | wall s | CPU s | size MB | output | SSIM | VMAF |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {min(r['wall']):.1f} | {min(r['cpu']):.1f} | {r['size'] / 1e6:.2f} | {r['dims']} "
              f"| {r['ssim']:.4f} | {r.get('vmaf', float('nan')):.2f} |")
    speed = min(s["wall"]) / min(lec["wall"])
    cpu_speed = min(s["cpu"]) / min(lec["cpu"])
    size = lec["size"] / s["size"]
    dssim = lec["ssim"] - s["ssim"]
    print("\n| ratio (lectern / seed) | value | target | |\n|---|---|---|---|")
    print(f"| speed (wall) | {speed:.2f}× | ≥ 1.5× | {'ok' if speed >= 1.5 else 'MISSED'} |")
    print(f"| speed (CPU time) | {cpu_speed:.2f}× | | |")
    print(f"| size | {size:.2f}× | ≤ 0.6× | {'ok' if size <= 0.6 else 'MISSED'} |")
    print(f"| SSIM difference | {dssim:+.4f} | ≥ -0.003 | {'ok' if dssim >= -0.003 else 'MISSED'} |")
    if vmaf_exe:
        print(f"| VMAF difference | {lec['vmaf'] - s['vmaf']:+.2f} | | |")

    # 2. remux vs full transcode on an input that already is compliant (Lectern's own output).
    compliant = outs["lectern"]
    remux_out, full_out = OUT_DIR / "bench-remux.mp4", OUT_DIR / "bench-full.mp4"
    remux = Row().measure(lectern_argv(compliant, remux_out), remux_out, lectern_env())
    full = Row().measure(full_transcode_argv(compliant, full_out), full_out)
    r_speed = min(full["wall"]) / min(remux["wall"])
    print(f"\n## Compliant input ({compliant.name}, plan: {remux_mode(compliant)})\n")
    print("| | wall s | CPU s | size MB |\n|---|---|---|---|")
    print(f"| lectern-transcode (remux, whole CLI) | {min(remux['wall']):.2f} | {min(remux['cpu']):.2f} | {remux['size'] / 1e6:.2f} |")
    print(f"| full transcode (encode.py's argv, remux off) | {min(full['wall']):.2f} | {min(full['cpu']):.2f} | {full['size'] / 1e6:.2f} |")
    print(f"\nremux speed-up: {r_speed:.1f}× (target ≥ 20×: {'ok' if r_speed >= 20 else 'MISSED'})")

    # 3. ingress through the emulated CDN.
    if not args.skip_ingress:
        ing = ingress(src, vmaf_exe)
        print("\n## Ingress: bandwidth-saving rendition vs raw file (Cloudinary emulator byte counter)\n")
        print("| | bytes | vs raw |\n|---|---|---|")
        print(f"| raw upload | {ing['raw']:,} | 1.00× |")
        print(f"| rendition fetched by lectern-transcode | {ing['ingress']:,} | {ing['ingress'] / ing['raw']:.2f}× |")
        print(f"\nrequested: {', '.join(ing['paths'])}")
        print(f"result via the rendition: {ing['size'] / 1e6:.2f} MB, SSIM {ing['ssim']:.4f}"
              + (f", VMAF {ing['vmaf']:.2f}" if 'vmaf' in ing else "")
              + f", wall {min(ing['wall']):.1f} s (rendition pre-warmed)")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")

    def plain(row: dict) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, list) else v)
                for k, v in row.items()}
    figures = {
        "clip": {"file": src.name, "seconds": args.duration, "repeat": args.repeat},
        "seed": plain(s), "lectern": plain(lec),
        "ratios": {"speed_wall": round(speed, 3), "speed_cpu": round(cpu_speed, 3), "size": round(size, 3),
                   "ssim_difference": round(dssim, 4)},
        "remux": {"remux": plain(remux), "full_transcode": plain(full), "speed_up": round(r_speed, 2)},
    }
    if not args.skip_ingress:
        figures["ingress"] = {
            **plain({k: v for k, v in ing.items() if k != "paths"}), "paths": ing["paths"],
            "ratio": round(ing["ingress"] / ing["raw"], 4),
            "rendition_made_by": "the Cloudinary emulator's own ffmpeg encode of w_1280,h_1280,c_limit; "
                                 "a real Cloudinary rendition may be larger",
        }
    record("transcode", figures)


if __name__ == "__main__":
    main()
