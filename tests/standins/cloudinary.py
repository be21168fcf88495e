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
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

UNSIGNED_PARAMS = {"file", "cloud_name", "resource_type", "api_key", "signature"}
TRANSFORMATION_RE = re.compile(r"^[a-z]{1,3}_[^,/]+(,[a-z]{1,3}_[^,/]+)*$")
STALE_AFTER_S = 3600


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

    def __init__(self, root: Path | None = None, cloud_name: str = "democloud",
                 api_key: str = "123456789012345", api_secret: str = "emulator-secret",
                 tls: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="lectern-cloudinary-"))
        self.tls = tls  # (certfile, keyfile): also serve https on a second port
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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="cloudinary-emulator",
                         daemon=True).start()
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*(str(p) for p in self.tls))
            self._tls_server = _TlsServer(("127.0.0.1", 0), Handler, ctx)
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
        asset = self._store(tmp, public_id, resource_type, fmt, src.stem, probe=True)
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

    def request_count(self, route: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if route in (None, r["route"]))

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

    def _record(self, route: str, status: int, sent: int = 0) -> None:
        with self.emu._lock:
            self.emu.requests.append({"method": self.command, "path": self.path, "route": route,
                                      "status": status, "range": self.headers.get("Range"),
                                      "bytes": sent})

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
            self._send(status, body, "text/html" if kind == "html" else "application/json",
                       {"X-Cld-Error": "Injected failure"})
            self._record(route, status)
            return True
        return False

    # -- upload API --------------------------------------------------------------------------
    def do_POST(self) -> None:
        m = re.fullmatch(r"/v1_1/([^/]+)/([^/]+)/([a-z_]+)/?", self.path.split("?")[0])
        length = int(self.headers.get("Content-Length") or -1)
        if length < 0:
            self.close_connection = True
            return self._send(411, b'{"error": {"message": "Content-Length required"}}')
        body = self.emu.root / "incoming" / (uuid.uuid4().hex + ".body")
        try:
            with open(body, "w+b") as f:
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
                self._send(status, json.dumps(result).encode())
                self._record("upload", status)
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

    def do_GET(self) -> None:
        if self._faults("delivery"):
            return
        try:
            asset, _, ext, path = self.emu.resolve(self.path.split("?")[0])
        except ApiError as e:
            self._send(e.status, b"", "text/plain", {"X-Cld-Error": e.message})
            return self._record("delivery", e.status)
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
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
                return self._record("delivery", 416)
            status = 206
        ctype = mimetypes.types_map.get("." + ext, "application/octet-stream")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if self.command == "GET":
            sent = self._body(path, start, end + 1)
        self._record("delivery", status, sent)

    def _body(self, path: Path, start: int, stop: int) -> int:
        """Write [start, stop) of `path`, honouring the drop and throttle switches."""
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
                try:
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True
                    break
                sent += len(data)
                with self.emu._lock:
                    self.emu.bytes_served += len(data)
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


if __name__ == "__main__":  # a manual run: `python -m tests.standins.cloudinary`
    with CloudinaryEmulator() as emu:
        print(f"CLOUDINARY_URL={emu.cloudinary_url}\nstorage: {emu.root}", flush=True)
        threading.Event().wait()
