"""The Jobs and pods of the transcodes in flight, kept from list+watch (an informer-style cache).

Why not poll: a GET of its Job and a LIST of its pods every second for each Running transcode
cost ~200 requests/s at a cap of 100, work that grows with the cluster instead of with what
changed. Why not kopf indices on `jobs`/`pods`: kopf's label filters are client-side (its watch
request carries no `labelSelector`, kopf/_cogs/clients/watching.py), so it would stream every
pod of the namespace and keep a per-object memory for each (kopf/_core/reactor/inventory.py).
Here one watch per kind and namespace asks the API server for the operator's own objects only
(`app.kubernetes.io/managed-by=lectern-operator`, a server-side selector), and only the objects
of *tracked* transcodes (Running, or final with a Lecture write / notification still to do) are
kept, without their spec and `managedFields`: memory follows the transcodes in flight, not the
history (finished Jobs stay in the cluster for their TTL, but not here).

A transcode tracked after its objects may already exist (an operator restart, a peering
takeover) is *primed* once by a direct GET of its Job and LIST of its pods; after that the
watch keeps it current. An event for a tracked transcode calls `on_change(key)` so that its
reconcile runs at once. A watch that breaks reconnects from its last resourceVersion, and lists
again after 410 Gone; a stale object never replaces a newer one (resourceVersion compared).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from lectern_operator.api import v1alpha1 as api
from lectern_operator.kube import Kube, KubeError

log = logging.getLogger("lectern.operator.cache")

SELECTOR = "app.kubernetes.io/managed-by=lectern-operator"
Key = tuple[str, str]  # (namespace, the transcode label value of the CR's name)


def key_of(namespace: str, cr_name: str) -> Key:
    return (namespace, api.label_value(cr_name))


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the reconcile reads: metadata (without managedFields) and status; no spec."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {"metadata": meta, "status": obj.get("status") or {}}


class _Kind:
    """One resource kind's store: key -> object name -> slim object."""

    def __init__(self, name: str, path: Callable[[str], str]) -> None:
        self.name = name
        self.path = path
        self.store: dict[Key, dict[str, dict[str, Any]]] = {}


