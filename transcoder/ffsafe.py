"""What ffmpeg and ffprobe may read, and what they may see: the input side of every call.

An upload is attacker-made data, and ffmpeg's defaults are generous: given a file it guesses
the container from its bytes, and some "containers" are scripts that make it open other
files or URLs (an HLS or DASH playlist, an ffconcat script, an image2 pattern). So:

1. The first look at an input (`probe_args()`) is allowed one protocol, `file`, and only the
   demuxers of the containers Lectern accepts (`ACCEPTED`): libavformat detects the format
   from the bytes and refuses one not on `-format_whitelist` *before* its header is read,
   i.e. before a playlist demuxer could open anything. A refused input is exit 65.
2. Every later call on the input (`input_args()`) names the demuxer the probe found (`-f`),
   keeps `file` as the only protocol, caps decoded frames at `profile.DECODE_MAX_PIXELS`
   (`-max_pixels`), stops reading at the duration limit (`-t`), and, for MP4/MOV, switches
   off external data references (`-enable_drefs 0`, also libavformat's default).
3. The input is passed as `file:<path>` (a path this program generated): never parsed as a
   URL or an option.
4. ffmpeg and ffprobe run with `child_env()`: PATH and a C locale, nothing else. The
   upload credential (CLOUDINARY_URL), the Kubernetes service variables and anything else in
   the pod's environment stay in the Python process.
5. `oom_first()` makes each ffmpeg the kernel's first choice when the pod runs out of memory,
   so the Python process survives to say so (exit 71, not a retry: errors.OutOfMemory)."""

from __future__ import annotations

import os
from pathlib import Path

from lectern_transcoder import profile
from lectern_transcoder.errors import UnusableInput

# libavformat demuxer name -> what people call it. Only containers of finished media files:
# nothing that refers to other files or URLs.
ACCEPTED = {
    "mov": "MP4/MOV/3GP",
    "matroska": "Matroska/WebM",
    "avi": "AVI",
    "mpegts": "MPEG-TS",
    "mpeg": "MPEG-PS",
    "flv": "FLV",
    "asf": "ASF/WMV",
    "ogg": "Ogg",
}
PROTOCOLS = "file"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def accepted_names() -> str:
    return ", ".join(ACCEPTED.values())


def input_url(path: Path) -> str:
    """`file:` + the absolute path: ffmpeg takes it as a local file whatever the name holds."""
    return f"file:{Path(path).absolute()}"


def probe_args() -> list[str]:
    """Input options for the first look at an untrusted file (before `-i`)."""
    return ["-protocol_whitelist", PROTOCOLS, "-format_whitelist", ",".join(ACCEPTED),
            "-max_pixels", str(profile.DECODE_MAX_PIXELS)]


def demuxer_of(format_name: str) -> str:
    """The accepted demuxer among ffprobe's `format_name` ("mov,mp4,m4a,3gp,3g2,mj2" -> "mov")."""
    for name in (format_name or "").split(","):
        if name in ACCEPTED:
            return name
    raise UnusableInput(f"input container {format_name or 'unknown'} is not accepted "
                        f"(accepted: {accepted_names()})")


def input_args(demuxer: str, max_seconds: float | None = None) -> list[str]:
    """Input options pinning a probed file's reading (before `-i`)."""
    if demuxer not in ACCEPTED:
        raise UnusableInput(f"input container {demuxer} is not accepted (accepted: {accepted_names()})")
    args = ["-f", demuxer, "-protocol_whitelist", PROTOCOLS, "-format_whitelist", demuxer,
            "-max_pixels", str(profile.DECODE_MAX_PIXELS)]
    if demuxer == "mov":
        args += ["-enable_drefs", "0"]
    if max_seconds:
        args += ["-t", f"{max_seconds:g}"]
    return args


def own_args(demuxer: str = "mov") -> list[str]:
    """Input options for reading back a file this program wrote (an MP4, a rendition)."""
    return ["-f", demuxer, "-protocol_whitelist", PROTOCOLS, "-format_whitelist", demuxer]


def sniff(head: bytes) -> str | None:
    """What a refused input looks like, for the reason people read."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"#extm3u"):
        return "an HLS playlist"
    if text.startswith(b"ffconcat"):
        return "an ffconcat script"
    if b"<mpd" in text[:4096]:
        return "a DASH manifest"
    if text.startswith((b"<?xml", b"<")):
        return "an XML or HTML document"
    return None


def child_env() -> dict[str, str]:
    """The whole environment of an ffmpeg/ffprobe child: PATH (to find the binaries) and a C
    locale. No credential, token or service address is inherited."""
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LC_ALL": "C"}


def oom_first(pid: int) -> None:
    """Raise the child's OOM score to the maximum (any process may raise its own children's),
    so under memory pressure the kernel kills ffmpeg, not the process that reports why."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
