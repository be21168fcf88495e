"""A small synchronous client for tests, on the real local cluster (hack/cluster.py) with the
admin credentials: create, read, patch, delete and wait for objects as plain dicts.

    kube.create({...})                               # namespace defaults to kube.namespace
    kube.get("vt", "x"); kube.list("pods", labels="a=b")
    kube.patch("vt", "x", {"status": {...}}, subresource="status")
    kube.wait_for("vt", "x", predicate=lambda o: o and o["status"].get("phase") == "Running")
    await kube.await_for(...)                        # the same from async tests
    kube.events(obj, reason="Started")               # core/v1 Events about one object
    kube.delete("vt", "x")                           # Background propagation, as kubectl does

Errors are `ApiError(code, reason, message)` with the server's own message."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lectern_operator.api import v1alpha1 as api

# resource name -> (api prefix, plural, namespaced); short names and kinds map to the same.
_RESOURCES: dict[str, tuple[str, str, bool]] = {
    "videotranscodes": (f"/apis/{api.GROUP}/{api.VERSION}", "videotranscodes", True),
    "jobs": ("/apis/batch/v1", "jobs", True),
    "pods": ("/api/v1", "pods", True),
    "events": ("/api/v1", "events", True),
    "secrets": ("/api/v1", "secrets", True),
    "configmaps": ("/api/v1", "configmaps", True),
    "serviceaccounts": ("/api/v1", "serviceaccounts", True),
    "services": ("/api/v1", "services", True),
    "namespaces": ("/api/v1", "namespaces", False),
    "nodes": ("/api/v1", "nodes", False),
    "leases": ("/apis/coordination.k8s.io/v1", "leases", True),
    "deployments": ("/apis/apps/v1", "deployments", True),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "roles": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "rolebindings": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "customresourcedefinitions": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "clusterroles": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "clusterrolebindings": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}
_ALIASES = {"vt": "videotranscodes", "videotranscode": "videotranscodes", "VideoTranscode": "videotranscodes",
            "job": "jobs", "Job": "jobs", "pod": "pods", "Pod": "pods", "ns": "namespaces",
            "Namespace": "namespaces", "Secret": "secrets", "ConfigMap": "configmaps", "Event": "events",
            "ServiceAccount": "serviceaccounts", "Node": "nodes", "Lease": "leases", "Deployment": "deployments",
            "Role": "roles", "RoleBinding": "rolebindings", "Service": "services",
            "NetworkPolicy": "networkpolicies",
            "crd": "customresourcedefinitions", "CustomResourceDefinition": "customresourcedefinitions",
            "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


class KubeClient:
    def __init__(self, server: str, ssl_context: ssl.SSLContext, namespace: str = "default") -> None:
        self.server = server
        self.ssl_context = ssl_context
        self.namespace = namespace

    def in_namespace(self, namespace: str) -> "KubeClient":
        return KubeClient(self.server, self.ssl_context, namespace)

    # -- raw ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                params: Mapping[str, str] | None = None, timeout: float = 30) -> Any:
        url = self.server + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                status = json.loads(text)
            except ValueError:
                status = {}
            raise ApiError(exc.code, status.get("reason") or exc.reason, status.get("message") or text) from None
        return json.loads(raw) if raw else None

    def path(self, resource: str, name: str | None = None, namespace: str | None = None,
             subresource: str | None = None) -> str:
        key = _ALIASES.get(resource, resource)
        prefix, plural, namespaced = _RESOURCES[key]
        path = prefix
        if namespaced:
            path += f"/namespaces/{namespace or self.namespace}"
        path += f"/{plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    # -- objects --------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> dict:
        kind = obj["kind"]
        ns = namespace or (obj.get("metadata") or {}).get("namespace")
        return self.request("POST", self.path(kind, namespace=ns), dict(obj))

    def apply_yaml(self, text_or_path: str | Path) -> list[dict]:
        """Create every document (skipping ones that exist)."""
        text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
        out = []
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            try:
                out.append(self.create(doc))
            except ApiError as exc:
                if exc.code != 409:
                    raise
        return out

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self.request("GET", self.path(resource, name, namespace))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = None, labels: str | None = None,
             fields: str | None = None) -> list[dict]:
        params = {k: v for k, v in {"labelSelector": labels, "fieldSelector": fields}.items() if v}
        return self.request("GET", self.path(resource, namespace=namespace), params=params)["items"]

    def patch(self, resource: str, name: str, patch: Any, namespace: str | None = None,
              subresource: str | None = None, content_type: str = "application/merge-patch+json") -> dict:
        return self.request("PATCH", self.path(resource, name, namespace, subresource), patch, content_type)

    def delete(self, resource: str, name: str, namespace: str | None = None,
               propagation: str | None = "Background", grace: int | None = None) -> dict | None:
        options: dict[str, Any] = {"propagationPolicy": propagation} if propagation else {}
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        return self.request("DELETE", self.path(resource, name, namespace), options)

    def watch(self, resource: str, namespace: str | None = None, resource_version: str | None = None,
              timeout_seconds: int = 60):
        """Yield (type, object) from a real watch, in the order etcd committed the changes."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
        if resource_version:
            params["resourceVersion"] = resource_version
        url = self.server + self.path(resource, namespace=namespace) + "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(urllib.request.Request(url), context=self.ssl_context,
                                    timeout=timeout_seconds + 10) as stream:
            for line in stream:
                if line.strip():
                    event = json.loads(line)
                    yield event["type"], event["object"]

    def evict(self, pod: str, namespace: str | None = None) -> None:
        """The Eviction API (what `kubectl drain` uses): the API server adds DisruptionTarget."""
        ns = namespace or self.namespace
        self.request("POST", self.path("pods", pod, ns, "eviction"), {
            "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}})

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> dict:
        try:
            return self.create({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name, "labels": dict(labels or {})}})
        except ApiError as exc:
            if exc.code != 409:
                raise
            return self.get("namespaces", name)

    def events(self, obj: Mapping | None = None, reason: str | None = None,
               namespace: str | None = None) -> list[dict]:
        """core/v1 Events, optionally about one object (by uid) and/or with one reason."""
        fields = [f"involvedObject.uid={obj['metadata']['uid']}"] if obj is not None else []
        if reason:
            fields.append(f"reason={reason}")
        ns = namespace or (obj["metadata"].get("namespace") if obj is not None else None)
        evs = self.list("events", ns, fields=",".join(fields) or None)
        return sorted(evs, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                          int(e["metadata"]["resourceVersion"])))

    def wait_for(self, resource: str, name: str, namespace: str | None = None,
                 predicate: Callable[[dict | None], Any] = lambda o: o is not None,
                 timeout: float = 30.0, interval: float = 0.1) -> dict | None:
        """Poll until predicate(object-or-None) holds; returns the object. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(resource, name, namespace)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{resource} {namespace or self.namespace}/{name}: condition not met in "
                                   f"{timeout}s; last: {json.dumps(obj)[:3000]}")
            time.sleep(interval)

    async def await_for(self, resource: str, name: str, namespace: str | None = None,
                        predicate: Callable[[dict | None], Any] = lambda o: o is not None,
                        timeout: float = 30.0, interval: float = 0.1) -> dict | None:
        """`wait_for` for async tests: the GETs run in a thread, the loop keeps going."""
        deadline = time.monotonic() + timeout
        while True:
            obj = await asyncio.to_thread(self.get, resource, name, namespace)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{resource} {namespace or self.namespace}/{name}: condition not met in "
                                   f"{timeout}s; last: {json.dumps(obj)[:3000]}")
            await asyncio.sleep(interval)
