"""What both demos share: the generated sample lecture and the ffprobe summary that compares a
raw upload with what Lectern made of it (scripts/demo.py, scripts/demo_transcoder.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


class DemoError(Exception):
    """A readable, one-line reason a demo cannot go on."""


def probe(path: Path) -> dict:
    """What a person compares: size, resolution, bitrate, codecs. Raises DemoError when ffprobe
    cannot read the file or it has no video stream."""
    try:
        proc = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                               str(path)], capture_output=True, check=True, timeout=60)
        data = json.loads(proc.stdout)
    except subprocess.CalledProcessError as exc:
        why = (exc.stderr.decode(errors="replace").strip().splitlines() or ["unreadable"])[-1]
        raise DemoError(f"ffprobe cannot read {path}: {why}") from None
    except (subprocess.TimeoutExpired, ValueError) as exc:
        raise DemoError(f"ffprobe cannot read {path}: {exc}") from None
    v = next((s for s in data.get("streams", []) if s.get("codec_type") == "video"), None)
    if v is None or "format" not in data:
        raise DemoError(f"{path} has no video stream")
    a = next((s for s in data["streams"] if s["codec_type"] == "audio"), None)
    fmt = data["format"]
    return {"size": int(fmt.get("size") or path.stat().st_size), "res": f"{v['width']}x{v['height']}",
            "video": f"{v['codec_name']} {v.get('profile', '')} {v.get('pix_fmt', '')}".strip(),
            "audio": f"{a['codec_name']} {a.get('channels')}ch {int(a.get('bit_rate') or 0) // 1000}k" if a else "none",
            "kbps": int(fmt.get("bit_rate") or 0) // 1000, "duration": float(fmt.get("duration") or 0)}


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def comparison(rows: list[tuple[str, dict]], indent: int = 0) -> list[str]:
    """The summary table: one row per (label, probe()) and the size ratio of the last row to
    the first."""
    pad = " " * indent
    width = max(8, *(len(label) + 2 for label, _ in rows))
    lines = [f"{pad}{'':{width}}{'resolution':>12}{'size':>12}{'kbit/s':>9}{'seconds':>9}  video / audio"]
    for label, p in rows:
        lines.append(f"{pad}{label:{width}}{p['res']:>12}{mb(p['size']):>12}{p['kbps']:>9}{p['duration']:>9.1f}  "
                     f"{p['video']} / {p['audio']}")
    first, last = rows[0][1], rows[-1][1]
    lines.append(f"{pad}{rows[-1][0]} is {last['size'] / first['size']:.1%} of the {rows[0][0]} "
                 f"({first['size'] / last['size']:.1f}x smaller)")
    return lines


def generate_sample(out: Path, duration: float, size: str, preset: str = "veryfast") -> None:
    """A lecture-like clip (slides, speaker inset, speech-like audio) from ffmpeg's own sources.
    Runs outside the repo root: `-m` puts the cwd first on sys.path, where `operator/` would
    shadow the stdlib module."""
    proc = subprocess.run([sys.executable, "-m", "lectern_transcoder.sample", str(out), "--duration", f"{duration:g}",
                           "--size", size, "--preset", preset], cwd=out.parent, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise DemoError(f"generating the sample failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
