"""Container logs: one file per container run (stdout and stderr interleaved, as written), and
the kubelet's HTTPS endpoint the API server proxies `kubectl logs` to. The endpoint only answers
clients with a certificate from `--client-ca` (the API server's kubelet-client certificate);
unlike a kubelet it does not ask the API server to authorize the caller (no webhook authz).
Not supported: `timestamps` (the files carry no timestamps) and `sinceSeconds`/`sinceTime`."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

log = logging.getLogger("nodeagent.logs")

# (namespace, pod, container, previous) -> (log file, still being written?) or None
Locate = Callable[[str, str, str, bool], "tuple[Path, Callable[[], bool]] | None"]


def tail(path: Path, lines: int | None = None, limit_bytes: int | None = None) -> bytes:
    """The last `lines` lines (reading backwards in blocks, never the whole file), then at most
    `limit_bytes` from their start, as the kubelet applies tailLines then limitBytes."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return b""
    with path.open("rb") as f:
        if lines is None:
            data = f.read() if limit_bytes is None else f.read(limit_bytes)
            return data
        block, data, pos = 64 * 1024, b"", size
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
        chunks = data.splitlines(keepends=True)
        data = b"".join(chunks[-lines:]) if lines > 0 else b""
    return data if limit_bytes is None else data[:limit_bytes]


def server_ssl(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_app(locate: Locate) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def container_logs(request: web.Request) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        q = request.query
        previous = q.get("previous", "false").lower() == "true"
        found = locate(ns, pod, container, previous)
        if found is None:
            raise web.HTTPNotFound(text=f'container "{container}" in pod "{pod}" is not available')
        path, running = found
        tail_lines = int(q["tailLines"]) if q.get("tailLines") else None
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        data = tail(path, tail_lines, limit)
        follow = q.get("follow", "false").lower() == "true"
        log.info("logs of %s/%s/%s (tail %s, limit %s, follow %s)", ns, pod, container, tail_lines, limit, follow)
        if not follow:
            return web.Response(body=data, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        sent = limit - len(data) if limit is not None else None
        offset = path.stat().st_size if path.exists() else 0
        while True:
            size = path.stat().st_size if path.exists() else 0
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset = size
                if sent is not None:
                    chunk = chunk[:sent]
                    sent -= len(chunk)
                await resp.write(chunk)
                if sent is not None and sent <= 0:
                    break
            elif not running():
                break
            else:
                await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    return app


async def serve(locate: Locate, port: int, cert: str, key: str, client_ca: str, host: str = "127.0.0.1") -> web.AppRunner:
    runner = web.AppRunner(make_app(locate), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=server_ssl(cert, key, client_ca)).start()
    log.info("kubelet endpoint on https://%s:%s (client certificates from %s)", host, port, os.path.basename(client_ca))
    return runner
