"""A local stand-in for Cloudinary: the signed upload API and the delivery CDN.

Cloudinary cannot be reached from these machines, so the tests point the *real* `cloudinary`
SDK at this server through the SDK's own configuration:

    CLOUDINARY_URL=cloudinary://KEY:SECRET@democloud?upload_prefix=http://127.0.0.1:PORT

(`cloudinary.Config` copies every query parameter of CLOUDINARY_URL into the config, and
`utils.base_api_url` builds `<upload_prefix>/v1_1/<cloud>/<resource_type>/upload` from it.)

What is emulated, and why it matters for Lectern:

* `POST /v1_1/<cloud>/<image|video|raw|auto>/upload` (and `destroy`): multipart bodies are
  streamed to disk, the signature is checked exactly like Cloudinary does (sorted `k=v` pairs
  of every param except file/cloud_name/resource_type/api_key/signature, `&`-joined, the API
  secret appended, SHA-1 or SHA-256 hex), a bad one gets 401 `{"error": {"message": ...}}`.
  Chunked `upload_large` (`Content-Range` + `X-Unique-Upload-Id`) is reassembled by offset,
  so chunks may arrive in any order or be retried. `public_id`, `folder`, `overwrite`
  (default true; false returns the existing asset with `"existing": true`), `use_filename`,
  `unique_filename` are honoured. Video uploads are probed with ffprobe (an unusable file is
  refused with 400, as Cloudinary does), and the answer carries width/height/duration etc.
* `GET|HEAD /<cloud>/<resource_type>/upload/[s--sig--/][transformations/][vNNN/]<public_id>.<ext>`:
  serves the stored asset with single-range `Range` support (206/416, `Accept-Ranges`,
  `ETag`, `If-Range`). `w_`, `h_`, `c_limit|c_scale|c_fit` are applied with real ffmpeg
  (libx264/AAC, result cached by source content + transformation); `q_*`/`f_auto` are
  accepted and ignored; anything else is a 400 with an `X-Cld-Error` header like the CDN's.
  A signed URL segment is verified the way the SDK computes it.
* Delivery answers carry the content type of the extension from a fixed table (raw HLS sets:
  `.m3u8` application/vnd.apple.mpegurl, `.mp4` video/mp4, `.m4s` video/iso.segment; `.jpg`
  image/jpeg), `Access-Control-Allow-Origin: *` and answer CORS preflights, as the CDN does.
* Fault switches for the tests (see `Faults`): drop a delivery connection after N body bytes,
  answer 5xx to the next k requests of a route, add latency, throttle delivery, and counters
  of requests and bytes in both directions (the benchmark reads `bytes_served` as ingress).

Differences from the real service, on purpose: `url` and `secure_url` in upload answers are
the emulator's own plain-http delivery URLs (so a test can download what was uploaded), there
is no minimum chunk size, and a transformation that changes nothing serves the original bytes.

Optional TLS: `CloudinaryEmulator(tls=(certfile, keyfile))` (see `tests/standins/tls.py` for a
throw-away CA) adds a second, https listener on 127.0.0.1 serving the same routes. Then
`delivery_url()` / `secure_url_for()` default to `https://127.0.0.1:TLS_PORT/...` and upload
answers carry an https `secure_url` (and the plain-http `url`), as the real service does; the
upload API stays reachable over plain http at `base_url` (the CLOUDINARY_URL's
`upload_prefix`), so the SDK needs no extra trust. Clients of the https listener must trust
the test CA (e.g. `SSL_CERT_FILE`).

As a process of its own (the end-to-end stack): `CloudinaryProcess(root, tls=...).start()` runs
`main()` (`--root --port --tls-cert --tls-key --tls-port --cloud --api-key --api-secret
--ready-file --quiet`) until SIGTERM/SIGINT, and `.control` (a `CloudinaryControl`) drives it
over the control API on the plain-http listener (never counted, never faulted, 404 on https):
`POST /_emulator/faults` (`{"fail_next": {...}, "drop_connection_after": {...}, "latency":
{...}, "throttle": {...}, "clear": true}`; GET shows them), `GET /_emulator/stats` and
`PUT /_emulator/assets/<resource_type>/<public_id>[?filename=&format=]` (= `put_asset`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import mmap
import os
import random
import re
import shutil
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

UNSIGNED_PARAMS = {"file", "cloud_name", "resource_type", "api_key", "signature"}
TRANSFORMATION_RE = re.compile(r"^[a-z]{1,3}_[^,/]+(,[a-z]{1,3}_[^,/]+)*$")
STALE_AFTER_S = 3600
# Delivery content types by extension, fixed rather than from the host's /etc/mime.types (which
# may lack or differ on these): what Cloudinary's CDN answers for raw HLS sets and images.
CONTENT_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "m4s": "video/iso.segment", "mp4": "video/mp4",
                 "m4a": "audio/mp4", "ts": "video/mp2t", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                 "png": "image/png", "json": "application/json", "vtt": "text/vtt"}
# Cloudinary's CDN lets any origin fetch delivery URLs (players on the platform's own domain).
CORS_HEADERS = {"Access-Control-Allow-Origin": "*",
                "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag"}


def content_type(ext: str) -> str:
    ext = ext.lower()
    return CONTENT_TYPES.get(ext) or mimetypes.types_map.get("." + ext, "application/octet-stream")
DEFAULT_CLOUD_NAME, DEFAULT_API_KEY, DEFAULT_API_SECRET = "democloud", "123456789012345", "emulator-secret"


class ApiError(Exception):
    """An error answered the way Cloudinary does: a status and `{"error": {"message": ...}}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Asset:
    public_id: str
    resource_type: str
    format: str
    path: Path
    version: int
    bytes: int
    etag: str          # md5 hex, like Cloudinary's
    sha256: str        # content address for the derived-file cache
    probe: dict = field(default_factory=dict)
    original_filename: str = ""
    created_at: str = ""


@dataclass
class Faults:
    """Switches a test flips; each is consumed as requests hit the matching route."""

    drop_after: int | None = None   # delivery: close the connection after this many body bytes
    drop_times: int = 0
    fail: dict = field(default_factory=dict)      # route -> [status, remaining, body kind]
    latency: dict = field(default_factory=dict)   # route -> seconds before answering
    throttle_bps: int | None = None               # delivery body rate


def ffprobe(path: Path) -> dict | None:
    """ffprobe's JSON for `path`, or None when ffmpeg cannot read it."""
    proc = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                           "-show_streams", str(path)], capture_output=True, timeout=60)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or b"{}")
    return data if data.get("streams") else None


def _display_dims(probe: dict) -> tuple[int, int] | None:
    """Width/height as a player shows them: rotation metadata (90/270) swaps them."""
    for s in probe.get("streams", []):
        if s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic") != 1:
            w, h = int(s["width"]), int(s["height"])
            rot = int(s.get("tags", {}).get("rotate", 0) or 0)
            for sd in s.get("side_data_list", []):
                rot = int(sd.get("rotation", rot) or rot)
            return (h, w) if abs(rot) % 180 == 90 else (w, h)
    return None


def _stream(probe: dict, kind: str) -> dict:
    return next((s for s in probe.get("streams", []) if s.get("codec_type") == kind), {})


def parse_multipart(mm: mmap.mmap, boundary: bytes):
    """Yield (name, filename, start, end) for each part of a multipart body held in `mm`.

    The body was streamed to a file and mapped, so a large file part is never copied into
    memory here: callers slice `mm[start:end]` in blocks."""
    delim = b"--" + boundary
    pos = mm.find(delim)
    while pos >= 0:
        pos += len(delim)
        if mm[pos:pos + 2] == b"--":
            return
        head_end = mm.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise ApiError(400, "Malformed multipart body")
        headers = mm[pos:head_end].decode("utf-8", "replace")
        start = head_end + 4
        end = mm.find(b"\r\n" + delim, start)
        if end < 0:
            raise ApiError(400, "Malformed multipart body")
        disp = next((line for line in headers.split("\r\n")
                     if line.lower().startswith("content-disposition")), "")
        name = re.search(r'\bname="([^"]*)"', disp)
        filename = re.search(r'\bfilename="([^"]*)"', disp)
        yield (name.group(1) if name else "", filename.group(1) if filename else None, start, end)
        pos = end + 2


def string_to_sign(params: dict, version: int = 2) -> str:
    """Cloudinary's string to sign (SDK `utils.api_string_to_sign`): version 2 escapes `&`."""
    parts = []
    for k, v in params.items():
        if k in UNSIGNED_PARAMS or v in ("", None):
            continue
        s = f"{k}={','.join(v) if isinstance(v, list) else v}"
        parts.append(s.replace("&", "%26") if version >= 2 else s)
    return "&".join(sorted(parts))


class CloudinaryEmulator:
    """The server plus its state. Start it once per session; `reset()` between tests."""

    def __init__(self, root: Path | None = None, cloud_name: str = DEFAULT_CLOUD_NAME,
                 api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET,
                 tls: tuple[str | os.PathLike, str | os.PathLike] | None = None,
                 port: int = 0, tls_port: int = 0) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="lectern-cloudinary-"))
        self.tls = tls  # (certfile, keyfile): also serve https on a second port
        self._want_port, self._want_tls_port = port, tls_port  # 0: any free port
        self.log_requests = False  # one line per request on stderr (the process's log)
        self._tls_server: ThreadingHTTPServer | None = None
        self.cloud_name, self.api_key, self.api_secret = cloud_name, api_key, api_secret
        self._lock = threading.RLock()
        self._derive_locks: dict[str, threading.Lock] = {}
        self._last_version = 0
        self._server: ThreadingHTTPServer | None = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "CloudinaryEmulator":
        emulator = self

        class Handler(_Handler):
            emu = emulator

        ctx = None
        if self.tls:  # first: a bad certificate fails before anything listens
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*(str(p) for p in self.tls))
        self._server = ThreadingHTTPServer(("127.0.0.1", self._want_port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="cloudinary-emulator",
                         daemon=True).start()
        if ctx:
            self._tls_server = _TlsServer(("127.0.0.1", self._want_tls_port), Handler, ctx)
            threading.Thread(target=self._tls_server.serve_forever, name="cloudinary-emulator-tls",
                             daemon=True).start()
        return self

    def stop(self) -> None:
        if self._tls_server:
            self._tls_server.shutdown()
            self._tls_server.server_close()
            self._tls_server = None
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget assets, uploads in progress, faults and counters. Derived renditions stay
        cached: they are keyed by the source's content, so they can never be stale."""
        with self._lock:
            self._generation = getattr(self, "_generation", 0) + 1  # see _Handler._current
            self.assets: dict[tuple[str, str], Asset] = {}
            self._chunks: dict[str, dict] = {}
            self.faults = Faults()
            self.uploads: list[dict] = []        # every finished upload: params + result
            self.requests: list[dict] = []       # method, path, route, status, range, bytes
            self.bytes_served = 0                # delivery body bytes written to clients
            self.bytes_received = 0              # upload request bytes read from clients
            for sub in ("assets", "chunks", "incoming"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / sub).mkdir(parents=True)
            (self.root / "derived").mkdir(exist_ok=True)

    # -- addresses ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server, "emulator not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_port(self) -> int:
        assert self._tls_server, "emulator not started with tls=(certfile, keyfile)"
        return self._tls_server.server_address[1]

    @property
    def https_base_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def cloudinary_url(self) -> str:
        """The CLOUDINARY_URL that points the SDK's upload API at this server."""
        return (f"cloudinary://{self.api_key}:{self.api_secret}@{self.cloud_name}"
                f"?upload_prefix={self.base_url}")

    def delivery_url(self, public_id: str, transformation: str | None = None, *,
                     resource_type: str = "video", format: str | None = "mp4",
                     version: int | None = None, sign_url: bool = False,
                     secure: bool | None = None) -> str:
        """The emulator's equivalent of `https://res.cloudinary.com/<cloud>/<rt>/upload/...`,
        built by the SDK itself (a `cname` with `secure=False` yields `http://<cname>/<cloud>/`),
        so the layout (version, signature segment) is exactly what real code would produce.
        `secure` (default: whether the emulator has a TLS listener) gives the https URL."""
        import cloudinary.utils

        if secure is None:
            secure = self._tls_server is not None

        url, _ = cloudinary.utils.cloudinary_url(
            public_id, resource_type=resource_type, type="upload", format=format,
            version=version, raw_transformation=transformation, sign_url=sign_url,
            cloud_name=self.cloud_name, api_secret=self.api_secret, secure=False,
            cname=f"127.0.0.1:{self.port}", private_cdn=False, secure_distribution=None,
            cdn_subdomain=False, force_version=version is not None)
        if secure:  # the same path on the https listener
            url = self.https_base_url + url[len(self.base_url):]
        return url

    def secure_url_for(self, public_id: str, **kw) -> str:
        """What an upload answer's `secure_url` holds for this asset (version included)."""
        asset = self.asset(public_id, kw.pop("resource_type", "video"))
        return self.delivery_url(asset.public_id, resource_type=asset.resource_type,
                                 format=None if asset.resource_type == "raw" else asset.format,
                                 version=asset.version, **kw)

    # -- assets ------------------------------------------------------------------------------
    def asset(self, public_id: str, resource_type: str = "video") -> Asset:
        return self.assets[(resource_type, public_id)]

    def put_asset(self, src: str | os.PathLike, public_id: str, resource_type: str = "video",
                  format: str | None = None) -> dict:
        """Seed an asset as if the platform's API had uploaded it (no validation: a test may
        well want a broken "raw upload"). Returns the upload answer."""
        src = Path(src)
        tmp = self.root / "incoming" / uuid.uuid4().hex
        shutil.copyfile(src, tmp)
        fmt = format or src.suffix.lstrip(".").lower() or "bin"
        return self._put_file(tmp, public_id, resource_type, fmt, src.stem)

    def _put_file(self, tmp: Path, public_id: str, resource_type: str, fmt: str,
                  original_filename: str) -> dict:
        """`put_asset` for a file already in `incoming/` (moved into place, never refused)."""
        try:
            asset = self._store(tmp, public_id, resource_type, fmt, original_filename, probe=True)
        finally:
            tmp.unlink(missing_ok=True)  # still there only when storing failed
        return self._answer(asset)

    def _next_version(self) -> int:
        with self._lock:
            self._last_version = max(int(time.time()), self._last_version + 1)
            return self._last_version

    def _store(self, tmp: Path, public_id: str, resource_type: str, fmt: str,
               original_filename: str, probe: bool | dict | None) -> Asset:
        md5, sha = hashlib.md5(), hashlib.sha256()
        with open(tmp, "rb") as f:
            while block := f.read(1 << 20):
                md5.update(block)
                sha.update(block)
        if probe is True:
            probe = ffprobe(tmp) if resource_type != "raw" else None
        dest = self.root / "assets" / resource_type / hashlib.sha1(public_id.encode()).hexdigest()
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        asset = Asset(public_id, resource_type, fmt, dest, self._next_version(),
                      dest.stat().st_size, md5.hexdigest(), sha.hexdigest(), probe or {},
                      original_filename, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self._lock:
            self.assets[(resource_type, public_id)] = asset
        return asset

    def _answer(self, a: Asset, **extra) -> dict:
        """An upload answer shaped like the real one (the fields code commonly reads)."""
        url = self.delivery_url(a.public_id, resource_type=a.resource_type, version=a.version,
                                format=None if a.resource_type == "raw" else a.format, secure=False)
        secure_url = self.delivery_url(a.public_id, resource_type=a.resource_type, version=a.version,
                                       format=None if a.resource_type == "raw" else a.format)
        out = {
            "asset_id": hashlib.md5(f"{a.resource_type}/{a.public_id}".encode()).hexdigest(),
            "public_id": a.public_id, "version": a.version,
            "version_id": hashlib.md5(f"{a.public_id}{a.version}".encode()).hexdigest(),
            "signature": hashlib.sha1(f"public_id={a.public_id}&version={a.version}"
                                      f"{self.api_secret}".encode()).hexdigest(),
            "format": a.format, "resource_type": a.resource_type, "created_at": a.created_at,
            "tags": [], "bytes": a.bytes, "type": "upload", "etag": a.etag, "placeholder": False,
            "url": url, "secure_url": secure_url, "folder": a.public_id.rpartition("/")[0],
            "original_filename": a.original_filename, "api_key": self.api_key,
        }
        if a.resource_type == "raw":
            del out["format"]
        dims = _display_dims(a.probe)
        if dims:
            out["width"], out["height"] = dims
        if a.probe and a.resource_type == "video":
            v, au, fmt = _stream(a.probe, "video"), _stream(a.probe, "audio"), a.probe["format"]
            out.update(duration=float(fmt.get("duration", 0) or 0),
                       bit_rate=int(fmt.get("bit_rate", 0) or 0), is_audio=not v, pages=0,
                       rotation=int(v.get("tags", {}).get("rotate", 0) or 0))
            if v:
                num, _, den = v.get("avg_frame_rate", "0/1").partition("/")
                out["frame_rate"] = float(num) / float(den or 1) if float(den or 1) else 0.0
                out["video"] = {"pix_format": v.get("pix_fmt"), "codec": v.get("codec_name"),
                                "profile": v.get("profile"), "level": v.get("level"),
                                "bit_rate": v.get("bit_rate")}
            if au:
                out["audio"] = {"codec": au.get("codec_name"), "bit_rate": au.get("bit_rate"),
                                "frequency": int(au.get("sample_rate", 0) or 0),
                                "channels": au.get("channels")}
        out.update(extra)
        return out

    # -- fault switches ----------------------------------------------------------------------
    def drop_connection_after(self, nbytes: int, times: int = 1) -> None:
        """The next `times` delivery responses are cut after `nbytes` body bytes (the socket
        is shut down: the client sees a premature EOF, as when a CDN edge drops it)."""
        with self._lock:
            self.faults.drop_after, self.faults.drop_times = nbytes, times

    def fail_next(self, times: int = 1, status: int = 503, route: str = "upload",
                  body: str = "json") -> None:
        """Answer the next `times` requests of `route` ("upload", "delivery" or "any") with
        `status`; `body="html"` mimics a load balancer's page instead of Cloudinary's JSON."""
        with self._lock:
            self.faults.fail[route] = [status, times, body]

    def set_latency(self, seconds: float, route: str = "any") -> None:
        with self._lock:
            self.faults.latency[route] = seconds

    def throttle(self, bytes_per_second: int | None) -> None:
        """Slow delivery bodies down (for tests that must interrupt a download midway)."""
        with self._lock:
            self.faults.throttle_bps = bytes_per_second

    def clear_faults(self) -> None:
        """Switch every fault off (assets, uploads and counters are kept)."""
        with self._lock:
            self.faults = Faults()

    def apply_faults(self, spec: dict) -> None:
        """Set faults from a control-API body (see `_parse_faults`); all or nothing."""
        actions = _parse_faults(spec)
        with self._lock:
            for name, kwargs in actions:
                getattr(self, name)(**kwargs)

    def request_count(self, route: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if route in (None, r["route"]))

    def temp_files(self) -> list[str]:
        """Files of unfinished work still on disk (relative to `root`): request bodies and
        copies in `incoming/`, partial chunked uploads in `chunks/`, half-written renditions
        in `derived/`. Empty once every upload has finished, whatever its outcome."""
        found = [p for sub in ("incoming", "chunks") for p in (self.root / sub).rglob("*")
                 if p.is_file()]
        found += [p for p in (self.root / "derived").glob("*.tmp.*") if p.is_file()]
        return sorted(str(p.relative_to(self.root)) for p in found)

    def stats(self) -> dict:
        """Counters and state for `GET /_emulator/stats` (JSON-serialisable)."""
        with self._lock:
            by_route: dict[str, int] = {"upload": 0, "delivery": 0}
            by_status: dict[str, dict[str, int]] = {}
            for r in self.requests:
                by_route[r["route"]] = by_route.get(r["route"], 0) + 1
                per = by_status.setdefault(r["route"], {})
                per[str(r["status"])] = per.get(str(r["status"]), 0) + 1
            chunked = {uid: {"bytes": sum(b - a for a, b in _merge(st["ranges"])),
                             "total": st["total"], "parts": st["parts"]}
                       for uid, st in self._chunks.items()}
            f = self.faults
            return {
                "requests": by_route, "requests_total": len(self.requests),
                "requests_by_status": by_status,
                "bytes_served": self.bytes_served, "bytes_received": self.bytes_received,
                "uploads_finished": len(self.uploads), "uploads_in_progress": len(chunked),
                "chunked_uploads": chunked, "assets": len(self.assets),
                "temp_files": self.temp_files(),
                "faults": {"drop_connection_after": {"nbytes": f.drop_after, "times": f.drop_times},
                           "fail_next": {route: {"status": v[0], "times": v[1], "body": v[2]}
                                         for route, v in f.fail.items()},
                           "latency": dict(f.latency), "throttle": f.throttle_bps},
            }

    def _take_failure(self, route: str):
        with self._lock:
            for key in (route, "any"):
                f = self.faults.fail.get(key)
                if f and f[1] > 0:
                    f[1] -= 1
                    return f[0], f[2]
        return None

    def _take_drop(self) -> int | None:
        with self._lock:
            if self.faults.drop_after is not None and self.faults.drop_times > 0:
                self.faults.drop_times -= 1
                return self.faults.drop_after
        return None

    # -- upload API --------------------------------------------------------------------------
    def handle_upload(self, cloud: str, resource_type: str, action: str, fields: dict,
                      file_part, headers) -> dict:
        """Check cloud, key, signature and timestamp, then store (or delete) the asset."""
        if cloud != self.cloud_name:
            raise ApiError(401, f"Invalid cloud_name {cloud}")
        if resource_type not in ("image", "video", "raw", "auto"):
            raise ApiError(404, f"Invalid resource type {resource_type}")
        if fields.get("api_key") != self.api_key:
            raise ApiError(401, "Must supply api_key" if not fields.get("api_key")
                           else f"Unknown API key {fields.get('api_key')}")
        self._check_signature(fields)
        if action == "destroy":
            with self._lock:
                gone = self.assets.pop((resource_type, fields.get("public_id", "")), None)
            return {"result": "ok" if gone else "not found"}
        if action != "upload":
            raise ApiError(404, f"Unsupported action {action} (emulator)")
        if file_part is None:
            raise ApiError(400, "Missing required parameter - file")
        filename, mm, start, end = file_part
        content_range, upload_id = headers.get("Content-Range"), headers.get("X-Unique-Upload-Id")
        if content_range and upload_id:
            return self._chunk(resource_type, fields, filename, mm, start, end, content_range, upload_id)
        tmp = self.root / "incoming" / uuid.uuid4().hex
        with open(tmp, "wb") as out:
            for pos in range(start, end, 1 << 20):
                out.write(mm[pos:min(end, pos + (1 << 20))])
        return self._finish(resource_type, fields, filename, tmp)

    def _check_signature(self, fields: dict) -> None:
        sig = fields.get("signature")
        if not sig:
            raise ApiError(401, "Missing required parameter - signature")
        algo = hashlib.sha256 if len(sig) == 64 else hashlib.sha1
        candidates = {string_to_sign(fields, v) for v in (1, 2)}
        if not any(algo((s + self.api_secret).encode()).hexdigest() == sig for s in candidates):
            raise ApiError(401, f"Invalid Signature {sig}. String to sign - "
                                f"'{string_to_sign(fields)}'.")
        ts = int(fields.get("timestamp") or 0)
        if abs(time.time() - ts) > STALE_AFTER_S:
            raise ApiError(400, f"Stale request - reported time is {ts} which is more than "
                                f"1 hour ago")

    def _chunk(self, resource_type, fields, filename, mm, start, end, content_range, upload_id):
        """One part of `upload_large`: written at its offset; the last missing byte finishes."""
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range.strip())
        if not m or int(m[2]) - int(m[1]) + 1 != end - start or int(m[2]) >= int(m[3]):
            raise ApiError(400, f"Invalid Content-Range {content_range}")
        first, total = int(m[1]), int(m[3])
        with self._lock:
            state = self._chunks.setdefault(upload_id, {
                "path": self.root / "chunks" / hashlib.sha1(upload_id.encode()).hexdigest(),
                "ranges": set(), "total": total, "fields": dict(fields), "parts": 0})
            state["path"].touch()
            with open(state["path"], "r+b") as out:
                out.seek(first)
                for pos in range(start, end, 1 << 20):
                    out.write(mm[pos:min(end, pos + (1 << 20))])
            state["ranges"].add((first, int(m[2]) + 1))
            state["parts"] += 1
            covered = sum(b - a for a, b in _merge(state["ranges"]))
            if covered < total:
                pid = state["fields"].get("public_id") or state.setdefault(
                    "public_id", _random_id())
                return {"done": False, "public_id": pid, "upload_id": upload_id, "bytes": covered}
            del self._chunks[upload_id]
        merged = {**state["fields"], **{k: v for k, v in fields.items() if v}}
        if "public_id" in state and not state["fields"].get("public_id"):
            merged["public_id"] = state["public_id"]
        return self._finish(resource_type, merged, filename, state["path"], parts=state["parts"])

    def _finish(self, resource_type: str, fields: dict, filename: str | None, tmp: Path,
                parts: int = 1) -> dict:
        stem, _, ext = (Path(filename).name if filename else "").rpartition(".")
        stem = stem or (filename or "file")
        probe = ffprobe(tmp) if resource_type != "raw" else None
        if resource_type == "auto":
            v = probe and _stream(probe, "video")
            still = v and v.get("codec_name") in ("png", "mjpeg", "webp", "gif", "bmp", "tiff")
            resource_type = "image" if still else "video" if probe else "raw"
        if resource_type in ("video", "image") and not probe:
            tmp.unlink(missing_ok=True)
            raise ApiError(400, "Unsupported video format or file" if resource_type == "video"
                           else "Invalid image file")
        fmt = ext.lower() if ext else (probe or {}).get("format", {}).get("format_name", "bin").split(",")[0]
        public_id = fields.get("public_id")
        if not public_id:
            if str(fields.get("use_filename")).lower() in ("1", "true"):
                public_id = stem
                if str(fields.get("unique_filename", "true")).lower() not in ("0", "false"):
                    public_id += "_" + _random_id(6)
            else:
                public_id = _random_id()
            if resource_type == "raw" and ext:  # raw public ids carry their extension
                public_id += "." + ext
        if fields.get("folder"):
            public_id = fields["folder"].strip("/") + "/" + public_id
        existing = self.assets.get((resource_type, public_id))
        overwrite = str(fields.get("overwrite", "true")).lower() not in ("0", "false")
        if existing and not overwrite:
            tmp.unlink(missing_ok=True)
            result = self._answer(existing, existing=True)
        else:
            result = self._answer(self._store(tmp, public_id, resource_type, fmt, stem, probe),
                                  overwritten=bool(existing) or None)
            result = {k: v for k, v in result.items() if v is not None}
        with self._lock:
            self.uploads.append({"params": dict(fields), "parts": parts, "result": result})
        return result

    # -- delivery ----------------------------------------------------------------------------
    def resolve(self, path: str) -> tuple[Asset, dict, str, Path]:
        """Map a delivery path to (asset, transformation, ext, file to serve)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) < 4 or parts[0] != self.cloud_name or parts[2] != "upload":
            raise ApiError(404, "Resource not found")
        resource_type, rest = parts[1], parts[3:]
        signature = rest.pop(0) if re.fullmatch(r"s--[A-Za-z0-9_-]{8,32}--", rest[0]) else None
        transforms = []
        while len(rest) > 1 and TRANSFORMATION_RE.match(rest[0]):
            transforms.append(rest.pop(0))
        if len(rest) > 1 and re.fullmatch(r"v\d+", rest[0]):
            rest.pop(0)
        source = "/".join(rest)
        if signature:
            to_sign = "/".join(transforms + [source])
            digest = (hashlib.sha256 if len(signature) > 14 else hashlib.sha1)(
                (to_sign + self.api_secret).encode()).digest()
            expect = base64.urlsafe_b64encode(digest).decode()[:len(signature) - 5]
            if signature[3:-2] != expect:
                raise ApiError(401, "Invalid signature")
        if resource_type == "raw":
            public_id, ext = source, source.rpartition(".")[2]
        else:
            public_id, dot, ext = source.rpartition(".")
            if not dot:
                public_id, ext = source, ""
        asset = self.assets.get((resource_type, public_id))
        if asset is None:
            raise ApiError(404, f"Resource not found - {public_id}")
        params = {}
        for comp in transforms:
            for item in comp.split(","):
                key, _, value = item.partition("_")
                if key not in ("w", "h", "c", "q", "f"):
                    raise ApiError(400, f"Invalid transformation parameter - {key}")
                params[key] = value
        return asset, params, ext or asset.format, self._derive(asset, params, ext or asset.format)

    def _derive(self, asset: Asset, t: dict, ext: str) -> Path:
        """The file to serve: the original, or a cached ffmpeg rendition of it."""
        crop = t.get("c", "scale")
        if crop not in ("scale", "limit", "fit") or t.get("f", "auto") not in ("auto", ext):
            raise ApiError(400, f"Unsupported transformation (emulator): {t}")
        try:
            w, h = (int(t[k]) if k in t else None for k in ("w", "h"))
        except ValueError:
            raise ApiError(400, f"Invalid width or height - {t}") from None
        dims = _display_dims(asset.probe)
        if asset.resource_type == "raw" or (not (w or h) and ext == asset.format):
            return asset.path
        if not dims:
            raise ApiError(400, "Video is invalid or has no video stream")
        sw, sh = dims
        if w and h and crop == "scale":
            tw, th = w, h
        else:
            s = min(w / sw if w else float("inf"), h / sh if h else float("inf"))
            if crop == "limit":
                s = min(s, 1.0)
            tw, th = sw * s, sh * s
        tw, th = max(2, round(tw / 2) * 2), max(2, round(th / 2) * 2)
        if (tw, th) == (sw, sh) and ext == asset.format:
            return asset.path
        key = hashlib.sha1(f"{asset.sha256}:{tw}x{th}:{ext}".encode()).hexdigest()
        out = self.root / "derived" / f"{key}.{ext}"
        with self._lock:
            lock = self._derive_locks.setdefault(key, threading.Lock())
        with lock:
            if not out.exists():
                tmp = out.with_name(f"{key}.tmp.{ext}")
                audio = ["-c:a", "copy"] if _stream(asset.probe, "audio").get("codec_name") == "aac" \
                    else ["-c:a", "aac", "-b:a", "128k"]
                proc = subprocess.run(
                    ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(asset.path),
                     "-map", "0:v:0", "-map", "0:a:0?", "-vf", f"scale={tw}:{th}",
                     "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                     "-pix_fmt", "yuv420p", *audio, "-movflags", "+faststart", str(tmp)],
                    capture_output=True, timeout=600)
                if proc.returncode != 0:
                    tmp.unlink(missing_ok=True)
                    raise ApiError(400, "Video is invalid: " + proc.stderr.decode()[-200:].strip())
                os.replace(tmp, out)
        return out


def _random_id(n: int = 20) -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def _merge(ranges):
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _parse_faults(spec) -> list[tuple[str, dict]]:
    """Validate a `POST /_emulator/faults` body into (emulator method, kwargs) calls, `clear`
    first. Raises ValueError with a one-line reason."""
    def num(d: dict, key: str, kind, default=None, minimum=0, nullable=False):
        v = d.get(key, default)
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) \
                or v < minimum:
            raise ValueError(f"{key} must be {'a number' if kind is float else 'an integer'} "
                             f">= {minimum}, not {v!r}")
        return v

    def obj(name: str, allowed: set[str]) -> dict:
        d = spec[name]
        if not isinstance(d, dict):
            raise ValueError(f"{name} must be an object")
        extra = set(d) - allowed
        if extra:
            raise ValueError(f"{name}: unknown field(s) {', '.join(sorted(extra))}")
        return d

    if not isinstance(spec, dict) or not spec:
        raise ValueError("expected a JSON object with one or more of: drop_connection_after, "
                         "fail_next, latency, throttle, clear")
    unknown = set(spec) - {"drop_connection_after", "fail_next", "latency", "throttle", "clear"}
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
    calls: list[tuple[str, dict]] = []
    if "clear" in spec:
        if spec["clear"] is not True:
            raise ValueError("clear must be true")
        calls.append(("clear_faults", {}))
    if "drop_connection_after" in spec:
        d = obj("drop_connection_after", {"nbytes", "times"})
        calls.append(("drop_connection_after", {"nbytes": num(d, "nbytes", int),
                                                "times": num(d, "times", int, 1)}))
    if "fail_next" in spec:
        d = obj("fail_next", {"times", "status", "route", "body"})
        route, body = d.get("route", "upload"), d.get("body", "json")
        if not isinstance(route, str) or not route:
            raise ValueError(f"route must be a route name (upload, delivery, any), not {route!r}")
        if body not in ("json", "html"):
            raise ValueError(f"body must be json or html, not {body!r}")
        status = num(d, "status", int, 503, minimum=100)
        if status > 599:
            raise ValueError(f"status must be an HTTP status, not {status}")
        calls.append(("fail_next", {"times": num(d, "times", int, 1), "status": status,
                                    "route": route, "body": body}))
    if "latency" in spec:
        d = obj("latency", {"seconds", "route"})
        route = d.get("route", "any")
        if not isinstance(route, str) or not route:
            raise ValueError(f"route must be a route name (upload, delivery, any), not {route!r}")
        calls.append(("set_latency", {"seconds": num(d, "seconds", float), "route": route}))
    if "throttle" in spec:
        d = obj("throttle", {"bytes_per_second"})
        if "bytes_per_second" not in d:
            raise ValueError("throttle needs bytes_per_second (an integer, or null for none)")
        calls.append(("throttle", {"bytes_per_second": num(d, "bytes_per_second", int,
                                                           minimum=1, nullable=True)}))
    return calls


class _TlsServer(ThreadingHTTPServer):
    """The https listener: the TLS handshake runs in the request's own thread (a client that
    stalls or refuses the certificate never blocks the accept loop)."""

    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        request.settimeout(30)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):  # e.g. the client does not trust the test CA
            return
        try:
            conn.settimeout(None)
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.close()
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as urllib3 (the SDK's client) expects."""

    emu: CloudinaryEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the request log is `emu.requests`
        pass

    def parse_request(self) -> bool:
        self._gen = self.emu._generation  # which reset() this request belongs to
        return super().parse_request()

    def _current(self) -> bool:
        """Whether no reset() happened since this request began (call with the lock held)."""
        return self._gen == self.emu._generation

    def _record(self, route: str, status: int, sent: int = 0, log: bool = True) -> dict:
        """Log the request. Called *before* the answer (or its body) reaches the client, so a
        client that has its answer always finds it counted; the body's `bytes` grow as it
        is written (see `_body`)."""
        entry = {"method": self.command, "path": self.path, "route": route, "status": status,
                 "range": self.headers.get("Range"), "bytes": sent}
        with self.emu._lock:
            if self._current():
                self.emu.requests.append(entry)
        if log:
            self._log(route, status, sent)
        return entry

    def _log(self, route: str, status: int, sent: int = 0) -> None:
        if self.emu.log_requests:
            rng = self.headers.get("Range")
            print(f"{time.strftime('%H:%M:%S')} {self.command} {self.path} {route} {status} "
                  f"{sent}B{' ' + rng if rng else ''}", file=sys.stderr, flush=True)

    # -- control API (plain-http listener only; never counted, never faulted) ----------------
    def _control(self) -> bool:
        """Answer a `/_emulator/...` request; False when the path is not one."""
        path = self.path.split("?")[0]
        if not (path == "/_emulator" or path.startswith("/_emulator/")):
            return False
        if isinstance(self.server, _TlsServer):
            self._drain()
            self._send(404, b'{"error": {"message": "the control API is on the plain-http '
                            b'listener only"}}')
            return True
        try:
            status, result = self._control_route(path)
        except ValueError as e:
            status, result = 400, {"error": {"message": " ".join(str(e).split())}}
        except ApiError as e:
            status, result = e.status, {"error": {"message": e.message}}
        self._send(status, json.dumps(result).encode() + b"\n")
        self._log("control", status)
        return True

    def _control_route(self, path: str) -> tuple[int, dict]:
        emu = self.emu
        if path == "/_emulator/stats":
            self._drain()
            if self.command not in ("GET", "HEAD"):
                raise ApiError(405, "use GET")
            return 200, emu.stats()
        if path == "/_emulator/faults":
            raw = self._drain(keep=True)
            if self.command in ("GET", "HEAD"):
                return 200, emu.stats()["faults"]
            if self.command != "POST":
                raise ApiError(405, "use POST")
            try:
                spec = json.loads(raw or b"null")
            except ValueError as e:
                raise ValueError(f"body is not JSON: {e}") from None
            emu.apply_faults(spec)
            return 200, {"ok": True, "faults": emu.stats()["faults"]}
        m = re.fullmatch(r"/_emulator/assets/([a-z]+)/(.+)", path)
        if m:
            if self.command != "PUT":
                self._drain()
                raise ApiError(405, "use PUT with the file's bytes as the body")
            resource_type, public_id = m[1], unquote(m[2]).strip("/")
            if resource_type not in ("image", "video", "raw"):
                self._drain()
                raise ApiError(400, f"Invalid resource type {resource_type}")
            query = parse_qs(urlsplit(self.path).query)
            filename = query.get("filename", [""])[0]
            fmt = query.get("format", [""])[0] or Path(filename).suffix.lstrip(".").lower() or (
                public_id.rpartition(".")[2] if resource_type == "raw" and "." in public_id
                else "mp4" if resource_type == "video" else "bin")
            tmp = emu.root / "incoming" / uuid.uuid4().hex
            try:
                if not self._drain(into=tmp):
                    raise ApiError(400, "Empty body")
                return 200, emu._put_file(tmp, public_id, resource_type, fmt,
                                          Path(filename).stem or public_id.rpartition("/")[2])
            finally:
                tmp.unlink(missing_ok=True)
        self._drain()
        raise ApiError(404, f"no control route {path} (emulator): /_emulator/faults, "
                            f"/_emulator/stats, /_emulator/assets/<resource_type>/<public_id>")

    def _drain(self, keep: bool = False, into: Path | None = None):
        """Read the request body (Content-Length; none without it): discard it, return it
        (`keep`) or write it to `into` (returns the byte count)."""
        remaining = int(self.headers.get("Content-Length") or 0)
        total, kept = remaining, []
        out = open(into, "wb") if into else None
        try:
            while remaining > 0:
                block = self.rfile.read(min(remaining, 1 << 20))
                if not block:
                    self.close_connection = True
                    raise ApiError(400, "Body shorter than Content-Length")
                remaining -= len(block)
                if out:
                    out.write(block)
                elif keep:
                    kept.append(block)
        finally:
            if out:
                out.close()
        return b"".join(kept) if keep else total

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _faults(self, route: str) -> bool:
        """Apply latency, then an injected failure; True when the request was answered."""
        delay = self.emu.faults.latency.get(route, self.emu.faults.latency.get("any", 0))
        if delay:
            time.sleep(delay)
        failure = self.emu._take_failure(route)
        if failure:
            status, kind = failure
            body = (b"<html><body><h1>%d Service Unavailable</h1></body></html>" % status
                    if kind == "html" else json.dumps({"error": {"message": "Injected failure"}}).encode())
            self._record(route, status)
            self._send(status, body, "text/html" if kind == "html" else "application/json",
                       {"X-Cld-Error": "Injected failure"})
            return True
        return False

    # -- upload API --------------------------------------------------------------------------
    def do_POST(self) -> None:
        if self._control():
            return
        m = re.fullmatch(r"/v1_1/([^/]+)/([^/]+)/([a-z_]+)/?", self.path.split("?")[0])
        length = int(self.headers.get("Content-Length") or -1)
        if length < 0:
            self.close_connection = True
            return self._send(411, b'{"error": {"message": "Content-Length required"}}')
        body = self.emu.root / "incoming" / (uuid.uuid4().hex + ".body")
        try:
            with open(body, "w+b") as f:
                # unlinked at once (the open file stays usable): no response, whatever path it
                # takes, can reach the client while the spool file is still visible on disk
                body.unlink()
                remaining = length
                while remaining:
                    block = self.rfile.read(min(remaining, 1 << 20))
                    if not block:
                        self.close_connection = True
                        return
                    f.write(block)
                    remaining -= len(block)
                f.flush()
                with self.emu._lock:
                    if self._current():
                        self.emu.bytes_received += length
                if self._faults("upload"):
                    return
                try:
                    if not m or not length:
                        raise ApiError(404 if not m else 400, "Not found" if not m else "Empty body")
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        fields, file_part = self._form(mm)
                        status = 200
                        result = self.emu.handle_upload(*m.groups(), fields, file_part, self.headers)
                except ApiError as e:
                    status, result = e.status, {"error": {"message": e.message}}
                self._record("upload", status)
                self._send(status, json.dumps(result).encode())
        finally:
            body.unlink(missing_ok=True)

    def _form(self, mm):
        ctype = self.headers.get("Content-Type", "")
        b = re.search(r'boundary="?([^";]+)"?', ctype)
        if not ctype.startswith("multipart/form-data") or not b:
            raise ApiError(400, "Expected a multipart/form-data body (emulator)")
        fields, file_part, lists = {}, None, {}
        for name, filename, start, end in parse_multipart(mm, b.group(1).encode()):
            if name == "file" and filename is not None:
                file_part = (filename, mm, start, end)
            elif name.endswith("[]"):
                lists.setdefault(name[:-2], []).append(mm[start:end].decode())
            else:
                fields[name] = mm[start:end].decode()
        if "file" in fields:
            raise ApiError(400, "Remote URL uploads are not supported by the emulator")
        return {**fields, **lists}, file_part

    # -- delivery ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_OPTIONS(self) -> None:
        """CORS preflight for delivery URLs (a player's Range requests from another origin)."""
        self._drain()
        self._send(204, b"", "text/plain", {**CORS_HEADERS, "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                            "Access-Control-Allow-Headers": "Range, If-Range",
                                            "Access-Control-Max-Age": "600"})
        self._log("other", 204)

    def do_PUT(self) -> None:
        if not self._control():
            self._drain()
            self._send(405, b'{"error": {"message": "Method not allowed"}}')
            self._log("other", 405)

    def do_GET(self) -> None:
        if self._control():
            return
        if self._faults("delivery"):
            return
        try:
            asset, _, ext, path = self.emu.resolve(self.path.split("?")[0])
        except ApiError as e:
            self._record("delivery", e.status)
            return self._send(e.status, b"", "text/plain", {"X-Cld-Error": e.message})
        size = path.stat().st_size
        etag = '"%s"' % hashlib.md5(f"{path.name}:{size}:{path.stat().st_mtime_ns}".encode()).hexdigest()
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and self.headers.get("If-Range") not in (None, etag):
            rng = None
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m and m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            elif m and m[2]:
                start = max(0, size - int(m[2]))
            if not m or start >= size or start > end:
                self._record("delivery", 416)
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", content_type(ext))
        for k, v in CORS_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        entry = self._record("delivery", status, log=False)
        self.end_headers()
        if self.command == "GET":
            self._body(path, start, end + 1, entry)
        self._log("delivery", status, entry["bytes"])

    def _body(self, path: Path, start: int, stop: int, entry: dict) -> int:
        """Write [start, stop) of `path`, honouring the drop and throttle switches. Each block
        is counted (`bytes_served`, the request's `bytes`) before it is written, and taken
        back if the write fails: the counters are final by the time the client has it all."""
        drop_at = self.emu._take_drop()
        bps = self.emu.faults.throttle_bps
        sent, block = 0, 16384 if bps else 1 << 16
        with open(path, "rb") as f:
            f.seek(start)
            while start + sent < stop:
                n = min(block, stop - start - sent)
                if drop_at is not None:
                    n = min(n, drop_at - sent)
                data = f.read(n) if n > 0 else b""
                self._count(entry, len(data))
                try:
                    self.wfile.write(data)
                except OSError:
                    self._count(entry, -len(data))
                    self.close_connection = True
                    break
                sent += len(data)
                if drop_at is not None and sent >= drop_at:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    break
                if bps:
                    time.sleep(len(data) / bps)
        return sent


    def _count(self, entry: dict, n: int) -> None:
        with self.emu._lock:
            entry["bytes"] += n
            if self._current():
                self.emu.bytes_served += n


