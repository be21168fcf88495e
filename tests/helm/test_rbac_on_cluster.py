"""The chart installed for real: `helm install` (real helm 4) into a fresh namespace of the real
local cluster (Pod Security `restricted`, RBAC enforced), the ServiceAccounts' permissions asked
of the real authorizer with `kubectl auth can-i --as`, and `helm uninstall` cleaning up.

The operator and intake pods are kept Pending (a nodeSelector no node has): they are created,
so Pod Security admission judges them, but they do not run (no Redis or MongoDB here)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.cluster_fixtures import kubectl_env
from tests.helm.conftest import CHART, RELEASE

PENDING = "lectern\\.test/never-scheduled"  # a node label no node has (dots escaped for --set)


@pytest.fixture()
def installed(cluster, kube, helm_binary, tmp_path):
    ns = kube.namespace
    env = kubectl_env(cluster, tmp_path)

    def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(helm_binary), *args, "--namespace", ns], env=env, capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    proc = helm("install", RELEASE, str(CHART),
                "--set", f"watchNamespaces={{{ns}}}",
                "--set", "redis.existingSecret=lectern-redis", "--set", "mongo.existingSecret=lectern-mongo",
                "--set", "cloudinary.existingSecret=lectern-cloudinary",
                "--set", f"operator.nodeSelector.{PENDING}=yes",
                "--set", f"intake.nodeSelector.{PENDING}=yes")
    yield helm, proc
    helm("uninstall", RELEASE, "--wait", "--timeout", "60s", check=False)


def can_i(kubectl, sa: str, verb: str, resource: str, subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, "--as", sa]
    if subresource:
        args += ["--subresource", subresource]
    proc = kubectl(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), (args, proc.stdout, proc.stderr)
    return answer == "yes"


def test_helm_install_grants_each_service_account_exactly_its_part(installed, kube, kubectl):
    helm, proc = installed
    ns = kube.namespace
    assert "STATUS: deployed" in proc.stdout, proc.stdout
    sa = {name: f"system:serviceaccount:{ns}:{account}" for name, account in
          (("operator", f"{RELEASE}-operator"), ("intake", f"{RELEASE}-intake"),
           ("transcoder", "lectern-transcoder"))}

    # The transcode pods: only their CR's status.
    assert can_i(kubectl, sa["transcoder"], "patch", "videotranscodes", "status")
    assert can_i(kubectl, sa["transcoder"], "get", "videotranscodes", "status")
    assert not can_i(kubectl, sa["transcoder"], "get", "secrets")
    assert not can_i(kubectl, sa["transcoder"], "list", "secrets")
    assert not can_i(kubectl, sa["transcoder"], "create", "jobs.batch")
    assert not can_i(kubectl, sa["transcoder"], "patch", "videotranscodes")  # not the spec
    assert not can_i(kubectl, sa["transcoder"], "create", "pods")

    # The operator: Jobs, their pods (the watchdog deletes), its CRs and their status; no Secret.
    for verb, resource, sub in (("create", "jobs.batch", None), ("delete", "jobs.batch", None),
                                ("watch", "jobs.batch", None), ("list", "jobs.batch", None), ("delete", "pods", None),
                                ("list", "pods", None), ("watch", "pods", None), ("delete", "videotranscodes", None),
                                ("watch", "videotranscodes", None), ("patch", "videotranscodes", "status"),
                                ("update", "videotranscodes", "finalizers"), ("create", "events", None)):
        assert can_i(kubectl, sa["operator"], verb, resource, sub), (verb, resource, sub)
    assert not can_i(kubectl, sa["operator"], "get", "secrets")
    assert not can_i(kubectl, sa["operator"], "create", "pods")  # pods come from Jobs only
    assert not can_i(kubectl, sa["operator"], "create", "videotranscodes")  # the intake's
    assert not can_i(kubectl, sa["operator"], "create", "rolebindings.rbac.authorization.k8s.io")

    # The intake: VideoTranscodes, nothing of the operator's.
    for verb in ("create", "get", "list", "watch", "patch", "delete"):
        assert can_i(kubectl, sa["intake"], verb, "videotranscodes"), verb
    assert not can_i(kubectl, sa["intake"], "create", "jobs.batch")
    assert not can_i(kubectl, sa["intake"], "patch", "videotranscodes", "status")  # the operator's
    assert not can_i(kubectl, sa["intake"], "get", "secrets")
    assert not can_i(kubectl, sa["intake"], "delete", "pods")

    # Pod Security `restricted` admitted the chart's pods (created, Pending on the selector).
    for component in ("operator", "intake"):
        deadline = time.monotonic() + 30
        while True:
            pods = kube.list("pods", labels=f"app.kubernetes.io/component={component}")
            if pods:
                break
            events = [e["message"] for e in kube.list("events") if e["reason"] == "FailedCreate"]
            assert not events, events  # e.g. violates PodSecurity "restricted:latest"
            assert time.monotonic() < deadline, f"no {component} pod was created"
            time.sleep(0.5)
        assert all(p["status"]["phase"] == "Pending" for p in pods), [p["status"] for p in pods]

    # helm uninstall removes what it installed (the CRD stays, as helm does with crds/).
    helm("uninstall", RELEASE, "--wait", "--timeout", "60s")
    deadline = time.monotonic() + 60
    while True:
        left = {kind: [o["metadata"]["name"] for o in kube.list(kind) if o["metadata"]["name"].startswith("lectern")]
                for kind in ("deployments", "roles", "rolebindings", "serviceaccounts", "services", "configmaps")}
        left["clusterroles"] = [o["metadata"]["name"] for o in kube.list("clusterroles")
                                if o["metadata"]["name"].startswith(f"{RELEASE}-{kube.namespace}")]
        if not any(left.values()):
            break
        assert time.monotonic() < deadline, json.dumps(left)
        time.sleep(0.5)
    assert not kube.list("pods", labels="app.kubernetes.io/component in (operator,intake)")
    assert kube.get("crd", "videotranscodes.media.lectern.dev") is not None
