"""A Kubernetes API server stand-in: kmock's KubernetesEmulator, made to behave like the real one.

kmock 0.8 serves HTTP and keeps objects, but it is not an API server: no resourceVersion/uid,
watches replay everything, no selectors, no /status subresource, no GC, no validation, no
tables. This subclass keeps kmock's HTTP server and its request DSL (so a test can still inject
faults: ``kube['patch /apis/batch/v1/namespaces/ns/jobs/x'] << 500``), and replaces the
object store with one that follows the API server's documented behaviour for what Lectern
uses. It runs in a background thread with its own event loop, so it serves sync tests,
``KopfRunner`` threads, ``kubectl`` subprocesses and async tests alike.

What it does (documented API-server behaviour it follows):

* objects: ``uid``, ``creationTimestamp``, one cluster-wide monotonically increasing
  ``resourceVersion``, ``generation`` (bumped when anything but metadata/status changes),
  ``generateName``, DNS-subdomain names, namespaces must exist (404 otherwise);
  ``409 AlreadyExists``, ``404 NotFound``, ``409 Conflict`` on a stale ``resourceVersion``
  (PUT body, merge-patch body, DeleteOptions preconditions); PUT of a custom resource without
  ``resourceVersion`` is refused (422) as the real server does; a no-op write does not bump
  ``resourceVersion`` and emits no watch event.
* PATCH: ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json``
  (RFC 6902 incl. ``test``, 422 on failure — kopf relies on that),
  ``application/strategic-merge-patch+json`` for built-ins (a merge that merges lists of
  named items by key; 415 for custom resources, as the real server), and
  ``application/apply-patch+yaml`` (server-side apply, approximated as upsert + merge).
* ``status`` subresource (CRDs that declare it, built-ins that have it): writes to the main
  resource ignore ``status``, writes to ``/status`` change only ``status``; create drops it.
* watch: ``resourceVersion`` unset/``0`` -> synthetic ADDED for current objects, then live;
  ``resourceVersion=N`` -> only events after N (history kept in memory), ``410 Expired`` when
  N is older than the kept history; label/field selectors with ADDED/DELETED when an object
  starts/stops matching; ``timeoutSeconds``; :meth:`close_watches` drops every stream
  (clients must resume), :meth:`forget_history` makes old resourceVersions expire.
* selectors: labelSelector (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``) and
  fieldSelector (``=``, ``==``, ``!=``) limited to the field labels the real server supports
  (metadata.name/namespace everywhere, CRD ``selectableFields``, the built-in sets for pods,
  events, jobs, secrets, namespaces; anything else -> 400 "field label not supported");
  list ``limit``/``continue``; ``sendInitialEvents=true`` watch-list (ADDED + BOOKMARK).
* deletion: finalizers (``deletionTimestamp`` set, object kept until finalizers are empty; new
  finalizers refused meanwhile), garbage collection through ``ownerReferences`` with
  ``propagationPolicy`` Background / Foreground (``foregroundDeletion`` finalizer) / Orphan,
  from the DeleteOptions body or the query; batch/v1 Jobs orphan their pods by default
  (with the real server's warning) unless a policy is given; graceful deletion of pods bound
  to a kubelet (``deletionGracePeriodSeconds``); namespace deletion deletes its contents;
  immediate deletes answer ``Status Success`` for built-ins, the object for CRs/pods.
* CRDs: creating a ``CustomResourceDefinition`` validates it (name = plural.group, one storage
  version, structural schema rules: a ``type`` everywhere, nothing but value validations in
  anyOf/allOf/oneOf/not) and registers its resources (discovery, storage, conditions
  Established/NamesAccepted); deleting it deletes its objects. Custom resources are pruned
  (unknown fields dropped, ``x-kubernetes-preserve-unknown-fields`` honoured,
  ``fieldValidation=Strict`` -> 400, ``Warn`` -> Warning header), defaulted from ``default``,
  and validated with ``jsonschema`` against ``openAPIV3Schema`` (``nullable``,
  ``x-kubernetes-int-or-string``) -> ``422 Invalid`` with the real server's message format.
* built-ins: label syntax (values <= 63 chars...) on every object; Jobs defaulted (selector,
  controller-uid/job-name template labels, backoffLimit 6, podReplacementPolicy...) and
  validated (restartPolicy, podFailurePolicy rules, immutable template); pod spec defaults
  (terminationMessagePath, grace period...); Secret ``stringData`` -> ``data``; the Eviction
  API (``POST pods/<name>/eviction``: DisruptionTarget + graceful delete); ``pods/<name>/log``
  from an attached kubelet.
* tables: ``Accept: application/json;as=Table;g=meta.k8s.io;v=v1`` -> ``meta.k8s.io/v1 Table``
  from ``additionalPrinterColumns`` (JSONPath subset; ``date`` columns rendered as ages like
  the server) or built-in columns for pods, jobs, events, namespaces, also on watches;
  ``kubectl get / -o wide / -w / describe / wait / logs / delete`` work.
* discovery: ``/api``, ``/apis``, ``/apis/<g>``, ``/apis/<g>/<v>`` (built-ins from kmock's
  bundled k3s discovery + registered CRDs), ``/version``, ``/healthz``, and just enough
  ``/openapi/v3`` for kubectl to use server-side field validation (so plain ``kubectl apply``
  works, with ``--validate=strict`` semantics; ``kubectl explain`` does not).

Not emulated: CEL ``x-kubernetes-validations``, string ``format``s, admission webhooks,
RBAC/auth (any request is admin), managedFields and real server-side-apply field ownership,
protobuf/CBOR bodies (415: kubectl's typed commands such as ``create configmap`` or ``run``
need ``apply -f`` instead), aggregated discovery (clients fall back to the legacy one),
conversion between core/v1 and events.k8s.io/v1 Events (two separate stores), periodic
watch bookmarks, the scale subresource, ResourceQuota/LimitRange, the namespace Terminating
phase (deletion is immediate), and GC of dependents whose owner never existed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import dataclasses
import datetime
import gzip
import importlib.resources
import json
import pathlib
import re
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import yaml
from kmock._internal import apps, rendering  # kmock is pinned (0.8): its handler internals

# ---------------------------------------------------------------------------------------------
# Errors (rendered as metav1.Status exactly like the API server).


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def human_age(ts: str | None) -> str | None:
    """k8s.io/apimachinery duration.HumanDuration of now - ts, as the server's table printers."""
    if not ts:
        return "<unknown>"
    then = datetime.datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    secs = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if secs < -1:
        return "<invalid>"
    secs = max(secs, 0)
    if secs < 120:
        return f"{secs}s"
    mins, hours = secs // 60, secs // 3600
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    if hours < 8:
        return f"{hours}h{mins % 60}m" if mins % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def now_iso(offset: float = 0) -> str:
    t = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# ---------------------------------------------------------------------------------------------
# Resource types.


@dataclasses.dataclass
class ResType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: list[str]
    shortnames: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    subresources: set[str] = dataclasses.field(default_factory=set)
    schema: dict | None = None            # openAPIV3Schema (custom resources only)
    columns: list[dict] | None = None     # additionalPrinterColumns (custom resources only)
    custom: bool = False
    selectable: list[str] = dataclasses.field(default_factory=list)  # CRD selectableFields (1.32+)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:  # storage is shared by all versions of a resource
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:  # as in the real server's messages: `jobs.batch`, `pods`
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery(self) -> list[dict]:
        main = {"name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
                "kind": self.kind, "verbs": self.verbs}
        if self.shortnames:
            main["shortNames"] = self.shortnames
        if self.categories:
            main["categories"] = self.categories
        subs = [{"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                 "kind": self.kind, "verbs": ["get", "patch", "update"]} for sub in sorted(self.subresources)]
        return [main, *subs]


def _builtin_types() -> list[ResType]:
    data = gzip.decompress(importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes())
    types = []
    for doc in json.loads(data):
        gv = doc["groupVersion"]
        group, version = gv.rsplit("/", 1) if "/" in gv else ("", gv)
        subs = collections.defaultdict(set)
        for r in doc["resources"]:
            if "/" in r["name"]:
                parent, sub = r["name"].split("/", 1)
                subs[parent].add(sub)
        for r in doc["resources"]:
            if "/" not in r["name"]:
                types.append(ResType(group, version, r["name"], r["kind"], r.get("singularName") or r["name"],
                                     r["namespaced"], r.get("verbs", []), r.get("shortNames", []),
                                     r.get("categories", []), subs[r["name"]]))
    return types


# ---------------------------------------------------------------------------------------------
# Patching.


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_MERGE_KEYS = ("name", "uid", "type", "containerPort", "mountPath", "devicePath", "ip", "topologyKey")


def _merge_key(items: list) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in _MERGE_KEYS:
        if all(key in i for i in items):
            return key
    return None


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge: merge patch, plus lists of keyed items merged by key,
    plus the `$patch: delete|replace` directives. (The real one is driven by Go struct tags.)"""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(old, list) and (mk := _merge_key(value + old)):
            merged = [copy.deepcopy(i) for i in old]
            for item in value:
                idx = next((n for n, i in enumerate(merged) if i[mk] == item[mk]), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        merged.pop(idx)
                elif idx is None:
                    merged.append(strategic_merge_patch({}, item))
                else:
                    merged[idx] = strategic_merge_patch(merged[idx], item)
            result[key] = merged
        else:
            result[key] = strategic_merge_patch(old, value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """RFC 6902 JSON patch; raises ValueError (-> 422) on a failed op, including `test`."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        try:
            if kind == "test":
                if _walk(doc, parts) != op.get("value"):
                    raise ValueError(f"testing value {op['path']} failed")
                continue
            if kind in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src))
                if kind == "move":
                    parent = _walk(doc, src[:-1])
                    parent.pop(int(src[-1]) if isinstance(parent, list) else src[-1])
                kind, op = "add", {"value": value}
            if not parts:
                doc = copy.deepcopy(op["value"]) if kind in ("add", "replace") else None
                continue
            parent, last = _walk(doc, parts[:-1]), parts[-1]
            if kind == "add":
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                parent.pop(int(last) if isinstance(parent, list) else last)
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            else:
                raise ValueError(f"unknown op {kind!r}")
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{kind} operation does not apply: doc is missing path: {op.get('path')}: {e!r}")
    return doc


