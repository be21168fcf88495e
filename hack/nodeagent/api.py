"""The node's only channel to the cluster: HTTPS requests to the API server with the node's own
client certificate, as a kubelet makes them. No client library: the agent needs a handful of
verbs and a watch, and keeping the wire format in view makes it obvious what the Node authorizer
and NodeRestriction admission see."""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger("nodeagent.api")

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: Any, method: str = "", path: str = ""):
        self.status, self.body = status, body
        reason = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status}: {reason}")


def _materialise(entry: dict, key: str, workdir: Path) -> str | None:
    """ssl wants files: embedded `*-data` kubeconfig fields are written once, mode 0600."""
    if entry.get(f"{key}-data"):
        fd, path = tempfile.mkstemp(prefix=f"kubeconfig-{key}-", dir=workdir)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(entry[f"{key}-data"]))
        return path
    return entry.get(key)


def ssl_from_kubeconfig(kubeconfig: Path, workdir: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    ctx_name = config.get("current-context") or config["contexts"][0]["name"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    base = kubeconfig.parent

    def resolve(p: str | None) -> str | None:
        return None if p is None else str((base / p) if not os.path.isabs(p) else Path(p))

    ca = resolve(_materialise(cluster, "certificate-authority", workdir))
    ctx = ssl.create_default_context(cafile=ca)
    cert = resolve(_materialise(user, "client-certificate", workdir))
    key = resolve(_materialise(user, "client-key", workdir))
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return cluster["server"].rstrip("/"), ctx


class Api:
    def __init__(self, server: str, ssl_context: ssl.SSLContext):
        self.server, self._ssl = server, ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Api":
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=20),
                                              headers={"User-Agent": "lectern-nodeagent/0.1"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
                      content_type: str = "application/json", timeout: float = 30) -> Any:
        assert self._session is not None
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, self.server + path, data=data, params=params,
                                         headers={"Content-Type": content_type, "Accept": "application/json"},
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            if resp.status >= 400:
                raise ApiError(resp.status, payload, method, path)
            return payload

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params={k: str(v) for k, v in params.items()} or None)

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    async def patch(self, path: str, body: Any, content_type: str = STRATEGIC) -> Any:
        return await self.request("PATCH", path, body, content_type=content_type)

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body)

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict]:
        """One watch connection; yields events until the server ends it (timeoutSeconds)."""
        assert self._session is not None
        params = {**params, "watch": "1"}
        async with self._session.get(self.server + path, params=params,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text(), "WATCH", path)
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
