"""The intake's view of `VideoTranscode`s, on the shared client (lectern_operator.kube).

- `TranscodeApi`: create / get / list / annotate / delete / watch in one namespace, with
  errors classified as transient (retry) or permanent.
- `TranscodeCache`: one shared list+watch of the intake's CRs (an informer). Hundreds of
  waiting jobs share it instead of each holding a watch; a job waits on the cache for a change
  of its CR and falls back to a direct GET every `resync` seconds, so a missed or broken watch
  only delays a relay, never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import AsyncIterator

from lectern_operator.kube import Conflict, Kube, KubeError

log = logging.getLogger("lectern.intake.kube")

__all__ = ["Conflict", "KubeError", "TranscodeApi", "TranscodeCache"]


def _classify(exc: KubeError, what: str) -> KubeError:
    """The intake retries, within its budget, what a rollout in progress also answers: 401/403
    (RBAC not bound yet) and 404 (CRD not installed yet), besides the plainly transient."""
    cls = Conflict if exc.status == 409 else KubeError
    out = cls(exc.status, exc.message)
    out.args = (f"{what}: {exc}",)  # "create VideoTranscode x: HTTP 503: ...", the status said once
    out.transient = exc.transient or exc.status in (401, 403, 404)
    return out


class TranscodeApi:
    def __init__(self, kube: Kube, namespace: str):
        self.kube = kube
        self.namespace = namespace

    def _path(self, name: str | None = None) -> str:
        return Kube.vt_path(self.namespace, name)

    async def close(self) -> None:
        await self.kube.close()

    async def create(self, body: dict) -> dict:
        try:
            return await self.kube.request("POST", self._path(), json=body)
        except KubeError as exc:
            raise _classify(exc, f"create VideoTranscode {body['metadata']['name']}") from exc

    async def get(self, name: str) -> dict | None:
        try:
            return await self.kube.get(self._path(name))
        except KubeError as exc:
            raise _classify(exc, f"get VideoTranscode {name}") from exc

    async def list(self, label_selector: str | None = None, limit: int | None = None) -> tuple[list[dict], str | None]:
        try:
            return await self.kube.list_with_version(self._path(), label_selector=label_selector, limit=limit)
        except KubeError as exc:
            raise _classify(exc, "list VideoTranscodes") from exc

    async def annotate(self, name: str, annotations: dict[str, str | None]) -> dict | None:
        """Merge `annotations` into the CR's metadata; None if the CR does not exist."""
        try:
            return await self.kube.merge_patch(self._path(name), {"metadata": {"annotations": annotations}})
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise _classify(exc, f"annotate VideoTranscode {name}") from exc

    async def delete(self, name: str, uid: str | None = None) -> bool:
        """Delete (foreground would wait for the Job; background lets the garbage collector
        take the operator's Job and pods). False if it was already gone."""
        try:
            return await self.kube.delete(self._path(name), uid=uid)
        except KubeError as exc:
            raise _classify(exc, f"delete VideoTranscode {name}") from exc

    async def watch(self, label_selector: str | None, resource_version: str | None,
                    timeout_seconds: int) -> AsyncIterator[tuple[str, dict]]:
        """Watch events; the first item is ("OPEN", {}) once the server accepted the watch."""
        try:
            async for item in self.kube.watch(self._path(), label_selector=label_selector,
                                              resource_version=resource_version, timeout_seconds=timeout_seconds):
                yield item
        except KubeError as exc:
            raise _classify(exc, "watch VideoTranscodes") from exc


def _rv(obj: dict | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


def _later(current: dict, seen: dict | None) -> bool:
    """Whether the cached state is a later one than `seen`. A caller may hold a later state
    than the cache (a direct GET while the watch is down): that is no change to return for, or
    the caller would loop without ever yielding to the event loop."""
    a, b = _rv(current), _rv(seen)
    if a == b:
        return False
    if a is not None and b is not None and a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return True


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
        """Return when the cached state of `name` is later than `seen` (or it was deleted), or after
        `timeout`."""
        current = self.objects.get(name)
        if current is not None and _later(current, seen):
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
