"""Generate the `VideoTranscode` CustomResourceDefinition from the pydantic models.

    lectern-crds            print the CRD YAML
    lectern-crds --write    write crds/<name>.yaml and helm/lectern/crds/<name>.yaml
    lectern-crds --check    exit 1 if either checked-in file differs from what the models give

pydantic emits JSON Schema (2020-12); the API server wants a *structural* OpenAPI v3 schema:
every `$ref` inlined, no `anyOf` with `null` (→ `nullable: true`), no `title`, no
`additionalProperties: false` next to `properties` (unknown fields are pruned instead), `const`
spelled as a one-value `enum`. `openapi_to_jsonschema` goes the other way for tests and for
code that wants to validate a manifest before sending it.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from lectern_operator.api import v1alpha1 as api

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
FILE_NAME = f"{CRD_NAME}.yaml"
REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = (Path("crds") / FILE_NAME, Path("helm/lectern/crds") / FILE_NAME)

_KEEP = {
    "type", "format", "description", "properties", "items", "required", "enum", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "default", "nullable",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _resolve(target, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any], *, keep_defaults: bool) -> dict[str, Any]:
    node = dict(node)
    # Optional[X] -> X + nullable
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = node.pop(key)
            non_null = [o for o in options if o.get("type") != "null"]
            if len(non_null) != 1:
                raise ValueError(f"cannot express a union of {len(non_null)} types structurally: {options}")
            merged = dict(non_null[0])
            for k, v in node.items():  # description/default of the outer node win
                merged[k] = v
            if len(non_null) < len(options):
                merged["nullable"] = True
            node = merged
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "string" if all(isinstance(v, str) for v in node["enum"]) else "integer"
    if "default" in node and (node["default"] is None or not keep_defaults):
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "description":
            value = " ".join(str(value).split())
        elif key == "properties":
            value = {k: _structural(v, keep_defaults=keep_defaults) for k, v in value.items()}
        elif key == "items":
            value = _structural(value, keep_defaults=keep_defaults)
        out[key] = value
    if out.get("type") == "object" and "properties" not in out:
        # a free-form object (none in the API today): keep whatever is sent
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "required" in out:
        out["required"] = sorted(out["required"])
    return out


def model_schema(model: type, *, keep_defaults: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs), keep_defaults=keep_defaults)


def openapi_schema() -> dict[str, Any]:
    spec = model_schema(api.VideoTranscodeSpec, keep_defaults=True)
    status = model_schema(api.VideoTranscodeStatus, keep_defaults=False)
    # Conditions are a map keyed by type (server-side apply merges them per type).
    # A transcode is of one upload of one lecture: those fields never change (CEL, enforced
    # by the API server from 1.25 on); priority and the overrides may (a queued one re-sorts).
    for field in ("lectureId", "instructorId", "rawVideoUrl"):
        spec["properties"][field]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"{field} is immutable"}]
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    # The transcoder merge-patches status.report; unknown extra keys it may add later are
    # pruned, which is what we want (the operator reads only the known ones).
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "lectern"},
            "annotations": {"media.lectern.dev/generated-by": "lectern-crds (operator/api/crd.py); do not edit"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Lecture", "type": "string", "jsonPath": ".spec.lectureId"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "integer", "jsonPath": ".status.progress"},
                        {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
                        {"name": "Video URL", "type": "string", "jsonPath": ".status.videoUrl", "priority": 1},
                        {"name": "HLS URL", "type": "string", "jsonPath": ".status.hlsUrl", "priority": 1},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `lectern-crds --write` from operator/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def openapi_to_jsonschema(node: Any) -> Any:
    """The CRD's OpenAPI v3 subset -> plain JSON Schema (for `jsonschema` validation)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def jsonschema_for_crd(crd_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = crd_doc or crd()
    return openapi_to_jsonschema(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lectern-crds", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the checked-in CRD files")
    mode.add_argument("--check", action="store_true", help="exit 1 when the checked-in files drifted")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    text = render()
    if not (args.write or args.check):
        sys.stdout.write(text)
        return 0
    drift = False
    for rel in TARGETS:
        path = args.root / rel
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel}")
            continue
        current = path.read_text() if path.exists() else ""
        if current != text:
            drift = True
            sys.stderr.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{rel} (checked in)", tofile=f"{rel} (from the models)"))
            print(f"{rel} drifted from the models: run `lectern-crds --write`", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
