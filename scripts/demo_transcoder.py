"""`make demo-transcoder`: the transcoder alone. Transcodes a generated 1080p sample lecture
with the real CLI, no cluster and no cloud account, and shows what it gained.

It generates ~20 s of lecture-like video (slides, a speaker inset, speech-like audio) into
./out/, runs `lectern-transcode` on it with its progress bar, then prints input against output:
size, resolution, codecs and the ratio. (`make demo` runs the whole pipeline.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from demo_common import DemoError, comparison, generate_sample, probe  # scripts/, beside this file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
DURATION = 20
SIZE = "1920x1080"


def main() -> int:
    for tool in ("ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            print(f"demo: {tool} is not installed (make demo-transcoder installs it with apt)", file=sys.stderr)
            return 1
    OUT.mkdir(exist_ok=True)
    src = OUT / f"sample-lecture-{SIZE}-{DURATION}s.mp4"
    dst = OUT / "sample-lecture-lectern.mp4"
    try:
        if not src.exists():
            print(f"generating a {DURATION} s {SIZE} lecture-like sample (slides, speaker, speech) -> "
                  f"{src.relative_to(ROOT)}")
            t = time.monotonic()
            generate_sample(src, DURATION, SIZE)
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
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    print()
    print("\n".join(comparison([("input", i), ("output", o)])))
    print(f"encoded in {wall:.1f} s ({i['duration'] / wall:.2f}x realtime); file: {dst.relative_to(ROOT)}")
    print("\nnext: `make demo` runs the whole pipeline: BullMQ queue -> intake -> VideoTranscode -> "
          "operator -> Job -> Cloudinary -> Lecture READY + notification")
    return 0


if __name__ == "__main__":
    sys.exit(main())
