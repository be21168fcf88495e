"""The Kubernetes API emulator, held to the API server's documented behaviour.

References (the behaviour pinned here):
- API concepts (resourceVersion, watch semantics, 410 Gone, selectors, chunking):
  https://kubernetes.io/docs/reference/using-api/api-concepts/
- Label selectors: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/
- CRDs (status subresource, structural schema, pruning, defaulting, nullable, printer columns):
  https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/
- Finalizers / garbage collection / propagation policies:
  https://kubernetes.io/docs/concepts/architecture/garbage-collection/
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.standins.kube import KubeEmulator, jsonpath, parse_label_selector

GROUP = "test.lectern.dev"
API = f"/apis/{GROUP}/v1"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                  "categories": ["lectern"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size", "priority": 1},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["color", "url"],
                        "properties": {
                            "color": {"type": "string", "enum": ["red", "green"]},
                            "url": {"type": "string", "pattern": "^https://"},
                            "size": {"type": "integer", "minimum": 1, "default": 3},
                            "quota": {"x-kubernetes-int-or-string": True},
                            "note": {"type": "string", "nullable": True},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {
                            "phase": {"type": "string"},
                            "conditions": {"type": "array", "items": {"type": "object",
                                           "x-kubernetes-preserve-unknown-fields": True}},
                            "report": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    },
                },
            }},
        }],
    },
}


def widget(name: str = "w1", ns: str = "default", **spec: Any) -> dict:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name, "namespace": ns},
            "spec": {"color": "red", "url": "https://example.com/x", **spec}}


class Http:
    """A tiny sync client: call(method, path, body, ctype) -> (status, json, headers)."""

    def __init__(self, base: str):
        self.base = base

    def __call__(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
                 accept: str = "application/json") -> tuple[int, Any, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, method=method, data=data,
                                     headers={"Content-Type": ctype, "Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null"), resp.headers
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null"), e.headers

    def watch(self, path: str, until: int, timeout: float = 5) -> list[dict]:
        """Read `until` events of a watch stream (then close it)."""
        events: list[dict] = []
        with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
            while len(events) < until:
                line = resp.readline()
                if not line:
                    break
                events.append(json.loads(line))
        return events


@pytest.fixture()
def http(kube: KubeEmulator) -> Http:
    return Http(kube.url)


@pytest.fixture()
def widgets(kube: KubeEmulator) -> KubeEmulator:
    kube.register_crd(WIDGET_CRD)
    return kube


# --- object metadata & CRUD -------------------------------------------------------------------

def test_create_sets_server_fields_and_rv_increases(http: Http) -> None:
    code, a, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    code2, b, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"generateName": "b-"}})
    assert (code, code2) == (201, 201)
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert b["metadata"]["name"].startswith("b-") and len(b["metadata"]["name"]) == 7
    assert (a["apiVersion"], a["kind"]) == ("v1", "ConfigMap")


def test_errors_have_the_real_status_shape(http: Http) -> None:
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    code, st, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    assert code == 409 and st["reason"] == "AlreadyExists" and st["message"] == 'configmaps "a" already exists'
    code, st, _ = http("GET", "/apis/batch/v1/namespaces/default/jobs/nope")
    assert code == 404 and st["reason"] == "NotFound" and st["message"] == 'jobs.batch "nope" not found'
    assert st["kind"] == "Status" and st["details"] == {"name": "nope", "group": "batch", "kind": "jobs"}
    code, st, _ = http("POST", "/api/v1/namespaces/missing/configmaps", {"metadata": {"name": "a"}})
    assert code == 404 and st["message"] == 'namespaces "missing" not found'
    code, st, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "Bad_Name"}})
    assert code == 422 and st["reason"] == "Invalid"
    code, st, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "x", "namespace": "other"}})
    assert code == 400
    code, _, _ = http("GET", "/apis/nope.dev/v1/namespaces/default/things")
    assert code == 404


def test_namespaces_listing_and_lookup(http: Http, kube: KubeEmulator) -> None:
    kube.ensure_namespace("lectern")
    code, lst, _ = http("GET", "/api/v1/namespaces")
    assert code == 200 and lst["kind"] == "NamespaceList"
    assert {"default", "lectern", "kube-system"} <= {n["metadata"]["name"] for n in lst["items"]}
    code, ns, _ = http("GET", "/api/v1/namespaces/lectern")
    assert code == 200 and ns["status"]["phase"] == "Active"
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "lectern"}


def test_update_conflicts_on_stale_resource_version(http: Http) -> None:
    _, a, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}, "data": {"k": "1"}})
    stale = a["metadata"]["resourceVersion"]
    code, a2, _ = http("PUT", "/api/v1/namespaces/default/configmaps/a", {**a, "data": {"k": "2"}})
    assert code == 200 and int(a2["metadata"]["resourceVersion"]) > int(stale)
    code, st, _ = http("PUT", "/api/v1/namespaces/default/configmaps/a", {**a, "data": {"k": "3"}})
    assert code == 409 and st["reason"] == "Conflict" and "the object has been modified" in st["message"]
    code, st, _ = http("PATCH", "/api/v1/namespaces/default/configmaps/a",
                       {"metadata": {"resourceVersion": stale}, "data": {"k": "4"}}, "application/merge-patch+json")
    assert code == 409
    code, _, _ = http("PUT", "/api/v1/namespaces/default/configmaps/missing", {"metadata": {"name": "missing"}})
    assert code == 404


def test_noop_update_keeps_resource_version(http: Http) -> None:
    _, a, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}, "data": {"k": "1"}})
    _, b, _ = http("PATCH", "/api/v1/namespaces/default/configmaps/a", {"data": {"k": "1"}}, "application/merge-patch+json")
    assert b["metadata"]["resourceVersion"] == a["metadata"]["resourceVersion"]


def test_patch_flavours(http: Http) -> None:
    path = "/api/v1/namespaces/default/pods/p"
    http("POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {
        "containers": [{"name": "c1", "image": "x", "env": [{"name": "A", "value": "1"}]}]}})
    code, p, _ = http("PATCH", path, {"metadata": {"labels": {"a": None, "b": "2"}}}, "application/merge-patch+json")
    assert code == 200 and p["metadata"]["labels"] == {"b": "2"}
    code, p, _ = http("PATCH", path, {"spec": {"containers": [{"name": "c1", "image": "y"}]}},
                      "application/strategic-merge-patch+json")
    c1 = p["spec"]["containers"][0]
    assert code == 200 and (c1["image"], c1["env"]) == ("y", [{"name": "A", "value": "1"}])
    assert c1["terminationMessagePath"] == "/dev/termination-log"  # API-server defaulting
    rv = p["metadata"]["resourceVersion"]
    code, p, _ = http("PATCH", path, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                                      {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}],
                      "application/json-patch+json")
    assert code == 200 and p["metadata"]["finalizers"] == ["x/y"]
    code, st, _ = http("PATCH", path, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                                       {"op": "remove", "path": "/metadata/finalizers"}], "application/json-patch+json")
    assert code == 422  # what kopf expects for a stale JSON-patch test
    code, _, _ = http("PATCH", path, {"a": 1}, "text/plain")
    assert code == 415


# --- CRDs: registration, discovery, status subresource, validation, pruning, defaulting -----

def test_crd_registers_discovery(http: Http, widgets: KubeEmulator) -> None:
    _, groups, _ = http("GET", "/apis")
    assert any(g["name"] == GROUP for g in groups["groups"])
    _, rl, _ = http("GET", API)
    names = {r["name"]: r for r in rl["resources"]}
    assert names["widgets"]["kind"] == "Widget" and names["widgets"]["shortNames"] == ["wd"]
    assert names["widgets"]["namespaced"] is True and "widgets/status" in names
    _, crd, _ = http("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{GROUP}")
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    assert widgets.resolve("wd").kind == "Widget"


def test_status_is_a_real_subresource(http: Http, widgets: KubeEmulator) -> None:
    body = widget()
    body["status"] = {"phase": "Ignored"}
    code, w, _ = http("POST", f"{API}/namespaces/default/widgets", body)
    assert code == 201 and "status" not in w and w["metadata"]["generation"] == 1
    code, w, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1/status",
                      {"status": {"phase": "Running"}, "spec": {"color": "green"}}, "application/merge-patch+json")
    assert code == 200 and w["status"] == {"phase": "Running"} and w["spec"]["color"] == "red"
    assert w["metadata"]["generation"] == 1
    code, w, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1",
                      {"status": {"phase": "Hacked"}, "spec": {"color": "green"}}, "application/merge-patch+json")
    assert code == 200 and w["status"] == {"phase": "Running"} and w["spec"]["color"] == "green"
    assert w["metadata"]["generation"] == 2
    code, w, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1", {"metadata": {"labels": {"x": "y"}}},
                      "application/merge-patch+json")
    assert w["metadata"]["generation"] == 2  # metadata changes do not bump the generation
    code, _, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1", {"spec": {}}, "application/strategic-merge-patch+json")
    assert code == 415  # strategic merge is for built-ins only
    # PUT of a custom resource needs a resourceVersion.
    code, st, _ = http("PUT", f"{API}/namespaces/default/widgets/w1", widget())
    assert code == 422 and "metadata.resourceVersion" in st["message"]


def test_schema_validation_messages(http: Http, widgets: KubeEmulator) -> None:
    code, st, _ = http("POST", f"{API}/namespaces/default/widgets", widget(url="http://plain", color="blue"))
    assert code == 422 and st["reason"] == "Invalid"
    assert st["message"] == (
        'Widget.test.lectern.dev "w1" is invalid: [spec.color: Unsupported value: "blue": supported values: '
        '"red", "green", spec.url: Invalid value: "http://plain": spec.url in body should match \'^https://\']')
    assert {c["field"] for c in st["details"]["causes"]} == {"spec.color", "spec.url"}
    bad = widget()
    del bad["spec"]["url"]
    code, st, _ = http("POST", f"{API}/namespaces/default/widgets", bad)
    assert code == 422 and st["message"].endswith("spec.url: Required value")
    code, st, _ = http("POST", f"{API}/namespaces/default/widgets", widget(size="big"))
    assert code == 422 and 'spec.size in body must be of type integer: "string"' in st["message"]
    code, st, _ = http("POST", f"{API}/namespaces/default/widgets", widget(size=0))
    assert code == 422 and "greater than or equal to 1" in st["message"]
    # int-or-string and nullable are accepted; updates are validated too.
    code, _, _ = http("POST", f"{API}/namespaces/default/widgets", widget(quota="5Gi", note=None))
    assert code == 201
    code, _, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1", {"spec": {"color": "pink"}},
                      "application/merge-patch+json")
    assert code == 422


def test_pruning_defaulting_and_field_validation(http: Http, widgets: KubeEmulator) -> None:
    code, w, headers = http("POST", f"{API}/namespaces/default/widgets", widget(typo=1, extra={"free": {"form": 1}}))
    assert code == 201 and "typo" not in w["spec"] and w["spec"]["extra"] == {"free": {"form": 1}}
    assert w["spec"]["size"] == 3  # defaulted
    assert 'unknown field \\"spec.typo\\"' in headers["Warning"] or 'unknown field "spec.typo"' in headers["Warning"]
    code, st, _ = http("POST", f"{API}/namespaces/default/widgets?fieldValidation=Strict", widget("w2", typo=1))
    assert code == 400 and 'unknown field "spec.typo"' in st["message"]
    # status.report preserves unknown fields; an undeclared status field is pruned.
    code, w, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1/status",
                      {"status": {"report": {"progress": 5}, "undeclared": 1}}, "application/merge-patch+json")
    assert w["status"] == {"report": {"progress": 5}}


def test_table_output_uses_printer_columns(http: Http, widgets: KubeEmulator) -> None:
    http("POST", f"{API}/namespaces/default/widgets", widget())
    http("PATCH", f"{API}/namespaces/default/widgets/w1/status",
         {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}, "application/merge-patch+json")
    code, table, _ = http("GET", f"{API}/namespaces/default/widgets",
                          accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Color", "Phase", "Ready", "Size", "Age"]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 1, 0]
    assert table["rows"][0]["cells"][:5] == ["w1", "red", "Running", "True", 3]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_jsonpath_subset() -> None:
    obj = {"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "B", "status": "True"}]}}
    assert jsonpath(obj, '.status.conditions[?(@.type=="B")].status') == ["True"]
    assert jsonpath(obj, ".status.conditions[0].type") == ["A"]
    assert jsonpath(obj, ".status.conditions[*].type") == ["A", "B"]
    assert jsonpath(obj, ".status.missing") == []


# --- selectors & listing -----------------------------------------------------------------------

def test_label_selector_grammar() -> None:
    sel = parse_label_selector("app=web,tier!=db,env in (prod, staging),zone notin (a),release,!legacy")
    assert sel({"app": "web", "env": "prod", "release": "1"})
    assert not sel({"app": "web", "env": "dev", "release": "1"})
    assert not sel({"app": "web", "env": "prod", "release": "1", "legacy": "x"})
    assert not sel({"app": "web", "env": "prod"})
    assert not sel({"app": "web", "env": "prod", "release": "1", "zone": "a"})
    assert sel({"app": "web", "env": "prod", "release": "1", "tier": "web"})


def test_list_selectors_and_pagination(http: Http, kube: KubeEmulator) -> None:
    kube.ensure_namespace("other")
    for i in range(5):
        http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"c{i}", "labels": {"i": str(i), "even": str(i % 2 == 0).lower()}}})
    http("POST", "/api/v1/namespaces/other/configmaps", {"metadata": {"name": "c9", "labels": {"i": "9"}}})
    names = lambda q: [o["metadata"]["name"] for o in http("GET", q)[1]["items"]]
    assert names("/api/v1/namespaces/default/configmaps?labelSelector=even%3Dtrue") == ["c0", "c2", "c4"]
    assert names("/api/v1/namespaces/default/configmaps?labelSelector=i+in+(1,3)") == ["c1", "c3"]
    assert names("/api/v1/configmaps?labelSelector=i+notin+(0,1,2,3)") == ["c4", "c9"]
    assert names("/api/v1/configmaps?fieldSelector=metadata.name%3Dc9") == ["c9"]
    assert names("/api/v1/configmaps?fieldSelector=metadata.namespace%21%3Ddefault") == ["c9"]
    code, page, _ = http("GET", "/api/v1/namespaces/default/configmaps?limit=2")
    assert [o["metadata"]["name"] for o in page["items"]] == ["c0", "c1"] and page["metadata"]["continue"]
    code, page2, _ = http("GET", f"/api/v1/namespaces/default/configmaps?limit=2&continue={page['metadata']['continue']}")
    assert [o["metadata"]["name"] for o in page2["items"]] == ["c2", "c3"]


# --- watches -----------------------------------------------------------------------------------

def test_watch_starts_from_resource_version_and_resumes(http: Http, kube: KubeEmulator) -> None:
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "old"}})
    _, lst, _ = http("GET", "/api/v1/namespaces/default/configmaps")
    rv = lst["metadata"]["resourceVersion"]

    def later() -> None:
        time.sleep(0.2)
        http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "new"}})
        http("PATCH", "/api/v1/namespaces/default/configmaps/new", {"data": {"a": "b"}}, "application/merge-patch+json")
        http("DELETE", "/api/v1/namespaces/default/configmaps/new")
    threading.Thread(target=later).start()
    events = http.watch(f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}", until=3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "new"), ("MODIFIED", "new"), ("DELETED", "new")]  # no replay of "old"
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    # Resuming from the first event's rv replays only what came after it.
    again = http.watch(f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rvs[0]}", until=2)
    assert [e["type"] for e in again] == ["MODIFIED", "DELETED"]
    # Without a resourceVersion: synthetic ADDED for the current state.
    now = http.watch("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1", until=5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in now] == [("ADDED", "old")]


def test_watch_too_old_resource_version_is_410(http: Http, kube: KubeEmulator) -> None:
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    kube.forget_history()
    events = http.watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1", until=1)
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] == "Expired"


def test_watch_with_selector_sees_objects_enter_and_leave(http: Http, kube: KubeEmulator) -> None:
    rv = str(kube.resource_version)

    def later() -> None:
        time.sleep(0.2)
        http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "x", "labels": {"app": "no"}}})
        http("PATCH", "/api/v1/namespaces/default/configmaps/x", {"metadata": {"labels": {"app": "yes"}}}, "application/merge-patch+json")
        http("PATCH", "/api/v1/namespaces/default/configmaps/x", {"data": {"k": "v"}}, "application/merge-patch+json")
        http("PATCH", "/api/v1/namespaces/default/configmaps/x", {"metadata": {"labels": {"app": "no"}}}, "application/merge-patch+json")
    threading.Thread(target=later).start()
    events = http.watch(f"/api/v1/namespaces/default/configmaps?watch=true&labelSelector=app%3Dyes&resourceVersion={rv}", until=3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_close_watches_ends_streams(http: Http, kube: KubeEmulator) -> None:
    def close_when_watched() -> None:
        deadline = time.monotonic() + 5
        while not kube._watchers and time.monotonic() < deadline:
            time.sleep(0.01)
        kube.close_watches()
    threading.Thread(target=close_when_watched).start()
    t0 = time.monotonic()
    assert http.watch(f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={kube.resource_version}", until=1) == []
    assert time.monotonic() - t0 < 3


# --- deletion, finalizers, garbage collection ------------------------------------------------

def test_finalizers_hold_deletion(http: Http, widgets: KubeEmulator) -> None:
    body = widget()
    body["metadata"]["finalizers"] = ["example.com/hold"]
    http("POST", f"{API}/namespaces/default/widgets", body)
    code, w, _ = http("DELETE", f"{API}/namespaces/default/widgets/w1")
    assert code == 202 and w["metadata"]["deletionTimestamp"]
    assert widgets.get("widgets", "w1", "default") is not None
    code, st, _ = http("PATCH", f"{API}/namespaces/default/widgets/w1", {"metadata": {"finalizers": ["example.com/hold", "new/one"]}},
                       "application/merge-patch+json")
    assert code == 422 and "no new finalizers" in st["message"]
    http("PATCH", f"{API}/namespaces/default/widgets/w1", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert widgets.get("widgets", "w1", "default") is None


def _owned(owner: dict) -> list[dict]:
    return [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
             "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]


def _family(http: Http) -> tuple[dict, dict, dict]:
    _, w, _ = http("POST", f"{API}/namespaces/default/widgets", widget())
    _, job, _ = http("POST", "/apis/batch/v1/namespaces/default/jobs", {
        "metadata": {"name": "j", "ownerReferences": _owned(w)},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})
    _, pod, _ = http("POST", "/api/v1/namespaces/default/pods", {
        "metadata": {"name": "j-abc", "ownerReferences": _owned(job)},
        "spec": {"containers": [{"name": "c", "image": "x"}]}})
    return w, job, pod


def test_gc_background_cascades(http: Http, widgets: KubeEmulator) -> None:
    _family(http)
    http("DELETE", f"{API}/namespaces/default/widgets/w1")
    assert widgets.get("jobs", "j", "default") is None and widgets.get("pods", "j-abc", "default") is None


def test_gc_orphan_keeps_dependents(http: Http, widgets: KubeEmulator) -> None:
    _family(http)
    http("DELETE", f"{API}/namespaces/default/widgets/w1?propagationPolicy=Orphan")
    job = widgets.get("jobs", "j", "default")
    assert job is not None and "ownerReferences" not in job["metadata"]


def test_job_deletion_orphans_pods_by_default_like_batch_v1(http: Http, widgets: KubeEmulator) -> None:
    _family(http)
    code, _, headers = http("DELETE", "/apis/batch/v1/namespaces/default/jobs/j")
    assert code == 200 and "child pods are preserved" in headers["Warning"]
    assert widgets.get("pods", "j-abc", "default") is not None


def test_gc_foreground_waits_for_dependents(http: Http, widgets: KubeEmulator) -> None:
    _, job, pod = _family(http)
    http("PATCH", "/api/v1/namespaces/default/pods/j-abc", {"metadata": {"finalizers": ["hold/it"]}}, "application/merge-patch+json")
    code, j, _ = http("DELETE", "/apis/batch/v1/namespaces/default/jobs/j", {"propagationPolicy": "Foreground"})
    assert code == 202 and "foregroundDeletion" in j["metadata"]["finalizers"]
    assert widgets.get("pods", "j-abc", "default")["metadata"]["deletionTimestamp"]
    assert widgets.get("jobs", "j", "default") is not None
    http("PATCH", "/api/v1/namespaces/default/pods/j-abc", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert widgets.get("pods", "j-abc", "default") is None and widgets.get("jobs", "j", "default") is None


def test_delete_preconditions(http: Http) -> None:
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    code, st, _ = http("DELETE", "/api/v1/namespaces/default/configmaps/a", {"preconditions": {"uid": "nope"}})
    assert code == 409 and "Precondition failed" in st["message"]


def test_crd_deletion_removes_its_objects(http: Http, widgets: KubeEmulator) -> None:
    http("POST", f"{API}/namespaces/default/widgets", widget())
    http("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{GROUP}")
    assert http("GET", f"{API}/namespaces/default/widgets")[0] == 404


def test_events_both_apis(http: Http, widgets: KubeEmulator) -> None:
    _, w, _ = http("POST", f"{API}/namespaces/default/widgets", widget())
    ref = {"apiVersion": w["apiVersion"], "kind": "Widget", "name": "w1", "namespace": "default", "uid": w["metadata"]["uid"]}
    code, _, _ = http("POST", "/api/v1/namespaces/default/events", {
        "metadata": {"generateName": "w1."}, "involvedObject": ref, "reason": "Started", "message": "hi", "type": "Normal"})
    assert code == 201
    code, _, _ = http("POST", "/apis/events.k8s.io/v1/namespaces/default/events", {
        "metadata": {"name": "w1.x"}, "regarding": ref, "reason": "Started", "note": "hi", "type": "Normal",
        "action": "Start", "reportingController": "t", "reportingInstance": "t", "eventTime": "2026-01-01T00:00:00.000000Z"})
    assert code == 201
    q = f"fieldSelector=involvedObject.uid%3D{w['metadata']['uid']},involvedObject.kind%3DWidget"
    assert len(http("GET", f"/api/v1/namespaces/default/events?{q}")[1]["items"]) == 1
    assert [e["reason"] for e in widgets.events(w)] == ["Started"]


def test_kmock_reactions_still_inject_faults(http: Http, kube: KubeEmulator) -> None:
    kube["post /api/v1/namespaces/default/configmaps"] << 503
    code, _, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    assert code == 503 and kube.get("configmaps", "a", "default") is None


# --- kopf end-to-end on the emulator --------------------------------------------------------------

def _toy_operator(kube: KubeEmulator, calls: list[str]) -> Any:
    import kopf

    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=kube.url, insecure=True)

    @kopf.on.create(GROUP, "v1", "widgets", registry=registry)
    def created(body: Any, name: str, namespace: str, patch: Any, **_: Any) -> None:
        calls.append(f"create:{name}")
        child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-child"},
                 "data": {"color": body["spec"]["color"]}}
        kopf.adopt(child, owner=body)
        req = urllib.request.Request(f"{kube.url}/api/v1/namespaces/{namespace}/configmaps", method="POST",
                                     data=json.dumps(child).encode(), headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).close()
        patch.status["phase"] = "Created"
        kopf.info(body, reason="ChildCreated", message=f"{name}-child")

    @kopf.on.update(GROUP, "v1", "widgets", field="spec.color", registry=registry)
    def updated(name: str, new: str, patch: Any, **_: Any) -> None:
        calls.append(f"update:{name}:{new}")
        patch.status["phase"] = f"Recolored-{new}"

    @kopf.on.delete(GROUP, "v1", "widgets", registry=registry)
    def deleted(name: str, **_: Any) -> None:
        calls.append(f"delete:{name}")

    return registry


def _run_kopf(registry: Any, ns: str = "default") -> Any:
    import kopf
    from kopf.testing import KopfRunner

    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.1
    return KopfRunner(["run", "--standalone", "--namespace", ns], registry=registry, settings=settings, timeout=30)


def test_kopf_operator_end_to_end(widgets: KubeEmulator) -> None:
    kube = widgets
    calls: list[str] = []
    registry = _toy_operator(kube, calls)
    with _run_kopf(registry) as runner:
        kube.create(widget("w1"))
        w = kube.wait_for("widgets", "w1", "default", lambda o: o and o.get("status", {}).get("phase") == "Created")
        child = kube.wait_for("configmaps", "w1-child", "default")
        assert child["metadata"]["ownerReferences"][0]["uid"] == w["metadata"]["uid"]
        assert "kopf.zalando.org/KopfFinalizerMarker" in w["metadata"]["finalizers"]

        kube.close_watches()  # the API server drops the streams: kopf resumes from its resourceVersion
        time.sleep(0.5)
        kube.patch("widgets", "w1", {"spec": {"color": "green"}}, "default")
        kube.wait_for("widgets", "w1", "default", lambda o: o["status"].get("phase") == "Recolored-green")
        time.sleep(1.0)
    assert runner.exit_code == 0, runner.output
    assert calls == ["create:w1", "update:w1:green"]
    assert [e["message"] for e in kube.events(w, reason="ChildCreated")] == ["w1-child"]  # kopf.info()

    # A restarted operator does not re-run the create handler, and finalizes deletion.
    with _run_kopf(registry) as runner:
        time.sleep(1.5)
        kube.delete("widgets", "w1", "default")
        kube.wait_for("widgets", "w1", "default", lambda o: o is None)
    assert runner.exit_code == 0, runner.output
    assert calls == ["create:w1", "update:w1:green", "delete:w1"]
    assert kube.get("configmaps", "w1-child", "default") is None  # garbage-collected


# --- real kubectl / helm against the emulator ------------------------------------------------

def test_kubectl_against_the_emulator(widgets_yaml: tuple[pathlib.Path, pathlib.Path], kubectl: Any, kube: KubeEmulator) -> None:
    crd_yaml, cr_yaml = widgets_yaml
    assert "created" in kubectl("apply", "-f", str(crd_yaml)).stdout
    assert "unchanged" in kubectl("apply", "-f", str(crd_yaml)).stdout
    assert "created" in kubectl("apply", "--validate=false", "-f", str(cr_yaml)).stdout
    kube.patch("widgets", "w1", {"status": {"phase": "Running"}}, "default", subresource="status")
    w = kube.get("widgets", "w1", "default")
    kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "w1.1", "namespace": "default"},
                 "involvedObject": {"apiVersion": w["apiVersion"], "kind": "Widget", "name": "w1",
                                    "namespace": "default", "uid": w["metadata"]["uid"]},
                 "reason": "Started", "message": "transcode started", "type": "Normal",
                 "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
                 "count": 1, "source": {"component": "lectern"}})

    out = kubectl("get", "wd").stdout.splitlines()
    assert out[0].split() == ["NAME", "COLOR", "PHASE", "READY", "AGE"]
    assert out[1].split()[:3] == ["w1", "red", "Running"]
    wide = kubectl("get", "widgets", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "COLOR", "PHASE", "READY", "SIZE", "AGE"] and wide[1].split()[-2] == "3"
    assert "w1" in kubectl("get", "lectern", "-A").stdout  # category
    described = kubectl("describe", "wd", "w1").stdout
    assert "Phase:  Running" in described and "transcode started" in described and "Started" in described

    bad = cr_yaml.read_text().replace("https://example.com/x", "http://example.com/x").replace("name: w1", "name: bad")
    proc = kubectl("apply", "--validate=false", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0 and "spec.url in body should match '^https://'" in proc.stderr
    proc = kubectl("apply", "-f", "-", input=cr_yaml.read_text().replace("color: red", "color: red\n  typo: 1"), check=False)
    assert proc.returncode != 0 and 'unknown field "spec.typo"' in proc.stderr  # kubectl's default --validate=strict

    assert "deleted" in kubectl("delete", "wd", "w1").stdout
    assert kube.get("widgets", "w1", "default") is None
    assert "No resources found" in kubectl("get", "wd").stderr


def test_kubectl_sees_jobs_pods_and_logs(kube: KubeEmulator, kubelet: Any, kubectl: Any) -> None:
    from tests.standins.kubelet import Kubelet
    kube.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello", "namespace": "default"},
                 "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                     {"name": "c", "image": "busybox", "command": Kubelet.fake(0, stdout="hi from the pod\n")}]}}}})
    kube.wait_for("batch/v1/jobs", "hello", "default", lambda j: j.get("status", {}).get("succeeded") == 1)
    jobs = kubectl("get", "jobs").stdout.splitlines()
    assert jobs[0].split()[:3] == ["NAME", "STATUS", "COMPLETIONS"] and jobs[1].split()[:3] == ["hello", "Complete", "1/1"]
    pods = kubectl("get", "pods", "-l", "job-name=hello").stdout.splitlines()
    assert pods[1].split()[2] == "Completed"
    assert kubectl("logs", "job/hello").stdout == "hi from the pod\n"


def test_helm_binary_renders_offline(helm_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import subprocess
    from tests.standins.kube_fixtures import tool_env, write_kubeconfig
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hi\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  g: {{ .Values.greeting }}\n")
    env = tool_env(write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9"), tmp_path)
    out = subprocess.run([str(helm_bin), "template", "r1", str(chart)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "name: r1" in out.stdout and "g: hi" in out.stdout


@pytest.fixture()
def widgets_yaml(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    import yaml
    crd, cr = tmp_path / "crd.yaml", tmp_path / "cr.yaml"
    crd.write_text(yaml.safe_dump(WIDGET_CRD))
    cr.write_text(yaml.safe_dump(widget("w1")))
    return crd, cr


def test_non_structural_crds_are_refused(http: Http) -> None:
    import copy as _copy
    crd = _copy.deepcopy(WIDGET_CRD)
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    props["maybe"] = {"anyOf": [{"type": "string"}, {"type": "integer"}]}   # what naive generators emit
    code, st, _ = http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert code == 422 and st["reason"] == "Invalid"
    assert "openAPIV3Schema.properties[spec].properties[maybe].type: Required value" in st["message"]
    assert "properties[maybe].anyOf[0].type: Forbidden: must be empty to be structural" in st["message"]
    crd = _copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = "wrong.name"
    code, st, _ = http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert code == 422 and 'must be spec.names.plural+"."+spec.group' in st["message"]


def test_kubectl_watch_and_server_side_apply(widgets_yaml: tuple[pathlib.Path, pathlib.Path], kubectl_bin: pathlib.Path,
                                             kubectl: Any, kubeconfig: pathlib.Path, kube: KubeEmulator, tmp_path: pathlib.Path) -> None:
    import subprocess
    from tests.standins.kube_fixtures import tool_env
    crd_yaml, cr_yaml = widgets_yaml
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(crd_yaml)).stdout
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(cr_yaml)).stdout
    watcher = subprocess.Popen([str(kubectl_bin), "get", "wd", "-w"], env=tool_env(kubeconfig, tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while len(lines) < 2 and time.monotonic() < deadline:  # header + the initial row
            time.sleep(0.05)
        kube.patch("widgets", "w1", {"status": {"phase": "Running"}}, "default", subresource="status")
        while "Running" not in "".join(lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    assert lines[0].split()[:3] == ["NAME", "COLOR", "PHASE"] and lines[-1].split()[:3] == ["w1", "red", "Running"]
    assert "condition met" in kubectl("wait", "--for=jsonpath={.status.phase}=Running", "wd/w1", "--timeout=5s").stdout


def test_unsupported_field_selectors_and_bad_labels_are_refused(http: Http, widgets: KubeEmulator) -> None:
    code, st, _ = http("GET", f"{API}/namespaces/default/widgets?fieldSelector=status.phase%3DRunning")
    assert code == 400 and st["message"] == "field label not supported: status.phase"
    assert http("GET", "/api/v1/pods?fieldSelector=status.phase%3DRunning")[0] == 200
    code, st, _ = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a", "labels": {"x": "y" * 64}}})
    assert code == 422 and "must be no more than 63 characters" in st["message"]
    long_name = "j" * 64  # a Job's name becomes a label value of its pods
    code, st, _ = http("POST", "/apis/batch/v1/namespaces/default/jobs", {"metadata": {"name": long_name}, "spec": {
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})
    assert code == 422 and "spec.template.labels" in st["message"]


def test_watch_list_protocol_initial_events_then_bookmark(http: Http) -> None:
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    events = http.watch("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true"
                        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", until=2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_official_python_client_round_trip(kube: KubeEmulator) -> None:
    """The typed `kubernetes` client parses what the emulator answers (lists, watch, Status)."""
    import kubernetes
    config = kubernetes.client.Configuration()
    config.host = kube.url
    with kubernetes.client.ApiClient(config) as client:
        core, batch = kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client)
        cm = core.create_namespaced_config_map("default", {"metadata": {"name": "a", "labels": {"k": "v"}}, "data": {"x": "1"}})
        assert cm.metadata.uid and cm.metadata.resource_version
        listed = core.list_namespaced_config_map("default", label_selector="k=v")
        assert [i.metadata.name for i in listed.items] == ["a"]
        job = batch.create_namespaced_job("default", {"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}})
        assert job.spec.backoff_limit == 6 and job.spec.template.metadata.labels["job-name"] == "j"
        watch = kubernetes.watch.Watch()
        stream = watch.stream(core.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version,
                              timeout_seconds=2)
        core.patch_namespaced_config_map("a", "default", {"data": {"x": "2"}})
        event = next(stream)
        watch.stop()
        assert event["type"] == "MODIFIED" and event["object"].data == {"x": "2"}
        status = core.delete_namespaced_config_map("a", "default")
        assert (status["status"] if isinstance(status, dict) else status.status) == "Success"
        with pytest.raises(kubernetes.client.ApiException) as e:
            core.read_namespaced_config_map("a", "default")
        assert e.value.status == 404


def test_kmock_request_log_and_dsl_filters(http: Http, kube: KubeEmulator) -> None:
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "b"}})
    http("GET", "/api/v1/namespaces")
    posts = list(kube["post /api/v1/namespaces/default/configmaps"])
    assert [r.data["metadata"]["name"] for r in posts] == ["a", "b"]
    with pytest.raises(AttributeError):
        kube.objects  # noqa: B018 - kmock's own store stays unused: no silently empty assertions


def test_unknown_metadata_fields_are_dropped_or_refused(http: Http) -> None:
    code, cm, headers = http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a", "lables": {"x": "y"}}})
    assert code == 201 and "lables" not in cm["metadata"] and "metadata.lables" in headers["Warning"]
    code, st, _ = http("POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
                       {"metadata": {"name": "b", "lables": {"x": "y"}}})
    assert code == 400 and 'unknown field "metadata.lables"' in st["message"]
