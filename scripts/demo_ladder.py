"""What `make demo` shows of an HLS ladder (issue 15): `describe_ladder(hls_url)` fetches the
master playlist, each rung's media playlist, the audio rendition's and the poster, and returns
printable lines:

    HLS ladder  https://.../lectern/lectures/L/abc-hls/master.m3u8
      720p  1280x720   avc1.64001f,mp4a.40.2  30.000 fps   101 kbit/s average,   104 peak   10 segments, 60.0 s
      1080p 1920x1080  ...
      480p  854x480    ...
      audio mp4a.40.2 1 ch   10 segments, 60.0 s
      poster 1280x720 JPEG, 38 kB  https://.../poster.jpg

Bit rates are the master playlist's AVERAGE-BANDWIDTH and BANDWIDTH (video + audio, measured by
the transcoder from what it wrote). `hls_url` is an http(s) URL or a local path (the CLI's
`--hls DIR`: DIR/master.m3u8); rung playlists are resolved relative to it, as a player does.
The poster is `poster_url` (the status's / Lecture's `posterUrl`) when given; otherwise
`poster.jpg` beside a local master, or, for a Cloudinary URL, the set's image resource
(`.../image/upload/<folder>/poster.jpg`), and a line saying so when it cannot be fetched.
Uses only the standard library (scripts/ runs with the repo's venv, no extra dependency).

    from demo_ladder import describe_ladder       # scripts/ on sys.path, as demo.py has it
    for line in describe_ladder(vt["status"]["hlsUrl"], vt["status"].get("posterUrl"), context=ctx):
        print(line)

or from a shell: `.venv/bin/python scripts/demo_ladder.py URL_OR_PATH [POSTER_URL] [--cafile CA.pem]`.
"""

from __future__ import annotations

import re
import ssl
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Fetch = Callable[[str], bytes]

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def parse_attributes(text: str) -> dict[str, str]:
    """`A=1,B="x,y"` -> {"A": "1", "B": "x,y"} (RFC 8216 attribute lists)."""
    return {k: v.strip('"') for k, v in _ATTR.findall(text)}


@dataclass(frozen=True)
class Variant:
    uri: str
    bandwidth: int
    average_bandwidth: int | None
    width: int | None
    height: int | None
    codecs: str
    frame_rate: float | None

    @property
    def name(self) -> str:
        if self.width and self.height:
            return f"{min(self.width, self.height)}p"
        return Path(urllib.parse.urlsplit(self.uri).path).stem


@dataclass(frozen=True)
class Master:
    variants: tuple[Variant, ...]
    audio: tuple[dict[str, str], ...]  # EXT-X-MEDIA TYPE=AUDIO attributes


