"""Benchmark: the cost of the HLS ladder (issue 15) beside the MP4 alone.

    .venv/bin/python bench/hls.py [--duration 60] [--runs 1]

On a generated lecture-like 1080p clip (`transcoder/sample.py`: slides, a speaker inset,
speech-like audio; cached in bench/out/, which git ignores) it runs `lectern-transcode IN
OUT.mp4` and `lectern-transcode IN OUT.mp4 --hls DIR` side by side in one process (alternating
when --runs > 1) and prints, and writes to bench/out/hls.json:

* CPU seconds (user+sys of the CLI and its ffmpeg children) of ladder + MP4 against the MP4
  alone (target <= 2x), and wall seconds;
* bytes and average/peak bit rate per rung, and the MP4's bytes with and without the ladder
  (with it, the MP4 is the 720p rung's stream: keyframes every 6 s for the segments);
* SSIM of each rung (and of both MP4s) against the source scaled to that rung's size.

The figures also go to bench/results.json, section "hls" (`bench/results.py`), which the
README quotes.

The machine is shared and noisy: compare ratios from the same run; CPU seconds are steadier
than wall seconds."""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(args: list[str]) -> tuple[float, float, dict]:
    """(wall, CPU seconds incl. ffmpeg children, the done event)."""
    c0, t0 = cpu_children(), time.monotonic()
    done = subprocess.run([str(BIN / "lectern-transcode"), *args, "--progress", "json"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    wall, cpu = time.monotonic() - t0, cpu_children() - c0
    if done.returncode != 0:
        sys.exit(f"lectern-transcode failed ({done.returncode}): {done.stderr[-2000:]}")
    event = next(json.loads(line) for line in reversed(done.stdout.splitlines()) if '"done"' in line)
    return wall, cpu, event


def ssim(distorted: Path, source: Path, width: int, height: int) -> float:
    """SSIM (All) of `distorted` against `source` scaled to its size (bicubic), both from t=0."""
    graph = (f"[0:v]setpts=PTS-STARTPTS,format=yuv420p[d];"
             f"[1:v]scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p,setpts=PTS-STARTPTS[r];"
             f"[d][r]ssim")
    done = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", str(distorted), "-i", str(source),
                           "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True)
    m = re.search(r"All:([0-9.]+)", done.stderr)
    if not m:
        sys.exit(f"ssim failed: {done.stderr[-1000:]}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of generated 1080p lecture (default 60)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each, alternating (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="passed to lectern-transcode (default: its own)")
    args = ap.parse_args()
    from lectern_transcoder import sample

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    src = OUT_DIR / f"lecture-1080p-{int(args.duration)}s.mp4"
    if not src.exists():
        print(f"generating {src.name} ...", flush=True)
        sample.generate(src, args.duration, "1920x1080", fps=30)
    work = Path(tempfile.mkdtemp(prefix="bench-hls-"))
    extra = ["--threads", str(args.threads)] if args.threads else []
    load = os.getloadavg()
    runs: dict[str, list] = {"mp4": [], "ladder": []}
    try:
        for i in range(args.runs):
            order = ("mp4", "ladder") if i % 2 == 0 else ("ladder", "mp4")
            for kind in order:
                out = work / f"{kind}-{i}.mp4"
                hls_dir = work / f"{kind}-{i}-hls"
                cli_args = [str(src), str(out), *extra] + (["--hls", str(hls_dir)] if kind == "ladder" else [])
                wall, cpu, done = run_cli(cli_args)
                runs[kind].append({"wall": round(wall, 2), "cpu": round(cpu, 2), "done": done, "out": out,
                                   "hls": hls_dir})
                print(f"run {i + 1} {kind:>6}: {cpu:.1f} CPU s, {wall:.1f} s wall", flush=True)
        mp4_cpu = sorted(r["cpu"] for r in runs["mp4"])[len(runs["mp4"]) // 2]
        lad_cpu = sorted(r["cpu"] for r in runs["ladder"])[len(runs["ladder"]) // 2]
        mp4_wall = sorted(r["wall"] for r in runs["mp4"])[len(runs["mp4"]) // 2]
        lad_wall = sorted(r["wall"] for r in runs["ladder"])[len(runs["ladder"]) // 2]
        last_mp4, last_lad = runs["mp4"][-1], runs["ladder"][-1]
        ladder = last_lad["done"]["hls"]
        rungs = []
        for r in ladder["rungs"]:
            rungs.append({"name": r["name"], "size": f"{r['width']}x{r['height']}", "codecs": r["codecs"],
                          "bytes": r["bytes"], "videoAverageKbps": round(r["averageBandwidth"] / 1000, 1),
                          "videoPeakKbps": round(r["bandwidth"] / 1000, 1),
                          "ssim": round(ssim(last_lad["hls"] / f"{r['name']}.mp4", src, r["width"], r["height"]), 5)})
        audio = ladder.get("audio") or {}
        figures = {
            "source": {"file": src.name, "duration": args.duration, "size": "1920x1080", "bytes": src.stat().st_size},
            "load_average_at_start": [round(x, 2) for x in load],
            "runs": args.runs,
            "cpu_seconds": {"mp4_alone": mp4_cpu, "ladder_and_mp4": lad_cpu, "ratio": round(lad_cpu / mp4_cpu, 3),
                            "all": {k: [r["cpu"] for r in v] for k, v in runs.items()}},
            "wall_seconds": {"mp4_alone": mp4_wall, "ladder_and_mp4": lad_wall, "ratio": round(lad_wall / mp4_wall, 3)},
            "rungs": rungs,
            "audio": {"bytes": audio.get("bytes"), "averageKbps": round(audio.get("averageBandwidth", 0) / 1000, 1)},
            "hls_set_bytes": last_lad["done"]["hlsBytes"],
            "mp4": {"bytes_alone": last_mp4["done"]["outputBytes"], "bytes_with_ladder": last_lad["done"]["outputBytes"],
                    "bytes_ratio": round(last_lad["done"]["outputBytes"] / last_mp4["done"]["outputBytes"], 3),
                    "ssim_alone": round(ssim(last_mp4["out"], src, 1280, 720), 5),
                    "ssim_with_ladder": round(ssim(last_lad["out"], src, 1280, 720), 5)},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (OUT_DIR / "hls.json").write_text(json.dumps(figures, indent=2) + "\n")
    from bench.results import record

    record("hls", figures)
    c, w, m = figures["cpu_seconds"], figures["wall_seconds"], figures["mp4"]
    print(f"\n{args.duration:g} s 1080p lecture, load average at start {figures['load_average_at_start']}, "
          f"{args.runs} run(s) each")
    print(f"{'':24}{'MP4 alone':>12}{'ladder + MP4':>14}{'ratio':>8}  target")
    print(f"{'CPU seconds':24}{c['mp4_alone']:>12.1f}{c['ladder_and_mp4']:>14.1f}{c['ratio']:>7.2f}x  <= 2x "
          f"({'met' if c['ratio'] <= 2 else 'NOT met'})")
    print(f"{'wall seconds':24}{w['mp4_alone']:>12.1f}{w['ladder_and_mp4']:>14.1f}{w['ratio']:>7.2f}x")
    print(f"{'MP4 bytes':24}{m['bytes_alone']:>12}{m['bytes_with_ladder']:>14}{m['bytes_ratio']:>7.3f}x")
    print(f"{'MP4 SSIM (vs 720p src)':24}{m['ssim_alone']:>12.5f}{m['ssim_with_ladder']:>14.5f}"
          f"{m['ssim_with_ladder'] - m['ssim_alone']:>+8.4f}")
    print(f"\n{'rung':8}{'size':>11}{'codecs':>14}{'bytes':>11}{'avg kbit/s':>12}{'peak kbit/s':>13}{'SSIM':>9}")
    for r in rungs:
        print(f"{r['name']:8}{r['size']:>11}{r['codecs']:>14}{r['bytes']:>11}{r['videoAverageKbps']:>12.1f}"
              f"{r['videoPeakKbps']:>13.1f}{r['ssim']:>9.5f}")
    print(f"{'audio':8}{'':>11}{'mp4a.40.2':>14}{figures['audio']['bytes']:>11}{figures['audio']['averageKbps']:>12.1f}")
    print(f"\nwritten to {OUT_DIR / 'hls.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
