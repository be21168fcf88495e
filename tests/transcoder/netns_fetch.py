"""Run inside `unshare --user --map-root-user --mount --net` by test_fetch_faults.py: a network
and a DNS the test owns, so the real resolver and real connections can be driven into the
failures fetch.py classifies, without touching the machine's network.

    netns_fetch.py dns WORKDIR       the real getaddrinfo (fetch.system_resolver) against a DNS
                                     server on the namespace's 127.0.0.1:53 that answers NXDOMAIN,
                                     SERVFAIL or an address by name
    netns_fetch.py fallback WORKDIR  https to a name resolving to public addresses put on the
                                     namespace's loopback: the first refuses, the second serves

Prints one JSON line with what happened. Not a test module (no test_ prefix)."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path

from lectern_transcoder import fetch
from lectern_transcoder.errors import TranscodeError

ADDRESSES = ("93.184.216.34", "93.184.216.35", "93.184.216.36")  # public (not in urlpolicy's tables)
NAME = "media.lectern.test"
PORT = 8443


def setup_network(workdir: Path) -> None:
    """lo up with the public addresses; our own resolv.conf, nsswitch.conf and hosts (bind
    mounts, visible only in this mount namespace)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in ADDRESSES:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    files = {"/etc/resolv.conf": "nameserver 127.0.0.1\noptions attempts:1 timeout:2\n",
             "/etc/nsswitch.conf": "hosts: files dns\n",
             "/etc/hosts": "127.0.0.1 localhost\n"}
    for target, text in files.items():
        src = workdir / Path(target).name
        src.write_text(text)
        subprocess.run(["mount", "--bind", str(src), target], check=True)


class DnsStub:
    """UDP DNS on 127.0.0.1:53: `ok.*` → A 93.184.216.34, `flaky.*` → SERVFAIL, else NXDOMAIN."""

    def __init__(self) -> None:
        self.queries: dict[str, int] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            data, peer = self.sock.recvfrom(512)
            self.sock.sendto(self.answer(data), peer)

    def answer(self, query: bytes) -> bytes:
        (qid,) = struct.unpack("!H", query[:2])
        pos, labels = 12, []
        while query[pos]:
            n = query[pos]
            labels.append(query[pos + 1:pos + 1 + n].decode("ascii").lower())
            pos += n + 1
        qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
        question = query[12:pos + 5]
        name = ".".join(labels)
        self.queries[name] = self.queries.get(name, 0) + 1
        answers = b""
        if name.startswith("flaky."):
            rcode = 2  # SERVFAIL
        elif name.startswith("ok."):
            rcode = 0
            if qtype == 1:  # A; an AAAA question gets an empty NOERROR
                answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ADDRESSES[0])
        else:
            rcode = 3  # NXDOMAIN
        header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        return header + question + answers


def scenario_dns(workdir: Path) -> dict:
    stub = DnsStub()
    out: dict = {}
    for name in ("ok.lectern.test", "gone.lectern.test", "flaky.lectern.test"):
        try:
            out[name] = {"addresses": fetch.system_resolver(name, 443)}
        except TranscodeError as exc:
            out[name] = {"error": type(exc).__name__, "message": str(exc)}
    out["queries"] = dict(stub.queries)
    return out


BODY = hashlib.sha256(b"fallback").digest() * 2048


def https_server(workdir: Path, address: str) -> tuple[http.server.ThreadingHTTPServer, list, Path]:
    cert, key = workdir / "media.crt", workdir / "media.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "1", "-subj", f"/CN={NAME}",
                        "-addext", f"subjectAltName=DNS:{NAME}"], check=True, capture_output=True)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *a) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, PORT), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen, cert


def scenario_fallback(workdir: Path) -> dict:
    server, seen, cert = https_server(workdir, ADDRESSES[0])  # only .34 listens

    def policy(*answer: str) -> fetch.FetchPolicy:
        return fetch.FetchPolicy(allowed_hosts=(f"{NAME}:{PORT}",), ca_bundle=str(cert), attempts=2,
                                 resolver=lambda host, port: list(answer))

    url = f"https://{NAME}:{PORT}/v/a.mp4"
    out: dict = {"expected_bytes": len(BODY)}
    dest = workdir / "in"
    out["bytes"] = fetch.download(url, dest, policy(ADDRESSES[1], ADDRESSES[0]), sleep=lambda s: None)
    out["same"] = dest.read_bytes() == BODY
    out["served_requests"] = len(seen)
    out["served_host_header"] = seen[0] if seen else None
    seen.clear()
    fetch.download(url, dest, policy(ADDRESSES[0], ADDRESSES[1]), sleep=lambda s: None)
    out["first_serves_requests"] = len(seen)
    try:
        fetch.download(url, dest, policy(ADDRESSES[1], ADDRESSES[2]), sleep=lambda s: None)
        out["both_refuse"] = {"error": None}
    except TranscodeError as exc:
        out["both_refuse"] = {"error": type(exc).__name__, "message": str(exc)}
    server.shutdown()
    return out


def main() -> None:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    setup_network(workdir)
    result = {"dns": scenario_dns, "fallback": scenario_fallback}[scenario](workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
