"""`make demo`: transcode a generated 1080p sample lecture with the real CLI, no cluster and no
cloud account, and show what it gained.

It generates ~20 s of lecture-like video (slides, a speaker inset, speech-like audio) into
./out/, runs `lectern-transcode` on it with its progress bar, then prints input against output:
size, resolution, codecs and the ratio."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
DURATION = 20
SIZE = "1920x1080"


def probe(path: Path) -> dict:
    """What a person compares: size, resolution, bitrate, codecs. Raises CalledProcessError
    when ffprobe cannot read the file. (Also used by demo_flow.py.)"""
    data = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                                      "-show_streams", str(path)], capture_output=True, check=True,
                                     timeout=60).stdout)
    v = next(s for s in data["streams"] if s["codec_type"] == "video")
    a = next((s for s in data["streams"] if s["codec_type"] == "audio"), None)
    return {"size": int(data["format"]["size"]), "res": f"{v['width']}x{v['height']}",
            "video": f"{v['codec_name']} {v.get('profile', '')} {v.get('pix_fmt', '')}".strip(),
            "audio": f"{a['codec_name']} {a.get('channels')}ch {int(a.get('bit_rate') or 0) // 1000}k" if a else "none",
            "kbps": int(data["format"].get("bit_rate", 0)) // 1000, "duration": float(data["format"]["duration"])}


def main() -> int:
    for tool in ("ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            print(f"demo: {tool} is not installed (make demo installs it with apt)", file=sys.stderr)
            return 1
    OUT.mkdir(exist_ok=True)
    src = OUT / f"sample-lecture-{SIZE}-{DURATION}s.mp4"
    dst = OUT / "sample-lecture-lectern.mp4"
    if not src.exists():
        print(f"generating a {DURATION} s {SIZE} lecture-like sample (slides, speaker, speech) -> {src.relative_to(ROOT)}")
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "lectern_transcoder.sample", str(src), "--duration", str(DURATION),
                        "--size", SIZE], check=True, stdout=subprocess.DEVNULL)
        print(f"  done in {time.monotonic() - t:.1f} s")
    dst.unlink(missing_ok=True)
    cli = Path(sys.executable).with_name("lectern-transcode")
    print(f"\n$ lectern-transcode {src.relative_to(ROOT)} {dst.relative_to(ROOT)}")
    t = time.monotonic()
    rc = subprocess.run([str(cli), str(src), str(dst), "--progress", "bar"]).returncode
    wall = time.monotonic() - t
    if rc != 0:
        print(f"demo: lectern-transcode failed with exit code {rc}", file=sys.stderr)
        return rc
    i, o = probe(src), probe(dst)
    print(f"\n{'':8}{'resolution':>12}{'size':>12}{'kbit/s':>9}  video / audio")
    for name, p in (("input", i), ("output", o)):
        print(f"{name:8}{p['res']:>12}{p['size'] / 1e6:>10.2f}MB{p['kbps']:>9}  {p['video']} / {p['audio']}")
    print(f"\noutput is {o['size'] / i['size']:.1%} of the input ({i['size'] / o['size']:.1f}x smaller), "
          f"encoded in {wall:.1f} s ({i['duration'] / wall:.2f}x realtime); file: {dst.relative_to(ROOT)}")
    print("\nnext: `make demo-flow` runs the same on the whole path: BullMQ queue -> intake -> "
          "VideoTranscode -> operator -> Job -> Cloudinary -> Lecture READY + notification")
    return 0


if __name__ == "__main__":
    sys.exit(main())