class OwnedCache:
    def __init__(self, kube: Callable[[], Kube], namespaces: list[str], on_change: Callable[[Key], None],
                 *, watch_timeout_seconds: int = 300, page: int = 500) -> None:
        self._kube = kube
        self.namespaces = list(namespaces)
        self.on_change = on_change
        self.watch_timeout = watch_timeout_seconds
        self.page = page
        self.jobs = _Kind("jobs", Kube.jobs_path)
        self.pods = _Kind("pods", Kube.pods_path)
        self.tracked: set[Key] = set()
        self.primed: set[Key] = set()
        self._tasks: list[asyncio.Task] = []
        self.listed = asyncio.Event()
        self._listed: set[tuple[str, str]] = set()
        self.relists = 0  # how often a watch had to list again (410 Gone, errors): tests, metrics

    # -- what the reconcile uses ---------------------------------------------------------

    def track(self, key: Key, *, primed: bool = False) -> None:
        """Keep this transcode's objects from now on. `primed`: nothing of it can exist yet
        that the watch will not deliver (its Job is about to be created by us)."""
        self.tracked.add(key)
        if primed:
            self.primed.add(key)

    def forget(self, key: Key) -> None:
        self.tracked.discard(key)
        self.primed.discard(key)
        self.jobs.store.pop(key, None)
        self.pods.store.pop(key, None)

    async def prime(self, key: Key) -> None:
        """Once per tracked transcode whose objects may predate its tracking: read them."""
        if key in self.primed:
            return
        self.track(key)
        ns, label = key
        kube = self._kube()
        sel = f"{SELECTOR},{api.LABEL_TRANSCODE}={label}"
        for kind in (self.jobs, self.pods):
            items, _ = await kube.list_with_version(kind.path(ns), label_selector=sel)
            for obj in items:
                self._apply(kind, "ADDED", obj)
        self.primed.add(key)

    def put_job(self, job: dict[str, Any]) -> None:
        """A Job we just created or read: into the cache before its watch event arrives."""
        self._apply(self.jobs, "ADDED", job)

    def job(self, key: Key, name: str) -> dict[str, Any] | None:
        return (self.jobs.store.get(key) or {}).get(name)

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        return list((self.pods.store.get(key) or {}).values())

    def size(self) -> int:
        return sum(len(v) for v in self.jobs.store.values()) + sum(len(v) for v in self.pods.store.values())

    # -- list + watch ----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for ns in self.namespaces:
            for kind in (self.jobs, self.pods):
                self._tasks.append(loop.create_task(self._loop(kind, ns), name=f"cache {kind.name} {ns}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _apply(self, kind: _Kind, etype: str, obj: dict[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        label = (meta.get("labels") or {}).get(api.LABEL_TRANSCODE)
        if label is None:
            return None
        key = (meta.get("namespace", ""), label)
        if key not in self.tracked:
            return None
        objs = kind.store.setdefault(key, {})
        name = meta.get("name", "")
        if etype == "DELETED":
            old = objs.pop(name, None)
            if old is not None and _rv(old) > _rv(obj):
                objs[name] = old  # a deletion older than what we hold (a re-created object)
                return None
            return key
        old = objs.get(name)
        if old is not None and _rv(old) > _rv(obj):
            return None
        objs[name] = slim(obj)
        return key

    async def _list(self, kind: _Kind, ns: str) -> str:
        """List (paginated: a large namespace never arrives in one response) and replace the
        tracked transcodes' objects of this namespace with what the server holds."""
        kube = self._kube()
        seen: dict[Key, dict[str, dict[str, Any]]] = {}
        cont: str | None = None
        rv = ""
        while True:
            params = {"labelSelector": SELECTOR, "limit": str(self.page)}
            if cont:
                params["continue"] = cont
            data = await kube.request("GET", kind.path(ns), params=params)
            meta = data.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            for obj in data.get("items") or []:
                label = ((obj.get("metadata") or {}).get("labels") or {}).get(api.LABEL_TRANSCODE)
                if label is not None and (ns, label) in self.tracked:
                    seen.setdefault((ns, label), {})[obj["metadata"]["name"]] = slim(obj)
            cont = meta.get("continue")
            if not cont:
                break
        changed = [k for k in self.tracked if k[0] == ns and kind.store.get(k) != seen.get(k)]
        for k in [k for k in kind.store if k[0] == ns]:
            kind.store.pop(k)
        kind.store.update(seen)
        for k in changed:
            self.on_change(k)
        return rv

    async def _loop(self, kind: _Kind, ns: str) -> None:
        rv: str | None = None
        delay = 0.5
        while True:
            try:
                if rv is None:
                    rv = await self._list(kind, ns)
                    self._listed.add((kind.name, ns))
                    if len(self._listed) == 2 * len(self.namespaces):
                        self.listed.set()
                async for etype, obj in self._kube().watch(kind.path(ns), label_selector=SELECTOR, resource_version=rv,
                                                           timeout_seconds=self.watch_timeout):
                    delay = 0.5
                    if etype == "OPEN":
                        continue
                    if etype == "ERROR":
                        if obj.get("code") == 410:  # too old: list again
                            rv = None
                            self.relists += 1
                            break
                        raise KubeError(int(obj.get("code") or 0), str(obj.get("message") or obj))
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if etype == "BOOKMARK":
                        continue
                    key = self._apply(kind, etype, obj)
                    if key is not None:
                        self.on_change(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a watch never dies; the resync covers the gap
                if isinstance(exc, KubeError) and exc.status == 410:
                    rv = None
                    self.relists += 1
                log.warning("watch of %s in %s broke (%s); again in %.1fs", kind.name, ns, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
