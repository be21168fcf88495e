"""What the operator may believe of a transcode pod's report (issue 12, item 1).

The pod that runs ffmpeg on an uploaded file is the least trusted part of Lectern: a crafted
video that takes ffmpeg over owns that pod, its `status.report` and its termination message.
So what it reports is checked before it reaches a Lecture or a person:

- `accept_video_url()`: the only video URL a transcode may report is an https delivery URL of
  the configured Cloudinary cloud for exactly the public id the operator chose for that
  transcode (`jobs.output_target`), nothing else: no other cloud, no other lecture's id, no
  query, no fetch/remote delivery type. Parsed by the shared URL parser (urlpolicy).
- `user_text()`: text that reaches people (failure reasons built from ffmpeg's stderr, relayed
  to the BullMQ job and the instructor's notification) is one line, bounded, and has no control,
  bidi or zero-width characters (no terminal escapes, no spoofed text direction).

Pure functions, no I/O; the reconciler calls them (see the module's tests for the contract)."""

from __future__ import annotations

import re
import unicodedata

from lectern_transcoder.urlpolicy import UrlRefused, parse_media_url

CLOUDINARY_HOST = "res.cloudinary.com"
_VERSION = r"(?:v[0-9]{1,20}/)?"
_EXTENSIONS = ("mp4", "m3u8", "jpg")


class Untrusted(ValueError):
    """A reported value the operator does not accept; `str()` is the reason for the CR."""


def accept_video_url(url: object, cloud: str, expected_public_id: str, *, extensions: tuple[str, ...] = ("mp4",),
                     host: str = CLOUDINARY_HOST, resource_type: str = "video",
                     insecure_loopback: frozenset[tuple[str, int]] = frozenset()) -> str:
    """`url` if it is `https://<host>/<cloud>/<resource_type>/upload/[v<version>/]<expected_public_id>.<ext>`
    (ext in `extensions`; none when `extensions` is empty, as for raw resources such as
    `<folder>/master.m3u8`), else raise Untrusted. `insecure_loopback` is the tests' escape for
    the local Cloudinary emulator, as in urlpolicy."""
    if not isinstance(url, str) or not url:
        raise Untrusted("the transcoder reported no video URL")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cloud or ""):
        raise Untrusted("no valid Cloudinary cloud name is configured (chart value cloudinary.cloudName, LECTERN_CLOUDINARY_CLOUD_NAME)")
    try:
        parsed = parse_media_url(url, [f"{host}/{cloud}"], insecure_loopback)
    except UrlRefused as exc:
        raise Untrusted(f"the reported video URL is refused: {exc}") from None
    if not parsed.insecure and parsed.host != host:
        raise Untrusted(f"the reported video URL is not on {host}")
    if "?" in parsed.path or "#" in url:
        raise Untrusted("the reported video URL carries a query or fragment")
    exts = "|".join(re.escape(e) for e in extensions)
    suffix = rf"\.(?:{exts})" if extensions else ""  # raw resources keep the extension in the public id
    pattern = (rf"/{re.escape(cloud)}/{re.escape(resource_type)}/upload/{_VERSION}"
               rf"{re.escape(expected_public_id.strip('/'))}{suffix}")
    if not re.fullmatch(pattern, parsed.path):
        raise Untrusted(f"the reported video URL is not this transcode's upload "
                        f"({cloud}/{resource_type}/upload/.../{expected_public_id} expected)")
    return url


# Terminal escape sequences (ffmpeg colours its stderr): CSI (`ESC [ ... final`, or the C1
# CSI 0x9b) and OSC (`ESC ] ... BEL|ESC \\`, e.g. a hyperlink) go whole, not just their ESC.
_ESCAPES = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")


def user_text(text: object, limit: int = 500) -> str:
    """One line of at most `limit` characters: terminal escape sequences are removed, control
    characters (C0, DEL, C1), format characters (bidi overrides, zero-width) and
    line/paragraph separators become spaces, runs of whitespace collapse, and a cut is marked
    with an ellipsis."""
    s = text if isinstance(text, str) else ("" if text is None else str(text))
    s = _ESCAPES.sub(" ", s[: max(0, limit) * 8 + 4096])  # bounded work on a huge input
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        out.append(" " if cat in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") or ch.isspace() else ch)
    s = " ".join("".join(out).split())
    if limit <= 0:
        return ""
    return s if len(s) <= limit else s[:max(0, limit - 1)].rstrip() + "…"