def parse_master(text: str) -> Master:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an HLS playlist (no #EXTM3U)")
    variants, audio = [], []
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-MEDIA:"):
            attrs = parse_attributes(line.split(":", 1)[1])
            if attrs.get("TYPE") == "AUDIO":
                audio.append(attrs)
        elif line.startswith("#EXT-X-STREAM-INF:"):
            attrs = parse_attributes(line.split(":", 1)[1])
            uri = next((u for u in lines[i + 1:] if not u.startswith("#")), None)
            if uri is None:
                raise ValueError("#EXT-X-STREAM-INF without a URI")
            w = h = None
            if "RESOLUTION" in attrs:
                w, h = (int(n) for n in attrs["RESOLUTION"].lower().split("x"))
            variants.append(Variant(uri, int(attrs["BANDWIDTH"]),
                                    int(attrs["AVERAGE-BANDWIDTH"]) if "AVERAGE-BANDWIDTH" in attrs else None,
                                    w, h, attrs.get("CODECS", "?"),
                                    float(attrs["FRAME-RATE"]) if "FRAME-RATE" in attrs else None))
    if not variants:
        raise ValueError("a media playlist, not a master playlist (no #EXT-X-STREAM-INF)")
    return Master(tuple(variants), tuple(audio))


def segments(text: str) -> tuple[int, float]:
    """(segment count, total seconds) of a media playlist."""
    count, seconds = 0, 0.0
    for line in text.splitlines():
        if line.startswith("#EXTINF:"):
            count += 1
            seconds += float(line.split(":", 1)[1].split(",", 1)[0])
    return count, seconds


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOFn marker; None when it is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        i += 2 + length
    return None


def _is_url(s: str) -> bool:
    return urllib.parse.urlsplit(s).scheme in ("http", "https")


def default_fetch(context: ssl.SSLContext | None = None, timeout: float = 15.0) -> Fetch:
    def fetch(where: str) -> bytes:
        if _is_url(where):
            with urllib.request.urlopen(where, timeout=timeout, context=context) as r:  # noqa: S310 - http(s) only
                return r.read()
        return Path(where).read_bytes()
    return fetch


def resolve(base: str, ref: str) -> str:
    if _is_url(ref) or not ref:
        return ref
    if _is_url(base):
        return urllib.parse.urljoin(base, ref)
    return str(Path(base).parent / ref)


def guess_poster(hls_url: str) -> str | None:
    """Where the transcoder put the poster of the set whose master is `hls_url` (no posterUrl given)."""
    if not _is_url(hls_url):
        return resolve(hls_url, "poster.jpg")
    parts = urllib.parse.urlsplit(hls_url)
    m = re.match(r"^(.*)/raw/upload/(?:v\d+/)?(.+)/master\.m3u8$", parts.path)
    if not m:
        return None
    return urllib.parse.urlunsplit(parts._replace(path=f"{m.group(1)}/image/upload/{m.group(2)}/poster.jpg", query=""))


def _kbits(bps: int | None) -> str:
    return "?" if bps is None else f"{bps / 1000:.0f}"


def describe_ladder(hls_url: str, poster_url: str | None = None, *, context: ssl.SSLContext | None = None,
                    fetch: Fetch | None = None) -> list[str]:
    """Printable lines about the HLS set at `hls_url` (see the module docstring). Raises
    ValueError when the master playlist is not one, OSError when it cannot be fetched; a rung,
    audio or poster that cannot be fetched becomes a line saying so."""
    if isinstance(hls_url, Path):
        hls_url = str(hls_url)
    if not _is_url(hls_url) and Path(hls_url).is_dir():
        hls_url = str(Path(hls_url) / "master.m3u8")
    get = fetch or default_fetch(context)
    master = parse_master(get(hls_url).decode("utf-8"))
    out = [f"HLS ladder  {hls_url}"]
    name_w = max(len(v.name) for v in master.variants)
    for v in master.variants:
        size = f"{v.width}x{v.height}" if v.width else "?"
        fps = f"{v.frame_rate:.3f} fps" if v.frame_rate else "? fps"
        try:
            n, secs = segments(get(resolve(hls_url, v.uri)).decode("utf-8"))
            segs = f"{n:3d} segments, {secs:.1f} s"
        except (OSError, ValueError) as exc:
            segs = f"playlist {v.uri} not fetched ({exc})"
        out.append(f"  {v.name:<{name_w}} {size:<9}  {v.codecs}  {fps}  {_kbits(v.average_bandwidth):>5} kbit/s average, "
                   f"{_kbits(v.bandwidth):>5} peak  {segs}")
    for a in master.audio:
        label = f"  audio {a.get('NAME', '')} {a.get('CHANNELS', '?')} ch".rstrip()
        if not a.get("URI"):
            out.append(f"{label}  (muxed into the video rungs)")
            continue
        try:
            n, secs = segments(get(resolve(hls_url, a["URI"])).decode("utf-8"))
            out.append(f"{label}  {n:3d} segments, {secs:.1f} s")
        except (OSError, ValueError) as exc:
            out.append(f"{label}  playlist {a['URI']} not fetched ({exc})")
    where = poster_url or guess_poster(hls_url)
    if not where:
        out.append("  poster: no posterUrl given")
    else:
        try:
            data = get(where)
            wh = jpeg_size(data)
            kind = f"{wh[0]}x{wh[1]} JPEG" if wh else "not a JPEG"
            out.append(f"  poster {kind}, {len(data) / 1000:.0f} kB  {where}")
        except (OSError, ValueError) as exc:
            out.append(f"  poster: {where} not fetched ({exc})")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Describe an HLS ladder: rungs, bit rates, segments, poster.")
    p.add_argument("hls", help="master playlist URL, or a local --hls directory / master.m3u8")
    p.add_argument("poster", nargs="?", help="the poster's URL (default: guessed beside the master)")
    p.add_argument("--cafile", help="CA bundle to trust (e.g. the Cloudinary emulator's throw-away CA)")
    args = p.parse_args(argv)
    ctx = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    try:
        for line in describe_ladder(args.hls, args.poster, context=ctx):
            print(line)
    except (OSError, ValueError) as exc:
        print(f"demo_ladder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