# ---------------------------------------------------------------------------------------------
# Selectors.


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET_REQ = re.compile(r"^(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?$")
_EQ_REQ = re.compile(r"^([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)$")


def parse_label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` -> predicate(labels). Raises ValueError."""
    reqs: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_top(text or ""):
        if m := _EQ_REQ.match(part):
            key, op, val = m.groups()
            reqs.append((lambda k, v: lambda ls: ls.get(k) != v)(key, val) if op == "!=" else
                        (lambda k, v: lambda ls: ls.get(k) == v)(key, val))
        elif m := _SET_REQ.match(part):
            neg, key, op, vals = m.groups()
            values = {v.strip() for v in (vals or "").split(",") if v.strip()}
            if op == "in":
                reqs.append((lambda k, vs: lambda ls: ls.get(k) in vs)(key, values))
            elif op == "notin":
                reqs.append((lambda k, vs: lambda ls: ls.get(k) not in vs)(key, values))
            elif neg:
                reqs.append((lambda k: lambda ls: k not in ls)(key))
            else:
                reqs.append((lambda k: lambda ls: k in ls)(key))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return lambda labels: all(r(labels) for r in reqs)


def _dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def parse_field_selector(text: str | None) -> Callable[[dict], bool]:
    reqs = []
    for part in _split_top(text or ""):
        m = re.match(r"^([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise ValueError(f"invalid selector: {part!r}")
        path, op, value = m.groups()

        def req(obj: dict, path: str = path, op: str = op, value: str = value) -> bool:
            actual = _dotted(obj, path)
            actual = "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
            return (actual != value) if op == "!=" else (actual == value)
        reqs.append(req)
    return lambda obj: all(r(obj) for r in reqs)


# ---------------------------------------------------------------------------------------------
# JSONPath subset for printer columns: `.a.b`, `.a[0].b`, `.a[*].b`, `.a[?(@.type=="X")].b`.


def jsonpath(obj: Any, path: str) -> list[Any]:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    tokens = re.findall(r"\.([A-Za-z0-9_$-]+)|\[(\d+|\*|\?\(@\.[A-Za-z0-9_.]+\s*==\s*['\"][^'\"]*['\"]\))\]", path)
    values = [obj]
    for name, index in tokens:
        nxt: list[Any] = []
        for v in values:
            if name:
                if isinstance(v, dict) and name in v:
                    nxt.append(v[name])
            elif index == "*":
                nxt.extend(v if isinstance(v, list) else [])
            elif index.isdigit():
                if isinstance(v, list) and int(index) < len(v):
                    nxt.append(v[int(index)])
            else:
                m = re.match(r"\?\(@\.([A-Za-z0-9_.]+)\s*==\s*['\"]([^'\"]*)['\"]\)", index)
                assert m
                nxt.extend(i for i in (v if isinstance(v, list) else []) if str(_dotted(i, m[1])) == m[2])
        values = nxt
    return values


# ---------------------------------------------------------------------------------------------
# Structural schemas: pruning, defaulting, validation.


def prune_and_default(value: Any, schema: dict | None, path: str, unknown: list[str]) -> Any:
    """Structural pruning (unknown fields dropped, nulls of non-nullable fields dropped) and
    defaulting, as the API server does on every write of a custom resource."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(v, schema["items"], f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    if not isinstance(value, dict) or schema.get("type", "object") != "object":
        return value
    props = schema.get("properties") or {}
    addl = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    out = {}
    for key, sub in value.items():
        sub_schema = props.get(key) if key in props else addl if isinstance(addl, dict) else None
        where = f"{path}.{key}" if path else key
        if sub_schema is not None:
            if sub is None and not sub_schema.get("nullable"):
                continue
            out[key] = prune_and_default(sub, sub_schema, where, unknown)
        elif key in props or addl is True or preserve:
            out[key] = sub
        else:
            unknown.append(where)
    for key, sub_schema in props.items():
        if key not in out and isinstance(sub_schema, dict) and "default" in sub_schema:
            out[key] = prune_and_default(copy.deepcopy(sub_schema["default"]), sub_schema,
                                         f"{path}.{key}" if path else key, unknown)
    return out


def to_jsonschema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes structural) schema -> JSON schema draft 4."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format", "default", "example", "externalDocs"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(v) for v in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _gofmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)


def _jstype(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), "unknown")


_VALIDATORS: dict[str, jsonschema.Draft4Validator] = {}


def validation_causes(obj: dict, schema: dict) -> list[dict]:
    """Validate with jsonschema; render the causes like the API server (field + message)."""
    cache_key = json.dumps(schema, sort_keys=True)
    validator = _VALIDATORS.get(cache_key)
    if validator is None:
        validator = _VALIDATORS[cache_key] = jsonschema.Draft4Validator(to_jsonschema(schema))
    causes = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        field = ""
        for p in err.absolute_path:
            field += f"[{p}]" if isinstance(p, int) else (f".{p}" if field else str(p))
        v, inst = err.validator, err.instance
        if v == "required":
            for prop in err.validator_value:
                if isinstance(inst, dict) and prop not in inst:
                    f = f"{field}.{prop}" if field else prop
                    causes.append({"reason": "FieldValueRequired", "message": "Required value", "field": f})
            continue
        if v == "enum":
            allowed = ", ".join(_gofmt(x) for x in err.validator_value)
            causes.append({"reason": "FieldValueNotSupported", "field": field,
                           "message": f"Unsupported value: {_gofmt(inst)}: supported values: {allowed}"})
            continue
        val = err.validator_value
        detail = {
            "type": lambda: f"{field} in body must be of type {val if isinstance(val, str) else '/'.join(val)}: {_gofmt(_jstype(inst))}",
            "pattern": lambda: f"{field} in body should match '{val}'",
            "minimum": lambda: f"{field} in body should be greater than or equal to {val}",
            "maximum": lambda: f"{field} in body should be less than or equal to {val}",
            "minLength": lambda: f"{field} in body should be at least {val} chars long",
            "maxLength": lambda: f"{field} in body may not be longer than {val}",
            "minItems": lambda: f"{field} in body should have at least {val} items",
            "maxItems": lambda: f"{field} in body should have at most {val} items",
        }.get(v, lambda: err.message)()
        shown = _jstype(inst) if v == "type" else inst
        causes.append({"reason": "FieldValueInvalid", "field": field,
                       "message": f"Invalid value: {_gofmt(shown)}: {detail}"})
    return causes


def invalid(rt: ResType, name: str, causes: list[dict]) -> ApiError:
    texts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}',
                    {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})


# ---------------------------------------------------------------------------------------------
# Built-in defaulting and validation (the bits of the real registry strategies Lectern meets).


def builtin_defaults(rt: ResType, obj: dict, old: dict | None = None) -> dict:
    if causes := label_causes(obj.get("metadata", {}).get("labels"), "metadata.labels"):
        raise invalid(rt, obj["metadata"].get("name", ""), causes)
    if rt.custom:
        return obj
    if rt.key == ("apiextensions.k8s.io", "customresourcedefinitions") and (causes := crd_causes(obj)):
        raise invalid(rt, obj["metadata"].get("name", ""), causes)
    if rt.key == ("", "secrets") and "stringData" in obj:
        data = obj.setdefault("data", {})
        for k, v in (obj.pop("stringData") or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    if rt.key == ("", "pods"):
        _default_pod_spec(obj.setdefault("spec", {}))
    if rt.key == ("batch", "jobs"):
        name, meta, spec = obj["metadata"]["name"], obj["metadata"], obj.setdefault("spec", {})
        if old is None:
            uid = meta["uid"]
            if not spec.get("manualSelector"):
                spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
                labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
                labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                               "controller-uid": uid, "job-name": name})
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
        _default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
        causes = _job_causes(spec) + label_causes(spec.get("template", {}).get("metadata", {}).get("labels"), "spec.template.labels")
        if old is not None:
            for field in ("selector", "template", "completions", "completionMode", "podFailurePolicy", "backoffLimitPerIndex"):
                if field in ("template",) and old["spec"].get("suspend") and spec.get(field) != old["spec"].get(field):
                    continue  # a suspended Job's template may change
                if spec.get(field) != old["spec"].get(field):
                    causes.append({"reason": "FieldValueInvalid", "field": f"spec.{field}", "message": "Invalid value: field is immutable"})
        if causes:
            raise invalid(rt, name, causes)
    return obj


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def label_causes(labels: Any, field: str) -> list[dict]:
    """metadata.labels syntax, as the API server validates it on every object."""
    causes = []
    for key, value in (labels or {}).items():
        prefix, _, name = str(key).rpartition("/")
        if len(name) > 63 or not _LABEL_NAME.match(name) or (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))):
            causes.append({"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {json.dumps(key)}: "
                           "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"})
        if not isinstance(value, str):
            causes.append({"reason": "FieldValueInvalid", "field": f"{field}[{key}]", "message": f"Invalid value: {json.dumps(value)}: label values must be strings"})
        elif len(value) > 63:
            causes.append({"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {json.dumps(value)}: must be no more than 63 characters"})
        elif not _LABEL_VALUE.match(value):
            causes.append({"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {json.dumps(value)}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"})
    return causes


# Field selectors the real API server accepts (anything else: 400 "field label not supported").
_FIELD_LABELS: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                   "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs", "status.nominatedNodeName"},
    ("", "events"): {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                     "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                     "reason", "reportingComponent", "source", "type"},
    ("events.k8s.io", "events"): {"regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                                  "regarding.apiVersion", "regarding.resourceVersion", "regarding.fieldPath",
                                  "reason", "reportingController", "type"},
    ("", "secrets"): {"type"}, ("", "namespaces"): {"status.phase"}, ("batch", "jobs"): {"status.successful"},
    ("", "nodes"): {"spec.unschedulable"}, ("", "replicationcontrollers"): {"status.replicas"},
}


_OBJECT_META = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
                "ownerReferences", "finalizers", "managedFields"}

_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def structural_causes(schema: Any, path: str, in_junctor: bool = False) -> list[dict]:
    """The API server's structural-schema rules for CRDs (non-structural CRDs are refused):
    every specified node has a `type` (unless int-or-string / preserve-unknown-fields), and
    `type`/`nullable`/`default`/`description`/`additionalProperties` never appear inside
    allOf/anyOf/oneOf/not (value validations), whose fields must also exist outside them."""
    causes: list[dict] = []
    if not isinstance(schema, dict):
        return causes
    int_or_string = schema.get("x-kubernetes-int-or-string")
    if in_junctor:
        for key in ("type", "nullable", "default", "description", "additionalProperties"):
            if key in schema:
                causes.append({"reason": "FieldValueForbidden", "field": f"{path}.{key}", "message": "Forbidden: must be empty to be structural"})
    elif not schema.get("type") and not int_or_string and not schema.get("x-kubernetes-preserve-unknown-fields"):
        causes.append({"reason": "FieldValueRequired", "field": f"{path}.type", "message": "Required value: must not be empty for specified object fields"})
    for name, sub in (schema.get("properties") or {}).items():
        causes += structural_causes(sub, f"{path}.properties[{name}]", in_junctor)
    if isinstance(schema.get("items"), dict):
        causes += structural_causes(schema["items"], f"{path}.items", in_junctor)
    if isinstance(schema.get("additionalProperties"), dict):
        causes += structural_causes(schema["additionalProperties"], f"{path}.additionalProperties", in_junctor)
    for junctor in _JUNCTORS:
        branches = schema.get(junctor)
        branches = [branches] if isinstance(branches, dict) else branches or []
        for i, branch in enumerate(branches):
            where = f"{path}.{junctor}" + (f"[{i}]" if junctor != "not" else "")
            if int_or_string and junctor == "anyOf" and branch in ({"type": "integer"}, {"type": "string"}):
                continue
            causes += structural_causes(branch, where, True)
            for name in (branch.get("properties") or {}) if isinstance(branch, dict) else ():
                if name not in (schema.get("properties") or {}):
                    causes.append({"reason": "FieldValueRequired", "field": f"{where}.properties[{name}]",
                                   "message": "Required value: must be specified outside of value validation"})
    return causes


def crd_causes(crd: dict) -> list[dict]:
    spec, causes = crd.get("spec", {}), []
    names = spec.get("names", {})
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if crd["metadata"].get("name") != expected:
        causes.append({"reason": "FieldValueInvalid", "field": "metadata.name",
                       "message": f'Invalid value: "{crd["metadata"].get("name")}": must be spec.names.plural+"."+spec.group'})
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append({"reason": "FieldValueNotSupported", "field": "spec.scope", "message": f'Unsupported value: {json.dumps(spec.get("scope"))}: supported values: "Cluster", "Namespaced"'})
    for field in ("plural", "kind"):
        if not names.get(field):
            causes.append({"reason": "FieldValueRequired", "field": f"spec.names.{field}", "message": "Required value"})
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage")) != 1:
        causes.append({"reason": "FieldValueInvalid", "field": "spec.versions", "message": "Invalid value: must have exactly one version marked as storage version"})
    for i, v in enumerate(versions):
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            causes.append({"reason": "FieldValueRequired", "field": f"spec.versions[{i}].schema.openAPIV3Schema", "message": "Required value: schemas are required"})
        else:
            causes += structural_causes(schema, f"spec.versions[{i}].schema.openAPIV3Schema")
    return causes


def _default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "Always" if str(c.get("image", "")).endswith(":latest") or ":" not in str(c.get("image", "")) else "IfNotPresent")


def _job_causes(spec: dict) -> list[dict]:
    """The Job validation rules of the real API server that a Job generator can get wrong."""
    causes = []
    def bad(field: str, message: str, reason: str = "FieldValueInvalid") -> None:
        causes.append({"reason": reason, "field": field, "message": message})
    tpl = spec.get("template", {}).get("spec", {})
    if tpl.get("restartPolicy") not in ("OnFailure", "Never"):
        bad("spec.template.spec.restartPolicy", f'Unsupported value: "{tpl.get("restartPolicy")}": supported values: "OnFailure", "Never"', "FieldValueNotSupported")
    if not tpl.get("containers"):
        bad("spec.template.spec.containers", "Required value", "FieldValueRequired")
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "parallelism", "completions"):
        v = spec.get(field)
        if v is not None and (not isinstance(v, int) or v < (1 if field == "activeDeadlineSeconds" else 0)):
            bad(f"spec.{field}", f"Invalid value: {json.dumps(v)}: must be greater than or equal to {1 if field == 'activeDeadlineSeconds' else 0}")
    pfp = spec.get("podFailurePolicy")
    if pfp is not None:
        if tpl.get("restartPolicy") != "Never":
            bad("spec.podFailurePolicy", "Invalid value: only \"Never\" is supported when podFailurePolicy is specified")
        for i, rule in enumerate(pfp.get("rules") or []):
            f = f"spec.podFailurePolicy.rules[{i}]"
            if rule.get("action") not in ("FailJob", "FailIndex", "Ignore", "Count"):
                bad(f"{f}.action", f'Unsupported value: {json.dumps(rule.get("action"))}: supported values: "Count", "FailIndex", "FailJob", "Ignore"', "FieldValueNotSupported")
            if ("onExitCodes" in rule) == ("onPodConditions" in rule):
                bad(f, "Invalid value: specifying one of OnExitCodes and OnPodConditions is required")
            if "onExitCodes" in rule:
                req = rule["onExitCodes"] or {}
                if req.get("operator") not in ("In", "NotIn"):
                    bad(f"{f}.onExitCodes.operator", f'Unsupported value: {json.dumps(req.get("operator"))}: supported values: "In", "NotIn"', "FieldValueNotSupported")
                values = req.get("values") or []
                if not values:
                    bad(f"{f}.onExitCodes.values", "Invalid value: at least one value is required")
                if req.get("operator") == "In" and 0 in values:
                    bad(f"{f}.onExitCodes.values[{values.index(0)}]", "Invalid value: 0: must not be 0 for the In operator")
            for j, cond in enumerate(rule.get("onPodConditions") or []):
                if cond.get("status") not in ("True", "False", "Unknown"):
                    bad(f"{f}.onPodConditions[{j}].status", f'Unsupported value: {json.dumps(cond.get("status", ""))}: supported values: "False", "True", "Unknown"', "FieldValueNotSupported")
                if not cond.get("type"):
                    bad(f"{f}.onPodConditions[{j}].type", "Required value", "FieldValueRequired")
    return causes


# ---------------------------------------------------------------------------------------------
# Watches.


@dataclasses.dataclass(eq=False)
class _Watcher:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    key: tuple[str, str]
    namespace: str | None
    labels: Callable[[Mapping[str, str]], bool]
    fields: Callable[[dict], bool]

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        return ((self.namespace is None or meta.get("namespace") == self.namespace)
                and self.labels(meta.get("labels") or {}) and self.fields(obj))

    def translate(self, etype: str, obj: dict, old: dict | None) -> dict | None:
        """An event as seen through this watch's selectors (objects entering/leaving them)."""
        new_ok, old_ok = self.matches(obj), self.matches(old)
        if etype == "ADDED":
            return {"type": "ADDED", "object": obj} if new_ok else None
        if etype == "DELETED":
            return {"type": "DELETED", "object": obj} if new_ok or old_ok else None
        if new_ok and old_ok:
            return {"type": "MODIFIED", "object": obj}
        if new_ok:
            return {"type": "ADDED", "object": obj}
        if old_ok:
            return {"type": "DELETED", "object": obj}
        return None


_CLOSE = object()

# ---------------------------------------------------------------------------------------------
# The emulator.

Key = tuple[str, str | None, str]  # (group/plural storage key as "group/plural", namespace, name)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """The API-server stand-in. Start it with :meth:`start` (background thread) or use the
    ``kube`` fixture. Thread-safe Python helpers: :meth:`create`, :meth:`get`, :meth:`list`,
    :meth:`patch`, :meth:`delete`, :meth:`register_crd`, :meth:`wait_for`."""

    history_size: int = 20_000        # watch events kept for resumption by resourceVersion
    auto_namespaces: bool = False     # create missing namespaces on the fly (not what k8s does)
    record_requests: bool = True      # keep kmock's request log (turn off for benchmarks)
    internal_errors: list[BaseException] = attrs.field(factory=list, init=False)  # emulator bugs

    _types: dict[tuple[str, str, str], ResType] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str], dict[tuple[str | None, str], dict]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False)
    _rv: int = attrs.field(default=1, init=False)
    _history: collections.deque = attrs.field(init=False, default=None)
    _history_floor: int = attrs.field(default=0, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _listeners: list[Callable[[str, dict, dict | None], None]] = attrs.field(factory=list, init=False)
    _mutex: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _uids: dict[str, tuple[tuple[str, str], str | None, str]] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[tuple[tuple[str, str], str | None, str]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)
    graceful_pods: bool = attrs.field(default=False, init=False)  # set by an attached kubelet
    log_provider: Callable[[str | None, str], str] | None = attrs.field(default=None, init=False)  # pods/log
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _stopping: Any = attrs.field(default=None, init=False)
    _url: str | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # No kmock fallbacks: unmatched requests come to _serve() (see _handle). Test-defined
        # kmock reactions (kube['get /x'] << 500) still take precedence.
        self._history = collections.deque(maxlen=self.history_size)
        for rt in _builtin_types():
            self._types[(rt.group, rt.version, rt.plural)] = rt
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._create(self._type("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # ----- running ------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int | None = None) -> "KubeEmulator":
        """Serve in a background thread with its own event loop; returns when it is listening."""
        ready = threading.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            try:
                async with self, kmock.Server(self, host=host, port=port) as server:
                    self._url = str(server.url).rstrip("/")
                    ready.set()
                    await self._stopping.wait()
                    self.close_watches()
                    await asyncio.sleep(0.05)
            except BaseException as e:  # pragma: no cover
                errors.append(e)
                ready.set()
                raise

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="kube-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            self._thread = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the emulator is not started"
        return self._loop

    @property
    def url(self) -> str:  # type: ignore[override]
        if self._url is None and self.servers:  # served in-loop: `async with kube, kmock.Server(kube)`
            return str(self.servers[0].url).rstrip("/")
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    def call(self, coro: Any, timeout: float | None = 30) -> Any:
        """Run a coroutine on the emulator's loop from another thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # ----- resource types -----------------------------------------------------------------

    def _type(self, group: str, version: str, plural: str) -> ResType:
        rt = self._types.get((group, version, plural))
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        return rt

    def resolve(self, ref: str) -> ResType:
        """`pods`, `po`, `Job`, `jobs.batch`, `batch/v1/jobs`, `v1/pods`, `vt`, `videotranscodes`."""
        with self._mutex:
            parts = ref.split("/")
            if len(parts) == 3:
                return self._type(parts[0], parts[1], parts[2])
            if len(parts) == 2:
                return self._type("", parts[0], parts[1])
            name, _, group = ref.partition(".")
            for rt in self._types.values():
                if group and rt.group != group:
                    continue
                if name.lower() in (rt.plural, rt.singular, rt.kind.lower(), *rt.shortnames):
                    return rt
            raise KeyError(ref)

    def _type_for(self, obj: Mapping) -> ResType:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, version = api_version.rsplit("/", 1) if "/" in api_version else ("", api_version)
        for rt in self._types.values():
            if (rt.group, rt.version, rt.kind) == (group, version, kind):
                return rt
        raise KeyError(f"{api_version} {kind}")

    def _register_crd(self, crd: dict) -> None:
        spec, names = crd.get("spec", {}), crd.get("spec", {}).get("names", {})
        for v in spec.get("versions", []):
            if not v.get("served", True):
                continue
            rt = ResType(spec["group"], v["name"], names["plural"], names["kind"],
                         names.get("singular") or names["kind"].lower(), spec.get("scope") == "Namespaced",
                         ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
                         names.get("shortNames", []), names.get("categories", []),
                         set(v.get("subresources", {}) or {}) & {"status", "scale"},
                         (v.get("schema") or {}).get("openAPIV3Schema"), v.get("additionalPrinterColumns"), True,
                         [f["jsonPath"].lstrip(".") for f in v.get("selectableFields") or []])
            self._types[(rt.group, rt.version, rt.plural)] = rt

    def _unregister_crd(self, crd: dict) -> None:
        spec = crd.get("spec", {})
        key = (spec.get("group"), spec.get("names", {}).get("plural"))
        for k in [k for k, rt in self._types.items() if rt.custom and rt.key == key]:
            del self._types[k]
        for (ns, name) in list(self._store.get(key, {})):
            self._finalize(key, ns, name)

    # ----- the store: every write goes through _commit ------------------------------------

    def _get(self, rt: ResType, ns: str | None, name: str) -> dict:
        obj = self._store[rt.key].get((ns if rt.namespaced else None, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found',
                           {"name": name, "group": rt.group, "kind": rt.plural})
        return obj

    def _commit(self, key: tuple[str, str], etype: str, obj: dict, old: dict | None) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        nskey = (meta.get("namespace"), meta["name"])
        if etype == "DELETED":
            self._store[key].pop(nskey, None)
            self._uids.pop(meta["uid"], None)
        else:
            self._store[key][nskey] = obj
            self._uids[meta["uid"]] = (key, *nskey)
        old_owners = {r.get("uid") for r in ((old or {}).get("metadata", {}).get("ownerReferences") or [])}
        new_owners = set() if etype == "DELETED" else {r.get("uid") for r in (meta.get("ownerReferences") or [])}
        for uid in old_owners - new_owners:
            self._dependents[uid].discard((key, *nskey))
        for uid in new_owners - old_owners:
            self._dependents[uid].add((key, *nskey))
        if len(self._history) == self._history.maxlen:
            self._history_floor = self._history[0][0]
        self._history.append((self._rv, key, etype, obj, old))
        for w in list(self._watchers):
            if w.key == key:
                ev = w.translate(etype, obj, old)
                if ev is not None:
                    w.loop.call_soon_threadsafe(w.queue.put_nowait, ev)
        for listener in list(self._listeners):
            listener(etype, obj, old)
        return obj

    def subscribe(self, listener: Callable[[str, dict, dict | None], None]) -> Callable[[], None]:
        """In-process watch of every change: listener(type, obj, old), called under the store
        lock from the writing thread — it must only hand the event over (e.g. to a queue)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _check_namespace(self, rt: ResType, ns: str | None) -> None:
        if not rt.namespaced:
            return
        if ns is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})
        if (None, ns) not in self._store[("", "namespaces")]:
            if not self.auto_namespaces:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                               {"name": ns, "kind": "namespaces"})
            self._create(self._type("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    def _admit(self, rt: ResType, obj: dict, params: Mapping[str, str], warnings: list[str]) -> dict:
        """Unknown metadata fields (all kinds) and, for custom resources, unknown fields anywhere
        are dropped (Warn/Ignore) or refused (Strict); then defaults and schema validation."""
        unknown = [f"metadata.{k}" for k in obj["metadata"] if k not in _OBJECT_META]
        obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k in _OBJECT_META}}
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        pruned = prune_and_default(body, rt.schema, "", unknown) if rt.custom and rt.schema else body
        mode = params.get("fieldValidation", "Warn")
        if unknown and mode == "Strict":
            raise ApiError(400, "BadRequest", f"{rt.kind} in version \"{rt.version}\" cannot be handled as a "
                           f"{rt.kind}: strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))
        if unknown and mode == "Warn":
            warnings.extend(f'unknown field "{u}"' for u in unknown)
        result = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": obj["metadata"], **pruned}
        if not rt.custom or not rt.schema:
            return result
        schema = dict(rt.schema)
        schema_props = dict(schema.get("properties") or {})
        for k in ("apiVersion", "kind", "metadata"):
            schema_props.pop(k, None)
        schema["properties"] = schema_props
        causes = validation_causes({k: v for k, v in result.items() if k not in ("apiVersion", "kind", "metadata")}, schema)
        if causes:
            raise invalid(rt, obj["metadata"].get("name", ""), causes)
        return result

    def _create(self, rt: ResType, ns: str | None, body: dict, params: Mapping[str, str] | None = None,
                warnings: list[str] | None = None) -> dict:
        params, warnings = params or {}, warnings if warnings is not None else []
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if ns is not None and meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            ns = ns or meta.get("namespace")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = None
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        name = meta.get("name")
        kind_q = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
        if not name:
            raise ApiError(422, "Invalid", f"{kind_q} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                           {"group": rt.group, "kind": rt.kind, "causes": [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}]})
        if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            raise invalid(rt, name, [{"reason": "FieldValueInvalid", "field": "metadata.name", "message":
                          f"Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"}])
        with self._mutex:
            self._check_namespace(rt, ns)
            if (ns, name) in self._store[rt.key]:
                raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists',
                               {"name": name, "group": rt.group, "kind": rt.plural})
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "uid", "creationTimestamp", "generation", "managedFields"):
                meta.pop(k, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_iso()
            if "status" in rt.subresources:
                obj.pop("status", None)
            if rt.custom or ("spec" in obj and rt.plural != "namespaces"):
                meta["generation"] = 1
            obj = builtin_defaults(rt, obj)
            obj = self._admit(rt, obj, params, warnings)
            if rt.plural == "namespaces" and not rt.group:
                obj.setdefault("spec", {"finalizers": ["kubernetes"]})
                obj["status"] = {"phase": "Active"}
                obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            if rt.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                obj["status"] = self._crd_status(obj)
            if rt.plural == "pods" and not rt.group:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            if params.get("dryRun"):
                return obj
            self._commit(rt.key, "ADDED", obj, None)
            if rt.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._register_crd(obj)
            return obj

    @staticmethod
    def _crd_status(crd: dict) -> dict:
        t = now_iso()
        return {"acceptedNames": crd.get("spec", {}).get("names", {}),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t}],
                "storedVersions": [v["name"] for v in crd.get("spec", {}).get("versions", []) if v.get("storage")]}

    def _update(self, rt: ResType, ns: str | None, name: str, mutate: Callable[[dict], dict],
                subresource: str | None, params: Mapping[str, str] | None = None,
                warnings: list[str] | None = None, precondition_rv: str | None = None) -> dict:
        """Read-modify-write under the lock: the common path of PUT and every PATCH flavour."""
        params, warnings = params or {}, warnings if warnings is not None else []
        with self._mutex:
            old = self._get(rt, ns, name)
            candidate = mutate(copy.deepcopy(old))
            if not isinstance(candidate, dict):
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
            cmeta = candidate.get("metadata") or {}
            sent_rv = precondition_rv or cmeta.get("resourceVersion")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
                               "modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": rt.group, "kind": rt.plural})
            if subresource is not None and subresource not in rt.subresources:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            if subresource == "status":
                new = copy.deepcopy(old)
                if "status" in candidate:
                    new["status"] = candidate["status"]
                else:
                    new.pop("status", None)
            else:
                new = candidate
                new["apiVersion"], new["kind"] = rt.api_version, rt.kind
                meta = new.setdefault("metadata", {})
                for k in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp",
                          "deletionGracePeriodSeconds", "generation"):
                    if k in old["metadata"]:
                        meta[k] = old["metadata"][k]
                    else:
                        meta.pop(k, None)
                if "status" in rt.subresources:
                    if "status" in old:
                        new["status"] = old["status"]
                    else:
                        new.pop("status", None)
                added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
                if old["metadata"].get("deletionTimestamp") and added:
                    raise invalid(rt, name, [{"reason": "FieldValueForbidden", "field": "metadata.finalizers",
                                  "message": "Forbidden: no new finalizers can be added if the object is being deleted, "
                                  f"found new finalizers {json.dumps(sorted(added))}"}])
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if subresource is None:
                new = builtin_defaults(rt, new, old)
            new = self._admit(rt, new, params, warnings)
            if "generation" in old["metadata"]:
                strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}
                if strip(new) != strip(old):
                    new["metadata"]["generation"] = old["metadata"]["generation"] + 1
            if new == old or params.get("dryRun"):
                return new
            self._commit(rt.key, "MODIFIED", new, old)
            if rt.key == ("apiextensions.k8s.io", "customresourcedefinitions") and subresource is None:
                self._register_crd(new)
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
                self._finalize(rt.key, meta.get("namespace"), name)
            return new

    def _replace(self, rt: ResType, ns: str | None, name: str, body: dict, subresource: str | None,
                 params: Mapping[str, str], warnings: list[str]) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        if body.get("metadata", {}).get("name") not in (None, name):
            raise ApiError(400, "BadRequest", f'the name of the object ({body["metadata"]["name"]}) does not match the name on the URL ({name})')
        if rt.custom and not body.get("metadata", {}).get("resourceVersion"):
            raise invalid(rt, name, [{"reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                                      "message": "Invalid value: 0x0: must be specified for an update"}])
        return self._update(rt, ns, name, lambda old: copy.deepcopy(body), subresource, params, warnings)

    def _patch(self, rt: ResType, ns: str | None, name: str, ctype: str, patch: Any, subresource: str | None,
               params: Mapping[str, str], warnings: list[str]) -> dict:
        ctype = ctype.split(";")[0].strip()
        precondition = None
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")

            def mutate(old: dict) -> dict:
                try:
                    return json_patch(old, patch)
                except ValueError as e:
                    raise ApiError(422, "Invalid", str(e), {}) from None
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"):
            if ctype == "application/strategic-merge-patch+json" and rt.custom:
                raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml')
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
            precondition = (patch.get("metadata") or {}).get("resourceVersion")
            fn = merge_patch if rt.custom or ctype == "application/merge-patch+json" else strategic_merge_patch
            mutate = lambda old: fn(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml')
        return self._update(rt, ns, name, mutate, subresource, params, warnings, precondition)

    # ----- deletion and garbage collection ------------------------------------------------

    def _delete(self, rt: ResType, ns: str | None, name: str, options: Mapping[str, Any],
                warnings: list[str] | None = None) -> tuple[int, dict]:
        warnings = warnings if warnings is not None else []
        with self._mutex:
            obj = self._get(rt, ns, name)
            meta = obj["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": Precondition failed: '
                               f'UID in precondition: {pre["uid"]}, UID in object meta: {meta["uid"]}', {"name": name, "group": rt.group, "kind": rt.plural})
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": Precondition failed: '
                               f'ResourceVersion in precondition: {pre["resourceVersion"]}, ResourceVersion in object meta: {meta["resourceVersion"]}',
                               {"name": name, "group": rt.group, "kind": rt.plural})
            if options.get("dryRun"):
                return 200, obj
            policy = options.get("propagationPolicy")
            if policy is None and options.get("orphanDependents") is not None:
                policy = "Orphan" if options["orphanDependents"] else "Background"
            if policy is None:
                if rt.key == ("batch", "jobs"):
                    policy = "Orphan"
                    warnings.append("child pods are preserved by default when jobs are deleted; set "
                                    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning")
                else:
                    policy = "Background"
            if policy == "Orphan":
                for dep in list(self._dependents.get(meta["uid"], ())):
                    self._orphan(dep, meta["uid"])
            grace = options.get("gracePeriodSeconds")
            if meta.get("deletionTimestamp"):
                if grace == 0 and meta.get("deletionGracePeriodSeconds"):  # shortening the grace period
                    new = copy.deepcopy(obj)
                    new["metadata"]["deletionGracePeriodSeconds"] = 0
                    obj = self._commit(rt.key, "MODIFIED", new, obj)
                if not obj["metadata"].get("deletionGracePeriodSeconds") and not obj["metadata"].get("finalizers"):
                    self._finalize(rt.key, meta.get("namespace"), name)
                    return 200, obj
                return 202, obj
            pending = bool(meta.get("finalizers")) or (policy == "Foreground" and self._dependents.get(meta["uid"]))
            graceful = (rt.key == ("", "pods") and self.graceful_pods and obj.get("spec", {}).get("nodeName")
                        and obj.get("status", {}).get("phase") not in ("Succeeded", "Failed") and grace != 0)
            if rt.key == ("", "namespaces"):
                for key, objs in list(self._store.items()):
                    for (ons, oname) in list(objs):
                        if ons == name and (ons, oname) in self._store[key]:
                            ort = next(t for t in self._types.values() if t.key == key)
                            with contextlib.suppress(ApiError):
                                self._delete(ort, ons, oname, {"propagationPolicy": "Background", "gracePeriodSeconds": 0})
            if pending or graceful:
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = now_iso(0 if not graceful else grace or obj["spec"].get("terminationGracePeriodSeconds", 30))
                new["metadata"]["deletionGracePeriodSeconds"] = 0 if not graceful else (grace if grace is not None else obj["spec"].get("terminationGracePeriodSeconds", 30))
                if policy == "Foreground" and self._dependents.get(meta["uid"]):
                    new["metadata"]["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
                self._commit(rt.key, "MODIFIED", new, obj)
                if policy == "Foreground":
                    for dep in list(self._dependents.get(meta["uid"], ())):
                        self._delete_key(dep, {"propagationPolicy": "Foreground"})
                    self._release_foreground(meta["uid"])
                return 202, self._store[rt.key].get((meta.get("namespace"), name), new)
            self._finalize(rt.key, meta.get("namespace"), name)
            return 200, obj

    def _delete_key(self, key: tuple[tuple[str, str], str | None, str], options: Mapping[str, Any]) -> None:
        (group, plural), ns, name = key
        rt = next((t for t in self._types.values() if t.key == (group, plural)), None)
        if rt is not None:
            with contextlib.suppress(ApiError):
                self._delete(rt, ns, name, options)

    def _orphan(self, key: tuple[tuple[str, str], str | None, str], owner_uid: str) -> None:
        skey, ns, name = key
        old = self._store[skey].get((ns, name))
        if old is not None:
            new = copy.deepcopy(old)
            refs = [r for r in new["metadata"].get("ownerReferences", []) if r.get("uid") != owner_uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self._commit(skey, "MODIFIED", new, old)

    def _finalize(self, key: tuple[str, str], ns: str | None, name: str) -> None:
        """The object is gone for good: DELETED event, then the garbage collector's work."""
        obj = self._store[key].get((ns, name))
        if obj is None:
            return
        obj = copy.deepcopy(obj)
        self._commit(key, "DELETED", obj, self._store[key][(ns, name)])
        uid = obj["metadata"]["uid"]
        if key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._unregister_crd(obj)
        for dep in list(self._dependents.pop(uid, ())):  # background propagation
            self._delete_key(dep, {"propagationPolicy": "Background"})
        for ref in obj["metadata"].get("ownerReferences") or []:
            self._release_foreground(ref.get("uid"))

    def _release_foreground(self, owner_uid: str | None) -> None:
        loc = self._uids.get(owner_uid or "")
        if loc is None or self._dependents.get(owner_uid):
            return
        key, ns, name = loc
        owner = self._store[key].get((ns, name))
        fins = (owner or {}).get("metadata", {}).get("finalizers") or []
        if owner is not None and "foregroundDeletion" in fins:
            new = copy.deepcopy(owner)
            new["metadata"]["finalizers"] = [f for f in fins if f != "foregroundDeletion"]
            if not new["metadata"]["finalizers"]:
                del new["metadata"]["finalizers"]
            self._commit(key, "MODIFIED", new, owner)
            if not new["metadata"].get("finalizers"):
                self._finalize(key, ns, name)

    # ----- listing ------------------------------------------------------------------------

    def _selectors(self, rt: ResType, params: Mapping[str, str]) -> tuple[Callable[[Mapping[str, str]], bool], Callable[[dict], bool]]:
        allowed = {"metadata.name", "metadata.namespace"} | _FIELD_LABELS.get(rt.key, set()) | set(rt.selectable)
        for part in _split_top(params.get("fieldSelector") or ""):
            label = re.split(r"!=|==|=", part, maxsplit=1)[0].strip()
            if label not in allowed:
                raise ApiError(400, "BadRequest", f'field label not supported: {label}')
        try:
            return parse_label_selector(params.get("labelSelector")), parse_field_selector(params.get("fieldSelector"))
        except ValueError as e:
            raise ApiError(400, "BadRequest", str(e)) from None

    def _select(self, rt: ResType, ns: str | None, params: Mapping[str, str]) -> list[dict]:
        labels, fields = self._selectors(rt, params)
        items = [o for (ons, _), o in sorted(self._store[rt.key].items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
                 if (ns is None or ons == ns) and labels(o["metadata"].get("labels") or {}) and fields(o)]
        return items

    def _list(self, rt: ResType, ns: str | None, params: Mapping[str, str]) -> dict:
        with self._mutex:
            items = self._select(rt, ns, params)
            rv = str(self._rv)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if params.get("continue"):
            after = json.loads(base64.urlsafe_b64decode(params["continue"].encode()))
            items = [o for o in items if [o["metadata"].get("namespace") or "", o["metadata"]["name"]] > after]
        limit = int(params.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            last = [items[-1]["metadata"].get("namespace") or "", items[-1]["metadata"]["name"]]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(last).encode()).decode()
            meta["remainingItemCount"] = 0
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta,
                "items": [self._view(rt, o) for o in items]}

    @staticmethod
    def _view(rt: ResType, obj: dict) -> dict:
        return obj if obj.get("apiVersion") == rt.api_version else {**obj, "apiVersion": rt.api_version}

    # ----- watch streams ------------------------------------------------------------------

    def close_watches(self) -> None:
        """Drop every open watch stream (as an API server restart / timeout does)."""
        with self._mutex:
            for w in list(self._watchers):
                w.loop.call_soon_threadsafe(w.queue.put_nowait, _CLOSE)
            self._watchers.clear()

    def forget_history(self) -> None:
        """Compact the watch history: resuming from any older resourceVersion gets 410 Gone."""
        with self._mutex:
            self._history.clear()
            self._history_floor = self._rv

    async def _serve_watch(self, raw: aiohttp.web.BaseRequest, rt: ResType, ns: str | None,
                           params: dict[str, str]) -> aiohttp.web.StreamResponse:
        labels, fields = self._selectors(rt, params)
        w = _Watcher(asyncio.get_running_loop(), asyncio.Queue(), rt.key, ns, labels, fields)
        since = params.get("resourceVersion")
        with self._mutex:
            if since in (None, "", "0") or params.get("sendInitialEvents") == "true":
                initial = [{"type": "ADDED", "object": o} for o in self._select(rt, ns, params)]
                if params.get("sendInitialEvents") == "true":  # the watch-list protocol (KEP-3157)
                    initial.append({"type": "BOOKMARK", "object": {
                        "kind": rt.kind, "apiVersion": rt.api_version, "metadata": {
                            "resourceVersion": str(self._rv), "annotations": {"k8s.io/initial-events-end": "true"}}}})
            elif not since.isdigit() or int(since) < self._history_floor:
                initial = [{"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: {since} ({self._history_floor})").status()}]
            else:
                initial = [ev for (rv, key, etype, obj, old) in self._history
                           if rv > int(since) and key == rt.key and (ev := w.translate(etype, obj, old))]
            self._watchers.add(w)
        table = "as=Table" in raw.headers.get("Accept", "")
        first = True

        def render(ev: dict) -> bytes:
            nonlocal first
            obj = ev["object"]
            if ev["type"] not in ("ERROR", "BOOKMARK"):
                obj = self._view(rt, obj)
                if table:  # `kubectl get -w`: every event carries a one-row Table
                    obj = self._table(rt, [obj], params, {"resourceVersion": obj["metadata"]["resourceVersion"]})
                    if not first:
                        obj["columnDefinitions"] = []
                    first = False
            return json.dumps({"type": ev["type"], "object": obj}).encode() + b"\n"

        resp = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(raw)
        deadline = time.monotonic() + float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        try:
            for ev in initial:
                await resp.write(render(ev))
                if ev["type"] == "ERROR":
                    return resp
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    ev = await asyncio.wait_for(w.queue.get(), timeout)
                except TimeoutError:
                    break
                if ev is _CLOSE:
                    break
                await resp.write(render(ev))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._mutex:
                self._watchers.discard(w)
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    # ----- tables -------------------------------------------------------------------------

    def _columns(self, rt: ResType) -> list[tuple[dict, Callable[[dict], Any]]]:
        def col(name: str, type_: str = "string", priority: int = 0, fmt: str = "", desc: str = "") -> dict:
            return {"name": name, "type": type_, "format": fmt, "description": desc or name, "priority": priority}
        age = (col("Age", "date"), lambda o: o["metadata"].get("creationTimestamp"))
        name = (col("Name", fmt="name", desc="Name must be unique within a namespace."), lambda o: o["metadata"]["name"])
        if rt.custom:
            if not rt.columns:
                return [name, age]
            cols = [name]
            for c in rt.columns:
                def get(o: dict, c: dict = c) -> Any:
                    values = jsonpath(o, c["jsonPath"])
                    if not values:
                        return None
                    v = values[0] if len(values) == 1 else ",".join(map(str, values))
                    return v if not isinstance(v, (dict, list)) else json.dumps(v)
                cols.append((col(c["name"], c.get("type", "string"), c.get("priority", 0), c.get("format", ""),
                                 c.get("description", "")), get))
            return cols
        if rt.key == ("", "pods"):
            def ready(o: dict) -> str:
                cs = o.get("status", {}).get("containerStatuses") or []
                return f"{sum(1 for c in cs if c.get('ready'))}/{len(o.get('spec', {}).get('containers', []))}"
            def status(o: dict) -> str:
                if o["metadata"].get("deletionTimestamp"):
                    return "Terminating"
                for c in o.get("status", {}).get("containerStatuses") or []:
                    st = c.get("state", {})
                    if "terminated" in st and o.get("status", {}).get("phase") not in ("Running",):
                        return st["terminated"].get("reason") or "Error"
                return o.get("status", {}).get("phase", "Pending")
            return [name, (col("Ready"), ready), (col("Status"), status),
                    (col("Restarts", "string"), lambda o: str(sum(c.get("restartCount", 0) for c in o.get("status", {}).get("containerStatuses") or []))),
                    age, (col("IP", priority=1), lambda o: o.get("status", {}).get("podIP", "<none>")),
                    (col("Node", priority=1), lambda o: o.get("spec", {}).get("nodeName", "<none>"))]
        if rt.key == ("batch", "jobs"):
            def jstatus(o: dict) -> str:
                conds = {c["type"]: c["status"] for c in o.get("status", {}).get("conditions") or []}
                for t in ("Complete", "Failed", "FailureTarget", "Suspended"):
                    if conds.get(t) == "True":
                        return {"FailureTarget": "FailureTarget"}.get(t, t)
                return "Running"
            return [name, (col("Status"), jstatus),
                    (col("Completions"), lambda o: f"{o.get('status', {}).get('succeeded', 0)}/{o.get('spec', {}).get('completions', 1)}"),
                    (col("Duration"), lambda o: o.get("status", {}).get("completionTime") or ""), age,
                    (col("Containers", priority=1), lambda o: ",".join(c["name"] for c in o["spec"]["template"]["spec"]["containers"])),
                    (col("Images", priority=1), lambda o: ",".join(c.get("image", "") for c in o["spec"]["template"]["spec"]["containers"]))]
        if rt.key == ("", "events"):
            return [(col("Last Seen", "date"), lambda o: o.get("lastTimestamp") or o.get("eventTime")),
                    (col("Type"), lambda o: o.get("type")), (col("Reason"), lambda o: o.get("reason")),
                    (col("Object"), lambda o: f"{o.get('involvedObject', {}).get('kind', '').lower()}/{o.get('involvedObject', {}).get('name')}"),
                    (col("Message"), lambda o: o.get("message"))]
        if rt.key == ("", "namespaces"):
            return [name, (col("Status"), lambda o: o.get("status", {}).get("phase")), age]
        return [name, age]

    def _table(self, rt: ResType, objs: list[dict], params: Mapping[str, str], meta: dict) -> dict:
        cols = self._columns(rt)
        include = params.get("includeObject", "Metadata")
        rows = []
        for o in objs:
            row: dict[str, Any] = {"cells": [human_age(fn(o)) if c["type"] == "date" else fn(o) for c, fn in cols]}
            if include == "Object":
                row["object"] = self._view(rt, o)
            elif include == "Metadata":
                row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "columnDefinitions": [c for c, _ in cols], "rows": rows}

    # ----- discovery ----------------------------------------------------------------------

    def _discovery(self, parts: list[str]) -> dict | None:
        with self._mutex:
            types = list(self._types.values())
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}
        if parts == ["api", "v1"]:
            return {"kind": "APIResourceList", "groupVersion": "v1",
                    "resources": [r for t in types if t.group == "" for r in t.discovery()]}
        groups: dict[str, list[str]] = {}
        for t in types:
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)

        def group_doc(g: str) -> dict:
            versions = sorted(groups[g], key=lambda v: (not v.startswith("v1") or "alpha" in v or "beta" in v, v))
            return {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in versions],
                    "preferredVersion": {"groupVersion": f"{g}/{versions[0]}", "version": versions[0]}}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(parts[1])}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], []):
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{parts[1]}/{parts[2]}",
                    "resources": [r for t in types if (t.group, t.version) == (parts[1], parts[2]) for r in t.discovery()]}
        return None

    def _openapi_v3(self, gv: list[str]) -> dict | None:
        """Just enough OpenAPI v3 for kubectl: each resource's PATCH operation declares the
        `fieldValidation` query parameter (so `kubectl apply` uses server-side field validation,
        like against a real server) and no strategic-merge media type (so kubectl builds
        strategic patches from its compiled-in types, or merge patches for custom resources).
        No schemas: `kubectl explain` does not work."""
        with self._mutex:
            types = list(self._types.values())
        if not gv:
            gvs = {f"apis/{t.group}/{t.version}" if t.group else f"api/{t.version}" for t in types}
            return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={self._rv}"} for p in sorted(gvs)}}
        group, version = ("", gv[1]) if gv[0] == "api" and len(gv) == 2 else (gv[1], gv[2]) if len(gv) == 3 else (None, None)
        paths = {}
        for t in types:
            if (t.group, t.version) != (group, version):
                continue
            prefix = f"/apis/{t.group}/{t.version}" if t.group else f"/api/{t.version}"
            item = f"{prefix}/namespaces/{{namespace}}/{t.plural}/{{name}}" if t.namespaced else f"{prefix}/{t.plural}/{{name}}"
            op = {"x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
                  "x-kubernetes-action": "patch", "operationId": f"patch{t.kind}",
                  "parameters": [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                                 for n in ("dryRun", "fieldManager", "fieldValidation", "force")],
                  "requestBody": {"content": {m: {"schema": {"type": "object"}} for m in (
                      "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")}},
                  "responses": {"200": {"description": "OK"}}}
            paths[item] = {"patch": op}
        if not paths:
            return None
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.37.0"}, "paths": paths,
                "components": {"schemas": {}}}

    # ----- HTTP ---------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's own parser fails on valid paths such as /api/v1/namespaces; keep its request
        # log and DSL where it can parse, serve everything ourselves otherwise.
        await raw_request.read()
        try:
            request = await rendering.Request._parse(raw_request, id=len(self._requests))
        except Exception:
            request = rendering.Request(id=len(self._requests), raw_request=raw_request, url=raw_request.url,
                                        method=raw_request.method, params=dict(raw_request.query),
                                        headers=dict(raw_request.headers), body=await raw_request.read())
        if self.record_requests:
            self._requests.append(request)
        try:
            return await self._handle(request)
        except ApiError as e:
            return aiohttp.web.json_response(e.status(), status=e.code)
        except rendering.StreamingError as e:  # a test-defined streaming reaction failed
            return e.args[0]
        except Exception as e:  # an emulator bug: answer like the API server's 500, keep it visible
            self.internal_errors.append(e)
            err = ApiError(500, "InternalError", f"emulator error: {e!r}", {"causes": [{"message": traceback.format_exc()}]})
            return aiohttp.web.json_response(err.status(), status=500)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if self._payloads:  # test-defined kmock reactions first
            try:
                return await apps.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
        assert request._raw_request is not None
        return await self._serve(request._raw_request)

    async def _serve(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        params = dict(raw.query)
        parts = [p for p in raw.path.split("/") if p]
        warnings: list[str] = []

        def reply(body: Any, status: int = 200) -> aiohttp.web.Response:
            headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
            return aiohttp.web.Response(text=json.dumps(body), status=status, content_type="application/json", headers=headers)

        if raw.path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if raw.path == "/version":
            return reply({"major": "1", "minor": "37", "gitVersion": "v1.37.0-lectern-emulator", "platform": "linux/amd64"})
        if raw.method == "GET" and (doc := self._discovery(parts)) is not None:
            return reply(doc)
        if raw.method == "GET" and parts[:2] == ["openapi", "v3"] and (doc := self._openapi_v3(parts[2:])) is not None:
            return reply(doc)

        # /api/v1/... or /apis/<group>/<version>/...
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        rt = self._type(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = "/".join(rest[2:]) or None
        if rt.namespaced is False:
            ns = None
        body: Any = None
        if raw.headers.get("Content-Type", "").startswith(("application/vnd.kubernetes.protobuf", "application/cbor")):
            raise ApiError(415, "UnsupportedMediaType", "the emulator speaks JSON only: kubectl's typed commands "
                           "(create configmap/secret/job, run) send protobuf; use `kubectl apply/create -f` instead")
        if raw.can_read_body or raw.body_exists:
            text = (await raw.read()).decode()
            if text.strip():
                ctype = raw.headers.get("Content-Type", "")
                try:
                    body = yaml.safe_load(text) if "yaml" in ctype else json.loads(text)
                except ValueError as e:
                    raise ApiError(400, "BadRequest", f"the body of the request was in an unknown format: {e}") from None

        if raw.method == "GET" and rt.key == ("", "pods") and sub == "log":
            with self._mutex:
                self._get(rt, ns, name)
            text = self.log_provider(ns, name) if self.log_provider else ""
            return aiohttp.web.Response(text=text or "", content_type="text/plain")
        if raw.method == "GET":
            # The real API server parses `watch` like any bool query parameter: everything but
            # "0"/"false" (any case) is true, also "True" (the Python client) and an empty value.
            if params.get("watch") is not None and params["watch"].lower() not in ("0", "false"):
                if name:
                    params["fieldSelector"] = ",".join(filter(None, [params.get("fieldSelector"), f"metadata.name={name}"]))
                return await self._serve_watch(raw, rt, ns, params)
            wants_table = "as=Table" in raw.headers.get("Accept", "")
            if name:
                with self._mutex:
                    obj = self._view(rt, self._get(rt, ns, name))
                if wants_table:
                    return reply(self._table(rt, [obj], params, {"resourceVersion": obj["metadata"]["resourceVersion"]}))
                return reply(obj)
            listing = self._list(rt, ns, params)
            if wants_table:
                return reply(self._table(rt, listing["items"], params, listing["metadata"]))
            return reply(listing)
        if raw.method == "POST" and name is None:
            return reply(self._create(rt, ns, body, params, warnings), 201)
        if raw.method == "POST" and rt.key == ("", "pods") and sub == "eviction":
            self.evict(name, ns)
            return reply({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201)
        if raw.method == "PUT" and name:
            return reply(self._replace(rt, ns, name, body, sub, params, warnings))
        if raw.method == "PATCH" and name:
            ctype = raw.headers.get("Content-Type", "")
            if ctype.startswith("application/apply-patch"):
                with self._mutex:
                    exists = (ns if rt.namespaced else None, name) in self._store[rt.key]
                    if not exists:
                        return reply(self._create(rt, ns, {**(body or {}), "metadata": {**(body or {}).get("metadata", {}), "name": name}}, params, warnings), 201)
            return reply(self._patch(rt, ns, name, ctype, body, sub, params, warnings))
        if raw.method == "DELETE":
            options = dict(body or {})
            for k in ("propagationPolicy", "dryRun"):
                if k in params:
                    options.setdefault(k, params[k])
            if "gracePeriodSeconds" in params:
                options.setdefault("gracePeriodSeconds", int(params["gracePeriodSeconds"]))
            if name:
                code, obj = self._delete(rt, ns, name, options, warnings)
                if code == 200 and not rt.custom and rt.key not in (("", "pods"), ("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")):
                    # Most built-in registries answer an immediate delete with a Status.
                    return reply({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj["metadata"]["uid"]}})
                return reply(self._view(rt, obj), code)
            with self._mutex:
                victims = self._select(rt, ns, params)
            for v in victims:  # deletecollection
                with contextlib.suppress(ApiError):
                    self._delete(rt, v["metadata"].get("namespace"), v["metadata"]["name"], options, warnings)
            return reply({"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {}, "items": victims})
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})

    # ----- thread-safe helpers for tests --------------------------------------------------

    def create(self, obj: Mapping, namespace: str | None = None) -> dict:
        rt = self._type_for(obj)
        return copy.deepcopy(self._create(rt, namespace or obj.get("metadata", {}).get("namespace"), dict(obj)))

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        rt = self.resolve(resource)
        with self._mutex:
            obj = self._store[rt.key].get((namespace if rt.namespaced else None, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None, labels: str | None = None,
             fields: str | None = None) -> list[dict]:
        rt = self.resolve(resource)
        with self._mutex:
            params = {k: v for k, v in {"labelSelector": labels, "fieldSelector": fields}.items() if v}
            return copy.deepcopy(self._select(rt, namespace, params))

    def patch(self, resource: str, name: str, patch: Any, namespace: str | None = None,
              subresource: str | None = None, content_type: str = "application/merge-patch+json") -> dict:
        rt = self.resolve(resource)
        return copy.deepcopy(self._patch(rt, namespace, name, content_type, patch, subresource, {}, []))

    def delete(self, resource: str, name: str, namespace: str | None = None,
               propagation: str | None = "Background", grace: int | None = None) -> None:
        """Delete like `kubectl delete` (Background propagation); propagation=None gives the
        REST default (which orphans a batch/v1 Job's pods), grace=0 a forced pod deletion."""
        rt = self.resolve(resource)
        options: dict[str, Any] = {"propagationPolicy": propagation} if propagation else {}
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        self._delete(rt, namespace, name, options)

    def evict(self, pod: str, namespace: str | None = None) -> None:
        """What the Eviction API does: DisruptionTarget=True on the pod, then a graceful delete."""
        rt = self._type("", "v1", "pods")
        with self._mutex:
            obj = self._get(rt, namespace, pod)
            conds = [c for c in obj.get("status", {}).get("conditions", []) if c.get("type") != "DisruptionTarget"]
            conds.append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                          "message": "Eviction API: evicting", "lastTransitionTime": now_iso()})
            self._patch(rt, namespace, pod, "application/merge-patch+json", {"status": {"conditions": conds}}, "status", {}, [])
            self._delete(rt, namespace, pod, {})

    def ensure_namespace(self, name: str) -> dict:
        with self._mutex:
            existing = self._store[("", "namespaces")].get((None, name))
            return copy.deepcopy(existing) if existing else self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def register_crd(self, crd: Mapping | str | pathlib.Path) -> dict:
        """Create a CRD from a dict, a YAML file path, or YAML text (first CRD document)."""
        if isinstance(crd, pathlib.Path) or (isinstance(crd, str) and "\n" not in crd and pathlib.Path(crd).exists()):
            crd = pathlib.Path(crd).read_text()
        if isinstance(crd, str):
            docs = [d for d in yaml.safe_load_all(crd) if d and d.get("kind") == "CustomResourceDefinition"]
            for extra in docs[1:]:
                self.create(extra)
            crd = docs[0]
        return self.create(crd)

    def events(self, obj: Mapping | None = None, reason: str | None = None) -> list[dict]:
        """core/v1 Events, optionally about one object (by uid) and/or with one reason."""
        with self._mutex:
            evs = [copy.deepcopy(e) for e in self._store[("", "events")].values()]
        if obj is not None:
            evs = [e for e in evs if e.get("involvedObject", {}).get("uid") == obj["metadata"]["uid"]]
        if reason is not None:
            evs = [e for e in evs if e.get("reason") == reason]
        return sorted(evs, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def wait_for(self, resource: str, name: str, namespace: str | None = None,
                 predicate: Callable[[dict | None], bool] = lambda o: o is not None,
                 timeout: float = 10.0, interval: float = 0.02) -> dict | None:
        """Poll until predicate(object-or-None) holds; returns the object. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(resource, name, namespace)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{resource} {namespace}/{name}: condition not met in {timeout}s; last: {json.dumps(obj)[:2000]}")
            time.sleep(interval)

    async def await_for(self, resource: str, name: str, namespace: str | None = None,
                        predicate: Callable[[dict | None], bool] = lambda o: o is not None,
                        timeout: float = 10.0, interval: float = 0.02) -> dict | None:
        """The async twin of :meth:`wait_for` (for async tests)."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(resource, name, namespace)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{resource} {namespace}/{name}: condition not met in {timeout}s; last: {json.dumps(obj)[:2000]}")
            await asyncio.sleep(interval)

    @property
    def objects(self) -> Any:  # type: ignore[override]
        raise AttributeError("kmock's `objects` store is not used by this emulator: "
                             "use kube.get()/kube.list()/kube.iter_objects() (plain dicts)")

    @property
    def resource_version(self) -> int:
        return self._rv

    def iter_objects(self) -> Iterator[dict]:
        with self._mutex:
            snapshot = [o for objs in self._store.values() for o in objs.values()]
        yield from snapshot


@contextlib.contextmanager
def running_emulator(**kwargs: Any) -> Iterator[KubeEmulator]:
    kube = KubeEmulator(**kwargs).start()
    try:
        yield kube
    finally:
        kube.stop()
