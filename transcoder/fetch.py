"""Download the raw video: only from allowed hosts, over https, streamed, capped, resumed.

`rawVideoUrl` comes from a queue message, so it is attacker-controllable input (SSRF). Before
any request: the scheme must be https, the host must be on the allowlist (default
`res.cloudinary.com`; `*.example.com` entries allow subdomains; an entry without a port allows
443 only), and every address the name resolves to must be public: loopback, private, link-local
(169.254.169.254, the cloud metadata service), CGNAT, multicast and reserved ranges are refused.
The connection then goes to the address that was checked (with the real name for SNI, the
certificate check and the Host header), so a DNS answer that changes between check and connect
(DNS rebinding) cannot redirect it. Redirects are followed by hand and checked the same way.

Test-only escape: `LECTERN_TEST_INSECURE_LOOPBACK=127.0.0.1:PORT[,…]` lets plain http to those
exact loopback ports through, because the test Cloudinary emulator runs on 127.0.0.1. Entries
that are not loopback IP literals are refused, so it cannot open the way to anything but a
local port someone named explicitly; the Helm chart never sets it. With an https URL the
certificate is still verified: the tests' emulator presents one from a throw-away CA, trusted
through `SSL_CERT_FILE`.

Trust: https downloads verify against certifi's CA bundle, or against the file named by
`SSL_CERT_FILE` when that is set (OpenSSL's own variable, as for any OpenSSL client: a private
CA or a TLS-inspecting proxy in front of the CDN; the tests' local CA). Unset in the chart, so
production trusts certifi's public CAs only."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from lectern_transcoder.errors import Transient, UnusableInput
from lectern_transcoder.urlpolicy import (INSECURE_LOOPBACK_ENV, UrlRefused, is_public, parse_insecure_loopback,
                                         parse_media_url)

DEFAULT_ALLOWED_HOSTS = ("res.cloudinary.com",)
DEFAULT_MAX_BYTES = 4 * 1024**3
CHUNK = 256 * 1024
MAX_REDIRECTS = 5

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        # A name that does not resolve is most likely a typo in the URL, but DNS can be down
        # too; EAI_AGAIN is the one that says "try later".
        if exc.errno == socket.EAI_AGAIN:
            raise Transient(f"cannot resolve {host}: temporary DNS failure") from None
        raise UnusableInput(f"cannot resolve host {host}: {exc.strerror}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _insecure_loopback_from_env() -> frozenset[tuple[str, int]]:
    try:
        return parse_insecure_loopback(os.environ.get(INSECURE_LOOPBACK_ENV))
    except ValueError as exc:
        raise UnusableInput(str(exc)) from None


@dataclasses.dataclass
class FetchPolicy:
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    max_bytes: int = DEFAULT_MAX_BYTES
    insecure_loopback: frozenset[tuple[str, int]] = frozenset()
    ca_bundle: str | None = None  # CA file for https (None: certifi's, else the system store)
    attempts: int = 6
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    resolver: Resolver = system_resolver

    @classmethod
    def from_env(cls, allowed_hosts: str | None = None, max_bytes: int | None = None) -> "FetchPolicy":
        hosts = allowed_hosts if allowed_hosts is not None else os.environ.get("LECTERN_ALLOWED_HOSTS", "")
        parsed = tuple(h.strip().lower() for h in hosts.split(",") if h.strip()) or DEFAULT_ALLOWED_HOSTS
        if max_bytes is None:
            env = os.environ.get("LECTERN_MAX_DOWNLOAD_BYTES", "").strip()
            max_bytes = int(env) if env else DEFAULT_MAX_BYTES
        return cls(allowed_hosts=parsed, max_bytes=max_bytes,
                   insecure_loopback=_insecure_loopback_from_env(),
                   ca_bundle=os.environ.get("SSL_CERT_FILE") or None)


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL that passed the policy, with the addresses that were checked."""

    scheme: str
    host: str
    port: int
    path: str  # path + query, what goes on the request line
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"

    def describe(self) -> str:
        """Host and path for messages (no query string: it may carry tokens)."""
        return f"{self.host_header}{urlsplit(self.path).path}"


def check_url(url: str, policy: FetchPolicy) -> Target:
    """Validate `url` against the policy and resolve it; raises UnusableInput naming what is
    wrong. No connection is made here."""
    try:
        parsed = parse_media_url(url, policy.allowed_hosts, policy.insecure_loopback)
    except UrlRefused as exc:
        raise UnusableInput(f"input URL {exc}") from None
    scheme, host, port, path, literal = parsed.scheme, parsed.host, parsed.port, parsed.path, parsed.address
    if parsed.insecure:
        return Target(scheme, host, port, path, (host,))
    addresses = [host] if literal is not None else policy.resolver(host, port)
    if not addresses:
        raise UnusableInput(f"host {host} resolves to no address")
    for address in addresses:
        if not is_public(address):
            raise UnusableInput(f"input host {host} resolves to non-public address {address}: refused")
    return Target(scheme, host, port, path, tuple(addresses))


def _pool(target: Target, address: str, policy: FetchPolicy) -> urllib3.HTTPConnectionPool:
    timeout = urllib3.Timeout(connect=policy.connect_timeout, read=policy.read_timeout)
    if target.scheme == "http":
        return urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False, maxsize=1)
    ca_certs = policy.ca_bundle
    if ca_certs is None:
        try:
            import certifi
            ca_certs = certifi.where()
        except ImportError:  # the system store then
            ca_certs = None
    return urllib3.HTTPSConnectionPool(
        address, target.port, timeout=timeout, retries=False, maxsize=1, cert_reqs="CERT_REQUIRED",
        ca_certs=ca_certs, assert_hostname=target.host, server_hostname=target.host)