# -- as a process of its own, driven from another one -----------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Run the emulator until SIGTERM/SIGINT. Once listening, `--ready-file` receives (written
    to a temporary name, then renamed) `{"pid", "base_url", "https_base_url", "tls_port",
    "cloudinary_url", "port", "root"}`; it is removed again on a clean stop."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="cloudinary-emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="asset storage (default: a new temp dir)")
    parser.add_argument("--port", type=int, default=0, help="plain-http port (0: a free one)")
    parser.add_argument("--tls-cert", type=Path, help="certificate chain for the https listener")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    parser.add_argument("--tls-port", type=int, default=0, help="https port (0: a free one)")
    parser.add_argument("--cloud", default=DEFAULT_CLOUD_NAME, help="cloud name")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET)
    parser.add_argument("--ready-file", type=Path, help="JSON written once listening")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    emu = CloudinaryEmulator(root=args.root, cloud_name=args.cloud, api_key=args.api_key,
                             api_secret=args.api_secret, port=args.port, tls_port=args.tls_port,
                             tls=(args.tls_cert, args.tls_key) if args.tls_cert else None)
    emu.log_requests = not args.quiet
    emu.start()
    try:
        info = {"pid": os.getpid(), "base_url": emu.base_url,
                "https_base_url": emu.https_base_url if emu.tls else None,
                "tls_port": emu.tls_port if emu.tls else None,
                "cloudinary_url": emu.cloudinary_url, "port": emu.port, "root": str(emu.root)}
        print(f"cloudinary emulator pid {info['pid']}: upload API and control {emu.base_url}"
              + (f", https {info['https_base_url']}" if emu.tls else "")
              + f", storage {emu.root}", file=sys.stderr, flush=True)
        if args.ready_file:
            tmp = args.ready_file.with_name(f".{args.ready_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, args.ready_file)
        while not stop.wait(0.5):
            pass
        print("cloudinary emulator: stopping", file=sys.stderr, flush=True)
    finally:
        emu.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)


