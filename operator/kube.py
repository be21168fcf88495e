"""The one Kubernetes API client of the operator and the intake (aiohttp, never blocking).

It logs in the way every Kubernetes client does, in this order: in-cluster (the pod's
ServiceAccount token and CA under /var/run/secrets/kubernetes.io/serviceaccount, the API server
from KUBERNETES_SERVICE_HOST/PORT), else the kubeconfig (`$KUBECONFIG`, else ~/.kube/config:
client certificates, `token` or `tokenFile`). kopf logs in through `connection_info()`, so
kopf's watches and our own calls use the same credentials.

Credentials are not kept for good: a ServiceAccount token is bound to its pod and rotated by
the kubelet, so when the API server answers 401 the client reads its credentials again and
retries the request once (kopf does the same through its login handler). A client that kept
the token of its first login would fail every call once that token expired.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import yaml

from lectern_operator.api import v1alpha1 as api

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed. `status` 0: the server was not reached. `transient`: worth
    retrying (unreachable, 5xx, throttled, timed out); the others fail the same way again."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message[:300]}" if status else message[:300])
        self.status = status
        self.message = message
        self.transient = status == 0 or status >= 500 or status in (408, 429)


class Conflict(KubeError):
    """409: the object changed meanwhile (a stale resourceVersion) or already exists."""


class LoginError(RuntimeError):
    """No usable credentials: neither in-cluster nor a kubeconfig."""


def _decode(data: str) -> bytes:
    return base64.b64decode(data.encode(), validate=True)


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None        # PEM
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None      # PEM
    key_data: bytes | None = None       # PEM
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    namespace: str | None = None

    @classmethod
    def load(cls) -> "Credentials":
        """In-cluster, else the kubeconfig; read anew on every call."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = SERVICE_ACCOUNT_DIR / "token"
        if host and token.exists():
            host = f"[{host}]" if ":" in host else host
            ns_file = SERVICE_ACCOUNT_DIR / "namespace"
            return cls(server=f"https://{host}:{port}", ca_file=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
                       token_file=str(token), namespace=ns_file.read_text().strip() if ns_file.exists() else None)
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
        if not Path(path).exists():
            raise LoginError("no Kubernetes credentials: not in a pod (KUBERNETES_SERVICE_HOST and a "
                             f"ServiceAccount token) and no kubeconfig at {path}")
        return cls.from_kubeconfig(Path(path))

    @classmethod
    def from_kubeconfig(cls, path: Path) -> "Credentials":
        config = yaml.safe_load(path.read_text()) or {}
        base = path.parent

        def named(kind: str, name: str | None) -> dict:
            for item in config.get(kind) or []:
                if item.get("name") == name:
                    return item
            raise LoginError(f"kubeconfig {path}: no {kind[:-1]} named {name!r}")

        context = named("contexts", config.get("current-context")).get("context") or {}
        cluster = named("clusters", context.get("cluster")).get("cluster") or {}
        user = named("users", context.get("user")).get("user") or {} if context.get("user") else {}

        def rel(value: str | None) -> str | None:
            return str(base / value) if value and not os.path.isabs(value) else value

        return cls(
            server=cluster["server"],
            ca_file=rel(cluster.get("certificate-authority")),
            ca_data=_decode(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None,
            cert_file=rel(user.get("client-certificate")), key_file=rel(user.get("client-key")),
            cert_data=_decode(user["client-certificate-data"]) if user.get("client-certificate-data") else None,
            key_data=_decode(user["client-key-data"]) if user.get("client-key-data") else None,
            token=user.get("token"), token_file=rel(user.get("tokenFile")),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            namespace=context.get("namespace"))

    def bearer(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file,
                                         cadata=self.ca_data.decode() if self.ca_data else None)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_data and self.key_data:
            # ssl only loads a client certificate from files: write them privately, load, delete.
            with tempfile.TemporaryDirectory(prefix="lectern-kube-") as tmp:
                cert, key = Path(tmp, "client.crt"), Path(tmp, "client.key")
                cert.write_bytes(self.cert_data)
                key.touch(mode=0o600)
                key.write_bytes(self.key_data)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def connection_info(self) -> Any:
        """The same credentials for kopf (`@kopf.on.login`)."""
        import kopf

        def b64(data: bytes | None) -> str | None:
            return base64.b64encode(data).decode() if data else None

        return kopf.ConnectionInfo(
            server=self.server, ca_path=self.ca_file, ca_data=b64(self.ca_data), insecure=self.insecure or None,
            certificate_path=self.cert_file, private_key_path=self.key_file,
            certificate_data=b64(self.cert_data), private_key_data=b64(self.key_data),
            scheme="Bearer" if self.bearer() else None, token=self.bearer(), default_namespace=self.namespace)


class Kube:
    """A small async client: JSON in, JSON out, errors as KubeError."""

    def __init__(self, credentials: Credentials | None = None, *, user_agent: str = "lectern",
                 pool_size: int = 20, timeout: float = 30.0) -> None:
        self._fixed = credentials
        self.credentials: Credentials | None = credentials
        self.user_agent = user_agent
        self.pool_size = pool_size
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        # Calls and watches in flight per session: a session replaced by a new login is closed
        # only once its last stream ends (closing it under an open watch hangs the watch).
        self._inflight: dict[aiohttp.ClientSession, int] = {}
        self._retired: set[aiohttp.ClientSession] = set()
        self._login_lock = asyncio.Lock()
        self.logins = 0

    @property
    def server(self) -> str:
        return self._creds().server

    def _creds(self) -> Credentials:
        if self.credentials is None:
            self.credentials = self._fixed or Credentials.load()
        return self.credentials

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            creds = self._creds()
            headers = {"Accept": "application/json", "User-Agent": self.user_agent}
            token = creds.bearer()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(ssl=creds.ssl_context(), limit=self.pool_size),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.timeout))
            self.logins += 1
        return self._session

    async def relogin(self, stale: aiohttp.ClientSession | None) -> None:
        """Drop the session and read the credentials again (once, however many calls got 401)."""
        async with self._login_lock:
            if self._session is not stale:
                return  # another call already logged in again
            self.credentials = None
            self._session = None
            if stale is not None:
                self._retired.add(stale)
                await self._release(stale, 0)

    def _acquire(self, session: aiohttp.ClientSession) -> None:
        self._inflight[session] = self._inflight.get(session, 0) + 1

    async def _release(self, session: aiohttp.ClientSession, count: int = 1) -> None:
        left = self._inflight.get(session, 0) - count
        if left > 0:
            self._inflight[session] = left
            return
        self._inflight.pop(session, None)
        if session in self._retired:
            self._retired.discard(session)
            await session.close()

    async def close(self) -> None:
        for session in [self._session, *self._retired]:
            if session is not None:
                await session.close()
        self._session = None
        self._retired.clear()
        self._inflight.clear()

    async def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                      content_type: str = "application/json") -> Any:
        for attempt in (1, 2):
            session = await self._get_session()
            headers = {"Content-Type": content_type} if json is not None else None
            refused = False
            self._acquire(session)
            try:
                async with session.request(method, self._creds().server + path, json=json, params=params,
                                           headers=headers) as resp:
                    if resp.status == 401 and attempt == 1:
                        refused = True  # read the credentials again and retry once
                    elif resp.status >= 400:
                        raise _error(resp.status, await resp.text())
                    elif resp.content_type == "application/json":
                        return await resp.json()
                    else:
                        return await resp.text()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise KubeError(0, f"{method} {path}: Kubernetes API unreachable ({type(exc).__name__}: {exc})") from exc
            finally:
                await self._release(session)
            if refused:
                await self.relogin(session)
        raise AssertionError("unreachable")

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """POST; on 409 (it exists) returns the existing object and False."""
        try:
            return await self.request("POST", path, json=body), True
        except Conflict:
            pass
        existing = await self.get(f"{path}/{body['metadata']['name']}")
        if existing is None:
            raise Conflict(409, "conflict, but the object is gone")
        return existing, False

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, json=patch, content_type=MERGE_PATCH)

    async def delete(self, path: str, *, propagation: str = "Background", uid: str | None = None) -> bool:
        """False when it was already gone (or, with `uid`, is another object of that name now)."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, json=body)
            return True
        except KubeError as exc:
            if exc.status == 404 or (uid and exc.status == 409):
                return False
            raise

    async def list_with_version(self, path: str, *, label_selector: str | None = None,
                                limit: int | None = None) -> tuple[list[dict[str, Any]], str | None]:
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if limit:
            params["limit"] = str(limit)
        data = await self.request("GET", path, params=params or None)
        return list(data.get("items") or []), (data.get("metadata") or {}).get("resourceVersion")

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        return (await self.list_with_version(path, label_selector=label_selector))[0]

    async def watch(self, path: str, *, label_selector: str | None = None, resource_version: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict]]:
        """Watch events; the first item is ("OPEN", {}) once the server accepted the watch."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"}
        if label_selector:
            params["labelSelector"] = label_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        session = await self._get_session()
        self._acquire(session)
        try:
            resp = await session.get(self._creds().server + path, params=params,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                                                   sock_read=timeout_seconds + 30))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            await self._release(session)
            raise KubeError(0, f"watch {path}: Kubernetes API unreachable ({type(exc).__name__}: {exc})") from exc
        try:
            if resp.status == 401:
                await self.relogin(session)
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            yield "OPEN", {}
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    raise KubeError(0, f"watch {path} broke: {type(exc).__name__}: {exc}") from exc
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                event = jsonlib.loads(line)
                if "type" not in event or "object" not in event:
                    raise KubeError(0, f"watch {path}: not a watch event: {line[:200]!r}")
                yield event["type"], event["object"] or {}
        finally:
            resp.release()
            await self._release(session)

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


def _error(status: int, text: str) -> KubeError:
    message = text
    try:
        body = jsonlib.loads(text)
        if isinstance(body, dict) and body.get("message"):
            message = body["message"]
    except ValueError:
        pass
    return (Conflict if status == 409 else KubeError)(status, message)
