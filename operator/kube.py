"""A small async Kubernetes API client (aiohttp) for the few calls the operator makes itself.

kopf handles watching, its own patches and events; the operator additionally creates Jobs,
reads pods, deletes stalled pods and patches *other* CRs' status (queue admission). It uses
the same credentials kopf logged in with (`@kopf.on.login`)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import tempfile
from typing import Any

import aiohttp
import kopf

from lectern_operator.api import v1alpha1 as api


class KubeError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


def _as_file(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    try:
        raw = base64.b64decode(raw, validate=True)
    except Exception:
        pass
    f = tempfile.NamedTemporaryFile(delete=False, prefix="lectern-kube-", suffix=".pem")
    f.write(raw)
    f.close()
    return f.name


class Kube:
    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.info = info
        self.server = info.server.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            info = self.info
            headers = {"Accept": "application/json", "User-Agent": "lectern-operator"}
            if info.token:
                headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
            ssl_ctx: ssl.SSLContext | bool | None = None
            if self.server.startswith("https"):
                if info.insecure:
                    ssl_ctx = False
                else:
                    cafile = info.ca_path or (_as_file(info.ca_data) if info.ca_data else None)
                    ssl_ctx = ssl.create_default_context(cafile=cafile)
                    cert = info.certificate_path or (_as_file(info.certificate_data) if info.certificate_data else None)
                    key = info.private_key_path or (_as_file(info.private_key_data) if info.private_key_data else None)
                    if cert:
                        ssl_ctx.load_cert_chain(cert, key)
            auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
            self._session = aiohttp.ClientSession(
                headers=headers, auth=auth, connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=20),
                timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                      content_type: str = "application/json") -> Any:
        session = await self.session()
        headers = {"Content-Type": content_type} if json is not None else None
        async with session.request(method, self.server + path, json=json, params=params, headers=headers) as resp:
            if resp.status >= 400:
                raise KubeError(resp.status, await resp.text())
            if resp.content_type == "application/json":
                return await resp.json()
            return await resp.text()

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """POST; on 409 returns the existing object and False."""
        try:
            return await self.request("POST", path, json=body), True
        except KubeError as exc:
            if exc.status != 409:
                raise
        existing = await self.get(f"{path}/{body['metadata']['name']}")
        if existing is None:
            raise KubeError(409, "conflict, but the object is gone")
        return existing, False

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, json=patch, content_type="application/merge-patch+json")

    async def delete(self, path: str, *, propagation: str = "Background") -> bool:
        try:
            await self.request("DELETE", path, json={"apiVersion": "v1", "kind": "DeleteOptions",
                                                     "propagationPolicy": propagation})
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        data = await self.request("GET", path, params=params)
        return list(data.get("items") or [])

    # -- paths ---------------------------------------------------------------------------

    @staticmethod
    def vt_path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}"
        return f"{base}/{name}" if name else base

    @staticmethod
    def jobs_path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        return f"{base}/{name}" if name else base

    @staticmethod
    def pods_path(namespace: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{namespace}/pods"
        return f"{base}/{name}" if name else base