class ControlError(RuntimeError):
    """The control API answered an error (or did not answer)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message = status, message


class CloudinaryControl:
    """Client of an emulator's control API (`/_emulator/...` on its plain-http `base_url`),
    with urllib only. Mirrors the emulator's own fault switches."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        import urllib.request

        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        # loopback never goes through a proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body=None, headers: dict | None = None) -> dict:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base_url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                msg = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode("utf-8", "replace").strip() or e.reason
            raise ControlError(e.code, msg) from None
        except urllib.error.URLError as e:
            raise ControlError(None, f"{self.base_url}: {e.reason}") from None

    def faults(self, **spec) -> dict:
        """`POST /_emulator/faults` with `spec` as the body; returns the faults now set."""
        return self._call("POST", "/_emulator/faults", json.dumps(spec).encode(),
                          {"Content-Type": "application/json"})["faults"]

    def fail_next(self, times: int = 1, status: int = 503, route: str = "upload",
                  body: str = "json") -> None:
        self.faults(fail_next={"times": times, "status": status, "route": route, "body": body})

    def drop_connection_after(self, nbytes: int, times: int = 1) -> None:
        self.faults(drop_connection_after={"nbytes": nbytes, "times": times})

    def set_latency(self, seconds: float, route: str = "any") -> None:
        self.faults(latency={"seconds": seconds, "route": route})

    def throttle(self, bytes_per_second: int | None) -> None:
        self.faults(throttle={"bytes_per_second": bytes_per_second})

    def clear_faults(self) -> None:
        self.faults(clear=True)

    def stats(self) -> dict:
        return self._call("GET", "/_emulator/stats")

    def put_asset(self, path: str | os.PathLike, public_id: str, resource_type: str = "video",
                  format: str | None = None) -> dict:
        """Store `path` as `public_id` (no validation: random bytes make a fine "video");
        returns the upload answer, `secure_url` included."""
        from urllib.parse import quote, urlencode

        path = Path(path)
        query = {"filename": path.name, **({"format": format} if format else {})}
        with open(path, "rb") as f:
            return self._call("PUT", f"/_emulator/assets/{resource_type}/{quote(public_id)}?"
                              + urlencode(query), f,
                              {"Content-Length": str(path.stat().st_size),
                               "Content-Type": "application/octet-stream"})