class HttpStatusError(UnusableInput):
    """The server answered with a final 4xx: the URL is wrong, gone, or refused."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


class _Retry(Exception):
    """A failure worth another attempt (connection error, 5xx, 429, short read)."""


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    # "bytes 100-199/1000" or "bytes 100-199/*"
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        start = int(span.split("-", 1)[0])
        return start, (int(total) if total.strip() != "*" else None)
    except ValueError:
        return None


@dataclasses.dataclass
class _State:
    have: int = 0
    total: int | None = None


def download(url: str, dest: Path, policy: FetchPolicy,
             on_bytes: Callable[[int, int | None], None] | None = None,
             sleep: Callable[[float], None] = time.sleep,
             on_retry: Callable[[str], None] | None = None) -> int:
    """Stream `url` into `dest`; returns the number of bytes. Resumes with `Range` after a
    dropped connection when the server answers 206 with the right offset, else starts over.
    Raises UnusableInput (refused, 4xx, too large) or Transient (retries used up). `on_retry`
    hears why before each retry, so a flaky CDN shows in the pod's log, not only in its timing."""
    target = check_url(url, policy)
    state = _State()
    failures = 0  # consecutive attempts that made no progress
    rounds = redirects = 0
    last_error = ""
    with open(dest, "wb") as out:
        while True:
            rounds += 1
            before = state.have
            try:
                location = _attempt(target, out, state, policy, on_bytes)
                if location is not None:  # a redirect: check it like the original URL
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise UnusableInput(f"download of {target.describe()}: too many redirects")
                    target = check_url(urljoin(f"{target.scheme}://{target.host_header}{target.path}", location),
                                       policy)
                    _restart(out, state)
                    continue
                if state.total is None or state.have >= state.total:
                    return state.have
                last_error = f"connection closed after {state.have} of {state.total} bytes"
            except _Retry as exc:
                last_error = str(exc)
            failures = 0 if state.have > before else failures + 1
            if failures >= policy.attempts or rounds > policy.attempts * 5:
                raise Transient(f"download of {target.describe()} failed after {rounds} attempts: {last_error}")
            if on_retry:
                on_retry(f"{last_error} (resuming at byte {state.have})" if state.have else last_error)
            delay = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** max(0, failures - 1))
            sleep(delay * random.uniform(0.8, 1.2))


def _restart(out, state: _State) -> None:
    out.seek(0)
    out.truncate()
    state.have, state.total = 0, None


def _attempt(target: Target, out, state: _State, policy: FetchPolicy, on_bytes) -> str | None:
    """One GET; returns a redirect location, or None after streaming what it could."""
    headers = {"Host": target.host_header, "User-Agent": "lectern-transcoder", "Accept-Encoding": "identity"}
    if state.have:
        headers["Range"] = f"bytes={state.have}-"
    response = None
    errors: list[str] = []
    for address in target.addresses:
        pool = _pool(target, address, policy)
        try:
            response = pool.urlopen("GET", target.path, headers=headers, redirect=False, retries=False,
                                    preload_content=False, assert_same_host=False)
            break
        except (Urllib3Error, OSError) as exc:
            errors.append(f"{address}: {type(exc).__name__}")
    if response is None:
        raise _Retry(f"cannot connect to {target.host_header} ({'; '.join(errors)})")
    try:
        status = response.status
        if status in (301, 302, 303, 307, 308):
            location = response.headers.get("Location")
            if not location:
                raise UnusableInput(f"download of {target.describe()}: redirect without Location")
            return location
        if status == 416 and state.have:
            if state.total is not None and state.have >= state.total:
                return None
            _restart(out, state)
            raise _Retry("server refused the resume range; starting over")
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status} from {target.host_header}")
        if status not in (200, 206):
            raise HttpStatusError(f"download of {target.describe()} failed: HTTP {status}", status)
        length = response.headers.get("Content-Length")
        if status == 206:
            cr = _content_range(response.headers.get("Content-Range"))
            if cr is None or cr[0] != state.have:
                _restart(out, state)  # the server botched our Range: start over from byte 0
                raise _Retry("server answered a resumed request with the wrong range; starting over")
            state.total = cr[1]
        else:
            if state.have:
                _restart(out, state)  # Range ignored: the body is the whole file again
            state.total = int(length) if length and length.isdigit() else None
        if state.total is not None and state.total > policy.max_bytes:
            raise UnusableInput(f"input is {state.total} bytes, more than the {policy.max_bytes}-byte limit")
        try:
            for chunk in response.stream(CHUNK, decode_content=False):
                out.write(chunk)
                state.have += len(chunk)
                if state.have > policy.max_bytes:
                    raise UnusableInput(f"input is more than the {policy.max_bytes}-byte limit")
                if on_bytes:
                    on_bytes(state.have, state.total)
        except (Urllib3Error, OSError) as exc:
            raise _Retry(f"connection lost after {state.have} bytes ({type(exc).__name__})") from None
        finally:
            out.flush()
        return None
    finally:
        response.release_conn()
        response.close()
