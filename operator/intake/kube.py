"""Asynchronous access to `VideoTranscode`s for the intake (kubernetes_asyncio, never the
blocking client: anything that blocks the event loop stops BullMQ's lock renewal).

- `TranscodeApi`: create / get / list / annotate / delete in one namespace, with errors
  classified as transient (retry) or permanent.
- `TranscodeCache`: one shared list+watch of the intake's CRs (an informer). Hundreds of
  waiting jobs share it instead of each holding a watch; a job waits on the cache for a change
  of its CR and falls back to a direct GET every `resync` seconds, so a missed or broken watch
  only delays a relay, never loses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any, AsyncIterator

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from lectern_operator.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger("lectern.intake.kube")

MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A Kubernetes API call failed. `transient` ones are worth retrying (the API server is
    unreachable, overloaded or restarting); the others will fail again the same way."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


class Conflict(KubeError):
    pass


def _classify(exc: BaseException, what: str) -> KubeError:
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = exc.status or 0
        detail = exc.reason or ""
        try:
            body = json.loads(exc.body) if exc.body else {}
            detail = body.get("message") or detail
        except (ValueError, TypeError, AttributeError):
            pass
        cls = Conflict if status == 409 else KubeError
        # 5xx, throttling and timeouts pass; 401/403/404 are usually a deployment still rolling
        # out (RBAC, CRD not installed yet), so they are retried within the caller's budget too.
        transient = status == 0 or status >= 500 or status in (401, 403, 404, 408, 429)
        return cls(f"{what}: HTTP {status} {detail}".strip(), status=status, transient=transient)
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError, ConnectionError)):
        return KubeError(f"{what}: Kubernetes API unreachable ({type(exc).__name__}: {exc})", transient=True)
    return KubeError(f"{what}: {type(exc).__name__}: {exc}")


async def api_client(api_url: str | None = None, pool_size: int = 20) -> client.ApiClient:
    """An ApiClient for, in this order: `api_url` (LECTERN_KUBE_API_URL, e.g. a local emulator
    over plain http without a token), the in-cluster service account (token re-read as it
    rotates), `$KUBECONFIG` / ~/.kube/config. At most `pool_size` connections: hundreds of
    waiting jobs share them (and one long-lived watch)."""
    cfg = client.Configuration()
    if api_url:
        cfg.host = api_url.rstrip("/")
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration=cfg)


class TranscodeApi:
    def __init__(self, api: client.ApiClient, namespace: str, request_timeout: float = 30.0):
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.request_timeout = request_timeout

    async def close(self) -> None:
        await self.api.close()

    async def _call(self, what: str, fn, *args, **kwargs):
        try:
            return await fn(GROUP, VERSION, self.namespace, PLURAL, *args,
                            _request_timeout=self.request_timeout, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified
            raise _classify(exc, what) from exc

    async def create(self, body: dict) -> dict:
        return await self._call(f"create VideoTranscode {body['metadata']['name']}",
                                self.custom.create_namespaced_custom_object, body)

    async def get(self, name: str) -> dict | None:
        try:
            return await self._call(f"get VideoTranscode {name}", self.custom.get_namespaced_custom_object, name)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, label_selector: str | None = None, limit: int | None = None) -> tuple[list[dict], str | None]:
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if limit:
            kwargs["limit"] = limit
        result = await self._call("list VideoTranscodes", self.custom.list_namespaced_custom_object, **kwargs)
        return list(result.get("items") or []), (result.get("metadata") or {}).get("resourceVersion")

    async def annotate(self, name: str, annotations: dict[str, str | None]) -> dict | None:
        """Merge `annotations` into the CR's metadata; None if the CR does not exist."""
        try:
            return await self._call(f"annotate VideoTranscode {name}", self.custom.patch_namespaced_custom_object,
                                    name, {"metadata": {"annotations": annotations}}, _content_type=MERGE_PATCH)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, name: str, uid: str | None = None) -> bool:
        """Delete (foreground would wait for the Job; background lets the garbage collector
        take the operator's Job and pods). False if it was already gone."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._call(f"delete VideoTranscode {name}", self.custom.delete_namespaced_custom_object,
                             name, body=body)
            return True
        except KubeError as exc:
            if exc.status in (404, 409):  # gone, or the uid changed: someone else's object now
                return False
            raise

    async def watch(self, label_selector: str | None, resource_version: str | None,
                    timeout_seconds: int) -> AsyncIterator[tuple[str, dict]]:
        """Watch events; the first item is ("OPEN", {}) once the server accepted the watch."""
        # "true" as a string: the client would send Python's "True", which a real API server
        # accepts (Go's ParseBool) but stricter emulators do not.
        kwargs: dict[str, Any] = {"watch": "true", "timeout_seconds": timeout_seconds,
                                  "allow_watch_bookmarks": "true"}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            resp = await self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout,
                                                       sock_read=timeout_seconds + 30), **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, "watch VideoTranscodes") from exc
        try:
            yield "OPEN", {}
            async with resp:
                while True:
                    try:
                        line = await resp.content.readline()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001
                        raise _classify(exc, "watch VideoTranscodes") from exc
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        continue
                    event = json.loads(line)
                    if "type" not in event or "object" not in event:
                        raise KubeError(f"watch VideoTranscodes: not a watch event: {line[:200]!r}")
                    yield event["type"], event["object"] or {}
        finally:
            resp.release()


def _rv(obj: dict | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


class TranscodeCache:
    """The latest known state of the CRs this intake follows, kept by list + watch.

    Only tracked names are kept (`track`/`untrack`, by the jobs following them), so memory is
    bounded by the jobs in flight, not by the history of finished transcodes in the namespace.
    The watch restarts with a fresh list every `watch_timeout` seconds, and after any error."""

    def __init__(self, api: TranscodeApi, label_selector: str, *, watch_timeout: int = 300,
                 tombstones: int = 10_000):
        self.api = api
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.objects: dict[str, dict] = {}
        self.tombstones: OrderedDict[str, dict] = OrderedDict()
        self.tombstone_limit = tombstones
        self.synced = asyncio.Event()
        self.last_ok = 0.0
        self._waiters: dict[str, set[asyncio.Future]] = {}
        self._tracked: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def track(self, name: str) -> None:
        self._tracked[name] = self._tracked.get(name, 0) + 1

    def untrack(self, name: str) -> None:
        left = self._tracked.get(name, 0) - 1
        if left > 0:
            self._tracked[name] = left
            return
        self._tracked.pop(name, None)
        self.objects.pop(name, None)
        self.tombstones.pop(name, None)

    # --- readers -----------------------------------------------------------------------------
    def get(self, name: str) -> dict | None:
        return self.objects.get(name)

    def deleted(self, name: str) -> dict | None:
        """The last state of a CR the cache saw being deleted (and not re-created since)."""
        return self.tombstones.get(name)

    async def wait(self, name: str, seen: dict | None, timeout: float) -> None:
        """Return when the cached state of `name` differs from `seen`, or after `timeout`."""
        current = self.objects.get(name)
        if current is not None and _rv(current) != _rv(seen):
            return
        if current is None and name in self.tombstones:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    self._waiters.pop(name, None)

    def _notify(self, name: str) -> None:
        for fut in self._waiters.get(name, ()):
            if not fut.done():
                fut.set_result(None)

    # --- writers -----------------------------------------------------------------------------
    def put(self, obj: dict) -> None:
        """Record a state we got first-hand (the create/patch response)."""
        name = (obj.get("metadata") or {}).get("name")
        if name:
            self._apply("MODIFIED", obj)

    def _apply(self, kind: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name or name not in self._tracked:
            return
        if kind == "DELETED":
            last = self.objects.pop(name, None) or obj
            # Keep the richer of the two (the event may carry the final state).
            self.tombstones[name] = obj if obj.get("metadata") else last
            self.tombstones.move_to_end(name)
            while len(self.tombstones) > self.tombstone_limit:
                self.tombstones.popitem(last=False)
        else:
            self.objects[name] = obj
            self.tombstones.pop(name, None)
        log.debug("%s VideoTranscode %s rv %s", kind, name, _rv(obj))
        self._notify(name)

    def _replace(self, items: list[dict]) -> None:
        fresh = {(i.get("metadata") or {}).get("name"): i for i in items if (i.get("metadata") or {}).get("name")}
        for name in list(self.objects):
            if name not in fresh:
                self._apply("DELETED", self.objects[name])
        for name, obj in fresh.items():
            if _rv(self.objects.get(name)) != _rv(obj):
                self._apply("ADDED", obj)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                items, rv = await self.api.list(self.label_selector)
                self._replace(items)
                self.last_ok = started = time.monotonic()
                async for kind, obj in self.api.watch(self.label_selector, rv, self.watch_timeout):
                    self.last_ok = time.monotonic()
                    if kind == "OPEN":  # listed and watching: the cache is authoritative
                        self.synced.set()
                        continue
                    if kind == "ERROR":
                        log.info("watch ended by the API server (%s); relisting", obj.get("message") or obj)
                        break
                    if kind == "BOOKMARK":
                        continue
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(kind, obj)
                self.synced.clear()
                if time.monotonic() - started < 1.0:
                    # A watch that ends at once (proxy, misbehaving server) must not become a
                    # relist loop.
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)
                else:
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep watching whatever happens
                self.synced.clear()
                log.warning("VideoTranscode watch failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15.0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="videotranscode-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.cancel()