class CloudinaryProcess:
    """The emulator as a child process (`main` above), controlled over HTTP.

        with CloudinaryProcess(tmp / "cloudinary", tls=(certs.cert, certs.key)) as cld:
            env["CLOUDINARY_URL"] = cld.cloudinary_url
            cld.control.fail_next(1)

    Its log (stdout and stderr, one line per request) goes to `log_path`, by default
    `<root>.log` next to `root`; the ready file is `<root>.ready.json` there too."""

    def __init__(self, root: str | os.PathLike,
                 tls: tuple[str | os.PathLike, str | os.PathLike] | None = None, *,
                 port: int = 0, tls_port: int = 0, cloud_name: str | None = None,
                 api_key: str | None = None, api_secret: str | None = None,
                 log_path: str | os.PathLike | None = None, ready_timeout: float = 30.0,
                 quiet: bool = False) -> None:
        self.root = Path(root).absolute()
        self.tls, self.port, self.tls_port_wanted = tls, port, tls_port
        self.cloud_name, self.api_key, self.api_secret = cloud_name, api_key, api_secret
        self.log_path = Path(log_path) if log_path else self.root.with_name(self.root.name + ".log")
        self.ready_file = self.root.with_name(self.root.name + ".ready.json")
        self.ready_timeout, self.quiet = ready_timeout, quiet
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.control: CloudinaryControl | None = None

    def argv(self) -> list[str]:
        from tests.standins.services import python_main

        args = ["--root", str(self.root), "--port", str(self.port),
                "--ready-file", str(self.ready_file)]
        if self.tls:
            args += ["--tls-cert", str(Path(self.tls[0]).absolute()),
                     "--tls-key", str(Path(self.tls[1]).absolute()),
                     "--tls-port", str(self.tls_port_wanted)]
        for flag, value in (("--cloud", self.cloud_name), ("--api-key", self.api_key),
                            ("--api-secret", self.api_secret)):
            if value is not None:
                args += [flag, value]
        if self.quiet:
            args.append("--quiet")
        return python_main(__name__ if __name__ != "__main__" else "tests.standins.cloudinary",
                           *args)

    def start(self) -> "CloudinaryProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            from tests.standins.services import spawn
            self.proc = spawn(self.argv(), cwd=self.root, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT)
        from tests.standins.services import wait_ready_file
        try:
            self.info = wait_ready_file(self.proc, self.ready_file, self.ready_timeout, "the Cloudinary emulator",
                                        lambda: f"log {self.log_path}:\n{self.log_tail()}")
        except RuntimeError:
            self.proc = None
            raise
        self.control = CloudinaryControl(self.base_url)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status (None: not running)."""
        from tests.standins.services import stop_process
        proc, self.proc = self.proc, None
        return stop_process(proc, grace=timeout)

    def log_tail(self, nbytes: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> "CloudinaryProcess":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.info["pid"]

    @property
    def base_url(self) -> str:
        return self.info["base_url"]

    @property
    def https_base_url(self) -> str | None:
        return self.info["https_base_url"]

    @property
    def tls_port(self) -> int | None:
        return self.info["tls_port"]

    @property
    def cloudinary_url(self) -> str:
        return self.info["cloudinary_url"]

    def delivery_url(self, public_id: str, transformation: str | None = None, *,
                     resource_type: str = "video", format: str | None = "mp4",
                     secure: bool | None = None) -> str:
        """An unsigned, unversioned delivery URL (https when the process has TLS, unless
        `secure=False`)."""
        from urllib.parse import quote

        base = self.https_base_url if (secure is None or secure) and self.https_base_url \
            else self.base_url
        cloud = self.cloud_name or DEFAULT_CLOUD_NAME
        return (f"{base}/{cloud}/{resource_type}/upload/"
                f"{transformation + '/' if transformation else ''}{quote(public_id)}"
                f"{'.' + format if format else ''}")


if __name__ == "__main__":  # a manual run (from outside the repo root; see services.python_main)
    main()
