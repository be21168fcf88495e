"""The download's fault handling (transcoder/fetch.py) against real local HTTP servers that
misbehave on purpose: redirects re-checked against the allow-list, a refused or botched resume
(416, a wrong Content-Range, Range ignored), giving up after retries. DNS failures and the
fallback across resolved addresses need addresses and a resolver the test controls: those
run in a user+network namespace of their own (tests/transcoder/netns_fetch.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lectern_transcoder import fetch
from lectern_transcoder.errors import Transient, UnusableInput
from tests.standins.services import die_with_parent

BODY = hashlib.sha256(b"lecture").digest() * 4096  # 128 KiB, not periodic at the split points
HALF = len(BODY) // 2


class Server:
    """A loopback HTTP server whose answer to the n-th request (0-based) is `script(n, handler)`;
    every request's path and Range header is recorded in `requests`."""

    def __init__(self, script: Callable[[int, http.server.BaseHTTPRequestHandler], None] | None = None):
        self.requests: list[dict] = []
        self.script = script or (lambda n, h: full(h))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                n = len(server.requests)
                server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                        "host": self.headers.get("Host")})
                server.script(n, self)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def ranges(self) -> list[str | None]:
        return [r["range"] for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def full(h, body: bytes = BODY) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def cut_short(h) -> None:
    """Announce the whole body, send half of it, drop the connection (a resumable failure)."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(BODY)))
    h.end_headers()
    h.wfile.write(BODY[:HALF])
    h.wfile.flush()
    h.close_connection = True
    h.connection.shutdown(2)


def partial(h, start: int, claimed_start: int | None = None) -> None:
    """A 206 for `bytes=start-`; `claimed_start` lies in the Content-Range (a botched server)."""
    claimed = start if claimed_start is None else claimed_start
    part = BODY[claimed:]
    h.send_response(206)
    h.send_header("Content-Range", f"bytes {claimed}-{len(BODY) - 1}/{len(BODY)}")
    h.send_header("Content-Length", str(len(part)))
    h.end_headers()
    h.wfile.write(part)


def status(h, code: int, headers: dict | None = None) -> None:
    h.send_response(code)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", "0")
    h.end_headers()


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(script=None) -> Server:
        s = Server(script)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def policy_for(*servers: Server, **kw) -> fetch.FetchPolicy:
    """Plain http allowed to exactly these servers' ports (the test-only loopback escape)."""
    kw.setdefault("attempts", 4)
    return fetch.FetchPolicy(insecure_loopback=frozenset(("127.0.0.1", s.port) for s in servers), **kw)


def url(s: Server, path: str = "/a.mp4") -> str:
    return f"http://127.0.0.1:{s.port}{path}"


class Recorded:
    """The download's `sleep` and `on_retry` hooks: nothing waits, everything is kept."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.retries: list[str] = []

    def kwargs(self) -> dict:
        return {"sleep": self.sleeps.append, "on_retry": self.retries.append}


# --- redirects -------------------------------------------------------------------------------------

def redirect_to(location: str):
    return lambda n, h: status(h, 302, {"Location": location})


def test_redirect_to_an_allowed_target_is_followed(servers, tmp_path):
    # the control for the refusals below: the same redirect to a target the policy allows works
    target = servers()
    origin = servers(redirect_to(url(target, "/moved.mp4")))
    n = fetch.download(url(origin), tmp_path / "in", policy_for(origin, target))
    assert n == len(BODY) and (tmp_path / "in").read_bytes() == BODY
    assert [r["path"] for r in target.requests] == ["/moved.mp4"]


@pytest.mark.parametrize("location, allowed, resolves_to, why", [
    # plain http to a loopback port the escape does not name
    ("http://127.0.0.1:{port}/x.mp4", (), None, "must be an https:// URL"),
    # https to a loopback IP literal
    ("https://127.0.0.1:{port}/x.mp4", ("127.0.0.1:{port}",), None, "non-public address"),
    # a host that is not on the allow-list
    ("https://evil.example.com:{port}/x.mp4", ("media.example.com:{port}",), ["93.184.216.34"],
     "'evil.example.com' is not an allowed media host"),
    # an allowed name whose DNS answer is private (rebinding through a redirect)
    ("https://media.example.com:{port}/x.mp4", ("media.example.com:{port}",), ["127.0.0.1"],
     "media.example.com resolves to non-public address 127.0.0.1"),
])
def test_redirect_is_checked_like_the_original_url(servers, tmp_path, location, allowed, resolves_to, why):
    trap = servers()  # where the redirect points: it must see no request
    origin = servers(redirect_to(location.format(port=trap.port)))
    resolver_calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolver_calls.append(host)
        return list(resolves_to or [])

    policy = policy_for(origin, allowed_hosts=tuple(a.format(port=trap.port) for a in allowed), resolver=resolver)
    with pytest.raises(UnusableInput, match=why):
        fetch.download(url(origin), tmp_path / "in", policy)
    assert len(origin.requests) == 1  # refused, not retried
    assert trap.requests == []
    assert (tmp_path / "in").read_bytes() == b""  # nothing of the redirect's body kept


def test_too_many_redirects(servers, tmp_path):
    loop = servers()
    loop.script = redirect_to(url(loop, "/again.mp4"))
    with pytest.raises(UnusableInput, match="too many redirects"):
        fetch.download(url(loop), tmp_path / "in", policy_for(loop))
    assert len(loop.requests) == fetch.MAX_REDIRECTS + 1


# --- resuming ------------------------------------------------------------------------------------

def test_resume_with_the_right_range_fetches_only_the_rest(servers, tmp_path):
    rec = Recorded()
    s = servers(lambda n, h: cut_short(h) if n == 0 else partial(h, HALF))
    assert fetch.download(url(s), tmp_path / "in", policy_for(s), **rec.kwargs()) == len(BODY)
    assert (tmp_path / "in").read_bytes() == BODY
    assert s.ranges == [None, f"bytes={HALF}-"]


def test_416_on_resume_starts_over(servers, tmp_path):
    rec = Recorded()
    s = servers(lambda n, h: cut_short(h) if n == 0 else status(h, 416) if n == 1 else full(h))
    assert fetch.download(url(s), tmp_path / "in", policy_for(s), **rec.kwargs()) == len(BODY)
    assert (tmp_path / "in").read_bytes() == BODY
    assert s.ranges == [None, f"bytes={HALF}-", None]  # the third request asks for the whole file
    assert any("refused the resume range" in r for r in rec.retries), rec.retries


def test_wrong_content_range_starts_over(servers, tmp_path):
    # asked for bytes=HALF-, the server answers 206 from byte 1000: appending that would corrupt the file
    rec = Recorded()
    s = servers(lambda n, h: cut_short(h) if n == 0 else partial(h, HALF, claimed_start=1000) if n == 1 else full(h))
    assert fetch.download(url(s), tmp_path / "in", policy_for(s), **rec.kwargs()) == len(BODY)
    assert (tmp_path / "in").read_bytes() == BODY
    assert s.ranges == [None, f"bytes={HALF}-", None]
    assert any("wrong range" in r for r in rec.retries), rec.retries


def test_server_ignoring_range_is_not_appended(servers, tmp_path):
    # the resumed request gets a 200 with the whole body: the file is that body, not half + whole
    s = servers(lambda n, h: cut_short(h) if n == 0 else full(h))
    assert fetch.download(url(s), tmp_path / "in", policy_for(s), **Recorded().kwargs()) == len(BODY)
    assert s.ranges == [None, f"bytes={HALF}-"]
    assert (tmp_path / "in").stat().st_size == len(BODY)
    assert (tmp_path / "in").read_bytes() == BODY


# --- giving up -------------------------------------------------------------------------------------

def test_gives_up_after_the_attempts_as_transient(servers, tmp_path):
    rec = Recorded()
    s = servers(lambda n, h: status(h, 503))
    with pytest.raises(Transient, match=r"failed after 3 attempts: HTTP 503") as err:
        fetch.download(url(s), tmp_path / "in", policy_for(s, attempts=3, backoff_seconds=1.0), **rec.kwargs())
    assert len(s.requests) == 3
    assert rec.retries == [f"HTTP 503 from 127.0.0.1:{s.port}"] * 2
    # exponential backoff with ±20% jitter: ~1 s, then ~2 s
    assert len(rec.sleeps) == 2 and 0.8 <= rec.sleeps[0] <= 1.2 and 1.6 <= rec.sleeps[1] <= 2.4, rec.sleeps
    assert str(err.value).startswith(f"download of 127.0.0.1:{s.port}/a.mp4 failed after 3 attempts")


def test_progress_resets_the_attempt_count(servers, tmp_path):
    # every request brings new bytes then drops: never 3 failures in a row, so it completes
    step = len(BODY) // 8

    def script(n, h):
        start = n * step
        end = min(len(BODY), start + step)
        h.send_response(200 if n == 0 else 206)
        if n:
            h.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        h.send_header("Content-Length", str(len(BODY) - start))
        h.end_headers()
        h.wfile.write(BODY[start:end])
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(2)

    s = servers(script)
    assert fetch.download(url(s), tmp_path / "in", policy_for(s, attempts=3), **Recorded().kwargs()) == len(BODY)
    assert (tmp_path / "in").read_bytes() == BODY
    assert len(s.requests) == 8


def test_connection_refused_every_time_is_transient(servers, tmp_path):
    s = servers()
    port = s.port
    s.close()  # nothing listens on the port any more
    policy = fetch.FetchPolicy(insecure_loopback=frozenset({("127.0.0.1", port)}), attempts=2)
    with pytest.raises(Transient, match=rf"failed after 2 attempts: cannot connect to 127.0.0.1:{port} "
                                        r"\(127.0.0.1: \w+"):
        fetch.download(f"http://127.0.0.1:{port}/a.mp4", tmp_path / "in", policy, **Recorded().kwargs())


# --- DNS and address fallback, in a network namespace of the test's own ------------------------------

NETNS_SCRIPT = Path(__file__).with_name("netns_fetch.py")


def _netns_available() -> str | None:
    unshare = shutil.which("unshare")
    if not unshare or not shutil.which("ip") or not shutil.which("mount") or not shutil.which("openssl"):
        return "needs unshare, ip, mount and openssl"
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unprivileged user namespaces unavailable: {probe.stderr.decode().strip()}"
    return None


def run_in_netns(scenario: str, tmp_path: Path) -> dict:
    why = _netns_available()
    if why:  # fail, not skip: a machine that cannot run the scenario has not shown the behaviour
        pytest.fail(f"the DNS and address-fallback scenarios cannot run here: {why}")
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "LECTERN_TEST_INSECURE_LOOPBACK")}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net", sys.executable,
                           str(NETNS_SCRIPT), scenario, str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60,
                          preexec_fn=die_with_parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_system_resolver_classifies_dns_answers(tmp_path):
    # The real getaddrinfo against a DNS server the test runs (the namespace's resolv.conf names
    # it): an answer, NXDOMAIN (a wrong URL: unusable), SERVFAIL (DNS trouble: EAI_AGAIN, transient).
    out = run_in_netns("dns", tmp_path)
    assert out["ok.lectern.test"] == {"addresses": ["93.184.216.34"]}
    assert out["gone.lectern.test"] == {"error": "UnusableInput",
                                        "message": "cannot resolve host gone.lectern.test: Name or service not known"}
    assert out["flaky.lectern.test"] == {"error": "Transient",
                                         "message": "cannot resolve flaky.lectern.test: temporary DNS failure"}
    assert out["queries"]["flaky.lectern.test"] >= 1  # the stub was asked (no cached or /etc/hosts answer)


def test_fallback_to_the_next_resolved_address(tmp_path):
    # https to a name resolving to two public addresses (on the namespace's loopback): nothing
    # listens on the first, the second serves with a certificate for the name.
    out = run_in_netns("fallback", tmp_path)
    assert out["bytes"] == out["expected_bytes"] and out["same"] is True
    assert out["served_host_header"] == "media.lectern.test:8443"
    assert out["served_requests"] == 1
    # the other order: the first address serves, the second is never tried
    assert out["first_serves_requests"] == 1
    # both refuse: transient, naming each address
    assert out["both_refuse"]["error"] == "Transient"
    assert "93.184.216.35: " in out["both_refuse"]["message"] and "93.184.216.36: " in out["both_refuse"]["message"]
