"""scripts/demo_ladder.py: what `make demo` prints about an HLS ladder (issue 15), on a
hand-written set (exact lines), on the CLI's own --hls directory, and over http(s) from the
Cloudinary emulator as the operator reports it (hlsUrl + posterUrl)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo_ladder", ROOT / "scripts" / "demo_ladder.py")
demo_ladder = sys.modules.setdefault("demo_ladder", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(demo_ladder)

MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="default",LANGUAGE="und",DEFAULT=YES,AUTOSELECT=YES,CHANNELS="1",URI="audio.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=104000,AVERAGE-BANDWIDTH=101000,CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=1280x720,FRAME-RATE=30.000,AUDIO="audio"
720p.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=186000,AVERAGE-BANDWIDTH=180000,CODECS="avc1.640028,mp4a.40.2",RESOLUTION=1920x1080,FRAME-RATE=30.000,AUDIO="audio"
1080p.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=80000,AVERAGE-BANDWIDTH=78000,CODECS="avc1.64001e,mp4a.40.2",RESOLUTION=854x480,FRAME-RATE=30.000,AUDIO="audio"
480p.m3u8
"""


def media_playlist(n: int, last: float = 6.0) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:6", '#EXT-X-MAP:URI="r.mp4",BYTERANGE="800@0"']
    for i in range(n):
        lines += [f"#EXTINF:{last if i == n - 1 else 6.0:.6f},", "#EXT-X-BYTERANGE:1000@800", "r.mp4"]
    return "\n".join(lines + ["#EXT-X-ENDLIST", ""])


# the smallest JPEG header with a SOF0 of 1280x720 (the parser needs no more)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" \
       b"\xff\xc0\x00\x11\x08\x02\xd0\x05\x00\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + b"\x00" * 37_963


def test_exact_lines_from_a_known_set():
    base = "https://res.cloudinary.com/demo/raw/upload/v7/lectern/lectures/l1/abc-hls"
    files = {f"{base}/master.m3u8": MASTER, f"{base}/720p.m3u8": media_playlist(10),
             f"{base}/1080p.m3u8": media_playlist(10), f"{base}/480p.m3u8": media_playlist(10),
             f"{base}/audio.m3u8": media_playlist(10),
             "https://res.cloudinary.com/demo/image/upload/lectern/lectures/l1/abc-hls/poster.jpg": JPEG}
    fetched = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        if url not in files:
            raise OSError(f"404 {url}")
        v = files[url]
        return v if isinstance(v, bytes) else v.encode()

    lines = demo_ladder.describe_ladder(f"{base}/master.m3u8", fetch=fetch)
    assert lines == [
        f"HLS ladder  {base}/master.m3u8",
        "  720p  1280x720   avc1.64001f,mp4a.40.2  30.000 fps    101 kbit/s average,   104 peak   10 segments, 60.0 s",
        "  1080p 1920x1080  avc1.640028,mp4a.40.2  30.000 fps    180 kbit/s average,   186 peak   10 segments, 60.0 s",
        "  480p  854x480    avc1.64001e,mp4a.40.2  30.000 fps     78 kbit/s average,    80 peak   10 segments, 60.0 s",
        "  audio default 1 ch   10 segments, 60.0 s",
        "  poster 1280x720 JPEG, 38 kB  https://res.cloudinary.com/demo/image/upload/lectern/lectures/l1/abc-hls/poster.jpg",
    ]
    # a missing rung playlist or poster is a line, not an exception
    del files[f"{base}/480p.m3u8"]
    lines = demo_ladder.describe_ladder(f"{base}/master.m3u8", "https://elsewhere/p.jpg", fetch=fetch)
    assert "480p.m3u8 not fetched" in lines[3] and lines[-1].startswith("  poster: https://elsewhere/p.jpg not fetched")


def test_not_a_master_playlist():
    with pytest.raises(ValueError, match="not a master playlist"):
        demo_ladder.describe_ladder("x/master.m3u8", fetch=lambda u: media_playlist(2).encode())
    with pytest.raises(ValueError, match="no #EXTM3U"):
        demo_ladder.describe_ladder("x/master.m3u8", fetch=lambda u: b"<html>")


def test_attributes_and_poster_guess():
    assert demo_ladder.parse_attributes('A=1,CODECS="avc1.64001f,mp4a.40.2",R=2x3') == \
        {"A": "1", "CODECS": "avc1.64001f,mp4a.40.2", "R": "2x3"}
    assert demo_ladder.guess_poster("https://h/c/raw/upload/v12/f/l/abc-hls/master.m3u8") == \
        "https://h/c/image/upload/f/l/abc-hls/poster.jpg"
    assert demo_ladder.guess_poster("/tmp/x/master.m3u8") == "/tmp/x/poster.jpg"
    assert demo_ladder.jpeg_size(JPEG) == (1280, 720) and demo_ladder.jpeg_size(b"GIF89a") is None


def _check_real(lines: list[str], segments: int) -> None:
    rungs = [line for line in lines if re.match(r"^  \d+p ", line)]
    assert [r.split()[0] for r in rungs] == ["720p", "480p"]
    for r in rungs:
        m = re.search(r"(\d+) kbit/s average, +(\d+) peak +(\d+) segments, ([\d.]+) s$", r)
        assert m, r
        assert 0 < int(m.group(1)) <= int(m.group(2)) and int(m.group(3)) == segments
    assert re.match(r"^  audio default 1 ch +\d+ segments", lines[-2]), lines
    assert re.match(r"^  poster 1280x720 JPEG, \d+ kB ", lines[-1]), lines


def test_the_clis_own_ladder_directory(media, run_cli, tmp_path):
    src = media("ladder-720.mp4", duration=7, size="1280x720", fps=10, video_codec="mpeg4", extra=["-q:v", "5"])
    res = run_cli(str(src), str(tmp_path / "out.mp4"), "--hls", str(tmp_path / "hls"), timeout=180)
    assert res.returncode == 0, res.stderr
    lines = demo_ladder.describe_ladder(tmp_path / "hls")
    assert lines[0] == f"HLS ladder  {tmp_path / 'hls' / 'master.m3u8'}"
    _check_real(lines, segments=2)  # 7 s in 6 s segments



def test_from_the_cloudinary_emulator_as_the_operator_reports_it(media, emu, run_cli):
    src = media("ladder-720.mp4", duration=7, size="1280x720", fps=10, video_codec="mpeg4", extra=["-q:v", "5"])
    emu.put_asset(src, "raw/lec-demo")
    res = run_cli(emu.secure_url_for("raw/lec-demo"), "cloudinary:lectures/lec-demo/abc", "--hls",
                  "cloudinary:lectures/lec-demo/abc-hls", env={
                      "LECTERN_TEST_INSECURE_LOOPBACK": f"127.0.0.1:{emu.port}",
                      "LECTERN_UPLOAD_CHUNK_BYTES": "65536"}, timeout=180)
    assert res.returncode == 0, res.stderr
    term = res.termination
    lines = demo_ladder.describe_ladder(term["hlsUrl"], term["posterUrl"])
    assert lines[0] == f"HLS ladder  {term['hlsUrl']}" and lines[-1].endswith(term["posterUrl"])
    _check_real(lines, segments=2)
