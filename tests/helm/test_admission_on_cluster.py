"""Issue 12, item 1 (admission): a transcode pod speaks only for its own transcode.

On the real control plane (kube-apiserver v1.37, RBAC, bound ServiceAccount tokens): the
chart's ServiceAccounts and RBAC (chart_identity) and its ValidatingAdmissionPolicy + binding
(`helm template --show-only templates/admission-transcoder-status.yaml`) for the test
namespace; two VideoTranscodes with the Jobs the operator builds for them (operator/jobs.py) on
the fake transcoder image. Transcode B's pod is the ordinary fake transcoder: it reports on its
own CR. Transcode A's pod runs an attacker's script instead (as a compromised ffmpeg would):
with its own mounted token it patches B's status.report, then its own status.phase, then its
own status.report, and records each answer in its termination message."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lectern_operator import jobs
from lectern_operator.api import v1alpha1 as api
from lectern_operator.settings import Settings
from tests.cluster_fixtures import FAKE_IMAGE, ROOT, kubectl_env

pytestmark = pytest.mark.timeout(300) if hasattr(pytest.mark, "timeout") else []

ATTACK = textwrap.dedent("""
    import json, os, ssl, sys, urllib.request, urllib.error
    SA = "/var/run/secrets/kubernetes.io/serviceaccount"
    server = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    token = open(f"{SA}/token").read().strip()
    base = sys.argv[sys.argv.index("--report-cr") + 1].rsplit("/", 1)[0]
    victim, own = os.environ["VICTIM"], sys.argv[sys.argv.index("--report-cr") + 1].rsplit("/", 1)[1]

    def patch(name, body):
        req = urllib.request.Request(f"{server}{base}/{name}/status", method="PATCH", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/merge-patch+json",
                                              "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return {"code": r.status, "message": ""}
        except urllib.error.HTTPError as e:
            return {"code": e.code, "message": json.loads(e.read() or b"{}").get("message", "")}

    out = {
        "other": patch(victim, {"status": {"report": {"stage": "done", "progress": 100,
                                                       "videoUrl": "https://evil.example/x.mp4"}}}),
        "ownPhase": patch(own, {"status": {"phase": "Succeeded", "videoUrl": "https://evil.example/x.mp4"}}),
        "ownReport": patch(own, {"status": {"report": {"stage": "encoding", "progress": 42}}}),
    }
    open("/dev/termination-log", "w").write(json.dumps(out))
""")


def _render_policy(cluster, namespace: str, workdir: Path) -> str:
    from hack.tools import helm_path

    proc = subprocess.run(
        [str(helm_path()), "template", "lectern", str(ROOT / "helm" / "lectern"), "--namespace", namespace,
         "--set", f"watchNamespaces={{{namespace}}}", "--set", "redis.existingSecret=lectern-redis",
         "--set", "mongo.existingSecret=lectern-mongo", "--set", "cloudinary.existingSecret=lectern-cloudinary",
         "--show-only", "templates/admission-transcoder-status.yaml"],
        capture_output=True, text=True, env=kubectl_env(cluster, workdir), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _cr(name: str, lecture: str) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": {"lectureId": lecture, "instructorId": "inst-1",
                     "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/{lecture}.mov"}}


def _wait_until_enforced(cluster, kube, victim: str, timeout: float = 60) -> None:
    """A new policy and binding reach the API server's admission through its informers, a
    moment after they are created. Until a probe is refused (a dry-run status write by the
    transcoder ServiceAccount with a token bound to a pod of no Job), the attack would prove
    nothing."""
    restricted = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    pod = kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vap-probe"},
                       "spec": {"serviceAccountName": "lectern-transcoder", "securityContext": restricted,
                                "nodeSelector": {"lectern.test/none": "none"},
                                "containers": [{"name": "c", "image": FAKE_IMAGE, "securityContext": {
                                    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}})
    token = kube.request("POST", kube.path("serviceaccounts", "lectern-transcoder", subresource="token"), {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "vap-probe",
                               "uid": pod["metadata"]["uid"]}}})["status"]["token"]
    url = f"{kube.server}{kube.path('vt', victim, subresource='status')}?dryRun=All"
    ctx = ssl.create_default_context(cafile=str(cluster.ca))
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(url, method="PATCH", data=json.dumps({"status": {"report": {"progress": 1}}}).encode(),
                                     headers={"Content-Type": "application/merge-patch+json",
                                              "Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=10).read()
            code = 200
        except urllib.error.HTTPError as exc:
            code = exc.code
        if code == 403:
            break
        assert time.monotonic() < deadline, f"the admission policy was not enforced after {timeout}s ({code})"
        time.sleep(0.2)
    kube.delete("pods", "vap-probe", grace=0)


def _terminated(pod: dict | None) -> dict | None:
    for s in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if (s.get("state") or {}).get("terminated"):
            return s["state"]["terminated"]
    return None


def test_vap_is_served_as_v1(cluster, kubectl):
    out = kubectl("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name").stdout
    assert "validatingadmissionpolicies.admissionregistration.k8s.io" in out
    versions = kubectl("api-versions").stdout.split()
    assert "admissionregistration.k8s.io/v1" in versions


def test_a_transcode_pod_cannot_write_another_transcodes_status(cluster, kube, kubectl, chart_identity,
                                                               fake_transcoder, tmp_path):
    ns = kube.namespace
    policy = _render_policy(cluster, ns, tmp_path)
    kubectl("apply", "-f", "-", input=policy)
    try:
        _run(cluster, kube, fake_transcoder, tmp_path)
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", input=policy, check=False)


def _run(cluster, kube, fake_transcoder, tmp_path) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-cloudinary"},
                 "stringData": {"CLOUDINARY_URL": "cloudinary://k:s@demo"}})
    script = fake_transcoder.folder.parent / "attack.py"
    script.write_text(ATTACK)
    script.chmod(0o644)

    settings = Settings(transcoder_image=FAKE_IMAGE, transcoder_image_pull_policy="Never",
                        transcoder_run_as_user=65532)
    made = {}
    for name, lecture in (("vt-a", "lecture-a"), ("vt-b", "lecture-b")):
        cr = kube.create(_cr(name, lecture))
        job = jobs.build_job(cr, settings)
        # what the operator records when it creates the Job (the admin writes it here)
        kube.patch("vt", name, {"status": {"jobName": job["metadata"]["name"], "phase": "Running"}},
                   subresource="status")
        made[name] = job
    fake_transcoder.plan("lecture-b", progress=[10, 50])
    _wait_until_enforced(cluster, kube, "vt-b")

    attacker = made["vt-a"]
    container = attacker["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [sys.executable, str(script)]
    container["env"].append({"name": "VICTIM", "value": "vt-b"})
    attacker["spec"]["backoffLimit"] = 0
    for job in made.values():
        kube.create(job)

    def pod_of(job_name: str) -> dict | None:
        pods = kube.list("pods", labels=f"job-name={job_name}")
        return pods[0] if pods and _terminated(pods[0]) else None

    deadline_pods = {}
    for name, job in made.items():
        jn = job["metadata"]["name"]
        kube.wait_for("jobs", jn, predicate=lambda _o, jn=jn: pod_of(jn) is not None, timeout=120, interval=0.5)
        deadline_pods[name] = pod_of(jn)

    # B, the honest pod, reported on its own CR
    b = kube.get("vt", "vt-b")
    assert b["status"]["report"].get("stage") == "done", b["status"]
    assert b["status"]["report"].get("videoUrl", "").startswith("https://res.cloudinary.com/demo/"), b["status"]

    # A, the compromised pod
    term = _terminated(deadline_pods["vt-a"])
    assert term["exitCode"] == 0, term
    answers = json.loads(term["message"])
    a_pod = deadline_pods["vt-a"]["metadata"]["name"]
    assert answers["other"]["code"] == 403, answers
    assert f"transcode pod {a_pod} may report only on its own VideoTranscode" in answers["other"]["message"], answers
    assert f"vt-b belongs to Job {made['vt-b']['metadata']['name']}" in answers["other"]["message"]
    assert answers["ownPhase"]["code"] == 403, answers
    assert "may change status.report only" in answers["ownPhase"]["message"], answers
    assert answers["ownReport"]["code"] == 200, answers

    b = kube.get("vt", "vt-b")
    assert b["status"]["report"].get("videoUrl") != "https://evil.example/x.mp4"
    a = kube.get("vt", "vt-a")
    assert a["status"]["phase"] == "Running" and "videoUrl" not in a["status"]
    assert a["status"]["report"]["progress"] == 42
