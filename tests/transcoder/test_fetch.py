"""SSRF: a `rawVideoUrl` from the queue is refused before any request unless it is https to an
allowed host whose every address is public. Checked against the real resolver and, for the
refusal-before-request guarantee, against a local server that must see no request."""

from __future__ import annotations

import http.server
import threading

import pytest

from lectern_transcoder import fetch, urlpolicy
from lectern_transcoder.errors import UnusableInput

POLICY = fetch.FetchPolicy()  # default: res.cloudinary.com only


@pytest.mark.parametrize("url, why", [
    ("http://res.cloudinary.com/demo/video/upload/v1/a.mp4", "must be an https:// URL"),
    ("ftp://res.cloudinary.com/a.mp4", "must be an https:// URL"),
    ("file:///etc/passwd", "must be an https:// URL"),
    ("https://169.254.169.254/latest/meta-data/", "non-public address"),
    ("https://10.0.0.7/a.mp4", "non-public address"),
    ("https://localhost/a.mp4", "not an allowed media host"),
    ("https://[::1]/a.mp4", "non-public address"),
    ("https://evil.example.com/a.mp4", "not an allowed media host"),
    ("https://res.cloudinary.com.evil.example/a.mp4", "not an allowed media host"),
    ("https://res.cloudinary.com:8443/a.mp4", "not an allowed media host"),
    ("https://user:pw@res.cloudinary.com/a.mp4", "credentials"),
])
def test_refused_by_default_policy(url, why):
    with pytest.raises(UnusableInput, match=why):
        fetch.check_url(url, POLICY)


@pytest.mark.parametrize("host", ["169.254.169.254", "10.1.2.3", "192.168.0.1", "172.16.5.5", "127.0.0.1",
                                  "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
                                  "224.0.0.1"])
def test_non_public_addresses_refused_even_when_listed(host):
    # an operator who lists an internal address by mistake still cannot be used for SSRF
    literal = f"[{host}]" if ":" in host else host
    policy = fetch.FetchPolicy(allowed_hosts=(host,))
    with pytest.raises(UnusableInput, match="non-public address"):
        fetch.check_url(f"https://{literal}/a.mp4", policy)


def test_allowed_name_resolving_to_private_is_refused():
    # `localhost` resolves (through the real resolver) to a loopback address
    policy = fetch.FetchPolicy(allowed_hosts=("localhost",))
    with pytest.raises(UnusableInput, match=r"localhost resolves to non-public address (127\.0\.0\.1|::1)"):
        fetch.check_url("https://localhost/a.mp4", policy)


def test_public_name_on_the_list_passes():
    resolver = lambda host, port: ["93.184.216.34"]  # a public address; no network needed
    policy = fetch.FetchPolicy(allowed_hosts=("*.cloudinary.com",), resolver=resolver)
    t = fetch.check_url("https://res.cloudinary.com/demo/video/upload/v1/a.mp4?x=1", policy)
    assert (t.scheme, t.host, t.port, t.path) == ("https", "res.cloudinary.com", 443, "/demo/video/upload/v1/a.mp4?x=1")
    assert t.addresses == ("93.184.216.34",)
    with pytest.raises(UnusableInput):  # the wildcard is for subdomains, not the bare domain
        fetch.check_url("https://cloudinary.com/a.mp4", policy)


def test_rebinding_answer_with_one_private_address_is_refused():
    resolver = lambda host, port: ["93.184.216.34", "10.0.0.1"]
    policy = fetch.FetchPolicy(allowed_hosts=("media.example.com",), resolver=resolver)
    with pytest.raises(UnusableInput, match="10.0.0.1"):
        fetch.check_url("https://media.example.com/a.mp4", policy)


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")  # no Content-Length: the cap must bite while streaming
        self.end_headers()
        for _ in range(64):
            self.wfile.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *a):
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_loopback_refused_without_the_test_escape(local_server, run_cli, tmp_path):
    url = f"http://127.0.0.1:{local_server}/a.mp4"
    res = run_cli(url, str(tmp_path / "o.mp4"), "--allowed-hosts", f"127.0.0.1:{local_server}")
    assert res.returncode == 65 and "must be an https:// URL" in res.termination["reason"]
    res = run_cli(url.replace("http:", "https:"), str(tmp_path / "o.mp4"),
                  "--allowed-hosts", f"127.0.0.1:{local_server}")
    assert res.returncode == 65 and "non-public address (127.0.0.1" in res.termination["reason"]
    # the escape names one port; another port on loopback stays closed
    res = run_cli(url, str(tmp_path / "o.mp4"), env={"LECTERN_TEST_INSECURE_LOOPBACK": f"127.0.0.1:{local_server + 1}"})
    assert res.returncode == 65
    assert _Recorder.hits == []  # refused before any request


def test_escape_accepts_only_loopback_literals(monkeypatch):
    for bad in ("10.0.0.1:80", "localhost:80", "127.0.0.1", "example.com:443"):
        with pytest.raises(ValueError, match="not a loopback IP:port"):
            urlpolicy.parse_insecure_loopback(bad)
        monkeypatch.setenv(urlpolicy.INSECURE_LOOPBACK_ENV, bad)
        with pytest.raises(UnusableInput):
            fetch.FetchPolicy.from_env()
    assert urlpolicy.parse_insecure_loopback("127.0.0.1:8080,[::1]:9") == {("127.0.0.1", 8080), ("::1", 9)}


def test_size_cap_while_streaming(local_server, tmp_path):
    policy = fetch.FetchPolicy(max_bytes=100_000, insecure_loopback=frozenset({("127.0.0.1", local_server)}))
    with pytest.raises(UnusableInput, match="more than the 100000-byte limit"):
        fetch.download(f"http://127.0.0.1:{local_server}/a.mp4", tmp_path / "in", policy)
    assert (tmp_path / "in").stat().st_size <= 100_000 + fetch.CHUNK
