"""The local kubelet + Job controller, held to the documented Job controller behaviour.

References: https://kubernetes.io/docs/concepts/workloads/controllers/job/ (backoffLimit,
podFailurePolicy, activeDeadlineSeconds, suspend, terminal conditions, podReplacementPolicy,
job-tracking finalizers), https://kubernetes.io/docs/concepts/workloads/pods/disruptions/
(DisruptionTarget), https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/
(termination messages).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import pytest

from tests.standins.kube import KubeEmulator
from tests.standins.kubelet import Kubelet

NS = "lectern"


def job(name: str = "j", command: list[str] | None = None, **spec: Any) -> dict:
    container: dict[str, Any] = {"name": "transcode", "image": "lectern-transcoder:test"}
    if command is not None:
        container["command"] = command
    container.update(spec.pop("container", {}))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": {"app": "t"}}, "spec": pod_spec}, **spec}}


PFP = {"rules": [
    {"action": "FailJob", "onExitCodes": {"containerName": "transcode", "operator": "In", "values": [65]}},
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
]}


@pytest.fixture()
def kube(kube: KubeEmulator) -> KubeEmulator:
    kube.ensure_namespace(NS)
    return kube


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or [] if c["status"] == "True"}


def finished(kube: KubeEmulator, name: str = "j", timeout: float = 15) -> dict:
    return kube.wait_for("batch/v1/jobs", name, NS, lambda j: j is not None and (
        "Complete" in conditions(j) or "Failed" in conditions(j)), timeout=timeout)


def job_pods(kube: KubeEmulator, name: str = "j") -> list[dict]:
    return kube.list("v1/pods", NS, labels=f"batch.kubernetes.io/job-name={name}")


def test_success_sets_pod_and_job_status(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=Kubelet.fake(0, {"exitCode": 0, "videoUrl": "https://x"}, stdout="hello\n")))
    j = finished(kube)
    assert set(conditions(j)) == {"SuccessCriteriaMet", "Complete"}
    assert conditions(j)["Complete"]["reason"] == "CompletionsReached"
    assert j["status"]["succeeded"] == 1 and j["status"]["active"] == 0 and "failed" not in j["status"]
    assert j["status"]["startTime"] and j["status"]["completionTime"]
    [pod] = job_pods(kube)
    assert pod["metadata"]["name"].startswith("j-") and pod["metadata"]["labels"]["app"] == "t"
    assert pod["metadata"]["labels"]["job-name"] == "j"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == j["metadata"]["uid"]
    assert "finalizers" not in pod["metadata"]  # job-tracking released once counted
    assert pod["status"]["phase"] == "Succeeded"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert json.loads(term["message"]) == {"exitCode": 0, "videoUrl": "https://x"}
    assert kubelet.logs(pod["metadata"]["name"]) == "hello\n"
    # The API server defaulted the Job like the real one.
    assert j["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": j["metadata"]["uid"]}}


def test_retries_until_backoff_limit(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=Kubelet.fake(75, "transient")))
    j = finished(kube)
    assert set(conditions(j)) == {"FailureTarget", "Failed"}
    assert conditions(j)["Failed"]["reason"] == "BackoffLimitExceeded"
    assert conditions(j)["Failed"]["message"] == "Job has reached the specified backoff limit"
    assert j["status"]["failed"] == 3 and len(job_pods(kube)) == 3  # backoffLimit 2 = 3 attempts


def test_pod_failure_policy_fails_job_at_once_on_exit_code(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=Kubelet.fake(65, "unusable input"), podFailurePolicy=PFP))
    j = finished(kube)
    failed = conditions(j)["Failed"]
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"].startswith("Container transcode for pod lectern/j-") and "exit code 65 matching FailJob rule at index 0" in failed["message"]
    assert j["status"]["failed"] == 1 and len(job_pods(kube)) == 1


def test_eviction_is_ignored_by_the_policy_and_retried(kube: KubeEmulator, kubelet: Kubelet) -> None:
    attempts: list[str] = []

    def command(job: Any, pod: dict, container: dict) -> list[str]:
        attempts.append(pod["metadata"]["name"])
        return Kubelet.fake(0, "done", sleep=30 if len(attempts) == 1 else 0)
    kubelet.override_command(command)
    kube.create(job(command=["never-used"], podFailurePolicy=PFP, backoffLimit=0))
    first = kubelet.wait_for_pod("j", NS)
    kubelet.evict(first["metadata"]["name"])
    j = finished(kube)
    assert "Complete" in conditions(j) and "failed" not in j["status"] and j["status"]["succeeded"] == 1
    assert len(attempts) == 2
    evicted = kube.get("v1/pods", first["metadata"]["name"], NS)
    assert evicted is None or conditions(evicted)["DisruptionTarget"]["reason"] == "EvictionByEvictionAPI"


def test_deleting_a_running_pod_counts_as_failure_and_is_replaced(kube: KubeEmulator, kubelet: Kubelet) -> None:
    attempts: list[str] = []
    handler = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\ntime.sleep(30)\n"

    def command(job: Any, pod: dict, container: dict) -> list[str]:
        attempts.append(pod["metadata"]["name"])
        return [sys.executable, "-c", handler] if len(attempts) == 1 else Kubelet.fake(0)
    kubelet.override_command(command)
    kube.create(job(command=["x"], podFailurePolicy=PFP))
    first = kubelet.wait_for_pod("j", NS)
    kube.delete("v1/pods", first["metadata"]["name"], NS)  # a watchdog
    j = finished(kube)
    assert "Complete" in conditions(j) and j["status"]["failed"] == 1 and len(attempts) == 2
    assert kube.get("v1/pods", first["metadata"]["name"], NS) is None  # gone once counted


def test_kill_signal_exit_code(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=[sys.executable, "-c", "import time; time.sleep(30)"], backoffLimit=0))
    pod = kubelet.wait_for_pod("j", NS)
    kubelet.kill(pod["metadata"]["name"], signal.SIGKILL)
    j = finished(kube)
    assert conditions(j)["Failed"]["reason"] == "BackoffLimitExceeded"
    term = kube.get("v1/pods", pod["metadata"]["name"], NS)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 137 and term["reason"] == "Error"


def test_active_deadline(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=[sys.executable, "-c", "import time; time.sleep(30)"], activeDeadlineSeconds=1))
    j = finished(kube, timeout=10)
    assert conditions(j)["Failed"]["reason"] == "DeadlineExceeded"
    assert conditions(j)["Failed"]["message"] == "Job was active longer than specified deadline"


def test_env_secrets_fieldrefs_and_scratch_dir(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cloudinary", "namespace": NS},
                 "stringData": {"url": "cloudinary://k:s@demo"}})
    script = ("import json, os, tempfile\n"
              "keys = ['CLOUDINARY_URL', 'POD', 'NAMESPACE', 'TMPDIR', 'LITERAL', 'DERIVED', 'LECTERN_KUBE_API_URL']\n"
              "env = {k: os.environ.get(k) for k in keys}\n"
              "env['tmp'] = tempfile.gettempdir()\n"
              "open(os.environ['LECTERN_TERMINATION_LOG'], 'w').write(json.dumps(env))\n")
    kube.create(job(command=[sys.executable, "-c", script], container={
        "env": [{"name": "CLOUDINARY_URL", "valueFrom": {"secretKeyRef": {"name": "cloudinary", "key": "url"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "TMPDIR", "value": "/scratch"},
                {"name": "LITERAL", "value": "x"},
                {"name": "DERIVED", "value": "$(LITERAL)-y"}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        pod={"volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}]}))
    finished(kube)
    [pod] = job_pods(kube)
    env = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    scratch = kubelet.scratch_dir(pod["metadata"]["name"], "scratch")
    assert env["CLOUDINARY_URL"] == "cloudinary://k:s@demo"
    assert (env["POD"], env["NAMESPACE"], env["LITERAL"], env["DERIVED"]) == (pod["metadata"]["name"], NS, "x", "x-y")
    assert env["TMPDIR"] == str(scratch) and env["tmp"] == str(scratch)
    assert env["LECTERN_KUBE_API_URL"] == kube.url


def test_no_api_url_without_a_service_account_token(kube: KubeEmulator, kubelet: Kubelet) -> None:
    script = "import os; open(os.environ['LECTERN_TERMINATION_LOG'], 'w').write(str(os.environ.get('LECTERN_KUBE_API_URL')))"
    kube.create(job(command=[sys.executable, "-c", script], pod={"automountServiceAccountToken": False}))
    finished(kube)
    assert job_pods(kube)[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "None"


def test_missing_secret_keeps_the_pod_pending(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=Kubelet.fake(0), container={
        "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]}))
    pod = kube.wait_for("v1/pods", "", NS, lambda _: any(
        (p["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"
        for p in job_pods(kube)), timeout=5)
    assert pod is None
    assert job_pods(kube)[0]["status"]["phase"] == "Pending"
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": NS}, "data": {"k": "dg=="}})
    assert "Complete" in conditions(finished(kube))


@pytest.mark.kubelet_options(auto_run=False)
def test_manual_mode_finish(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=["lectern-transcode", "in", "out"], podFailurePolicy=PFP))
    pod = kubelet.wait_for_pod("j", NS)
    assert pod["status"]["containerStatuses"][0]["state"]["running"]
    j = kube.wait_for("batch/v1/jobs", "j", NS, lambda j: j["status"].get("ready") == 1)
    assert j["status"]["active"] == 1
    kubelet.finish("j", 65, {"exitCode": 65, "reason": "not a video"}, NS)
    j = finished(kube)
    assert conditions(j)["Failed"]["reason"] == "PodFailurePolicy"
    [pod] = job_pods(kube)
    assert json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])["reason"] == "not a video"


@pytest.mark.kube_options(auto_namespaces=True)
def test_marker_options(kube: KubeEmulator) -> None:
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "fresh"}})
    assert kube.get("namespaces", "fresh") is not None


def test_suspend_and_resume(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=Kubelet.fake(0), suspend=True))
    j = kube.wait_for("batch/v1/jobs", "j", NS, lambda j: "Suspended" in conditions(j))
    assert conditions(j)["Suspended"]["reason"] == "JobSuspended" and not job_pods(kube)
    kube.patch("batch/v1/jobs", "j", {"spec": {"suspend": False}}, NS)
    assert "Complete" in conditions(finished(kube))


def test_ttl_after_finished_deletes_the_job_and_its_pods(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=Kubelet.fake(0), ttlSecondsAfterFinished=0))
    kube.wait_for("batch/v1/jobs", "j", NS, lambda j: j is None, timeout=10)
    assert kube.wait_for("v1/pods", "", NS, lambda _: not job_pods(kube)) is None


def test_deleting_the_job_in_background_kills_its_pods(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job(command=[sys.executable, "-c", "import time; time.sleep(30)"]))
    pod = kubelet.wait_for_pod("j", NS)
    t0 = time.monotonic()
    kube.delete("batch/v1/jobs", "j", NS, propagation="Background")
    kube.wait_for("v1/pods", pod["metadata"]["name"], NS, lambda p: p is None, timeout=10)
    assert time.monotonic() - t0 < 5


def test_job_validation_like_the_api_server(kube: KubeEmulator) -> None:
    from tests.standins.kube import ApiError
    bad = job(command=["x"], pod={"restartPolicy": "Always"})
    with pytest.raises(ApiError) as e:
        kube.create(bad)
    assert e.value.code == 422 and "spec.template.spec.restartPolicy" in e.value.message
    bad = job("k", command=["x"], podFailurePolicy={"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]})
    with pytest.raises(ApiError) as e:
        kube.create(bad)
    assert "spec.podFailurePolicy.rules[0].onPodConditions[0].status" in e.value.message
    bad = job("l", command=["x"], podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0]}}]})
    with pytest.raises(ApiError):
        kube.create(bad)


def test_scratch_size_limit_evicts(kube: KubeEmulator, kubelet: Kubelet) -> None:
    script = "import os, time\nopen(os.path.join(os.environ['TMPDIR'], 'big'), 'wb').write(b'x' * 2_000_000)\ntime.sleep(30)\n"
    kube.create(job(command=[sys.executable, "-c", script], backoffLimit=0, container={
        "env": [{"name": "TMPDIR", "value": "/scratch"}], "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        pod={"volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]}))
    j = finished(kube)
    assert "Failed" in conditions(j)
    [pod] = job_pods(kube)
    assert pod["status"]["reason"] == "Evicted" and conditions(pod)["DisruptionTarget"]["reason"] == "TerminationByKubelet"


def test_bare_commands_resolve_in_the_venv_and_start_errors(kube: KubeEmulator, kubelet: Kubelet) -> None:
    kube.create(job("py", command=["python", "-c", "import sys; print(sys.prefix)"]))
    assert "Complete" in conditions(finished(kube, "py"))
    assert kubelet.logs(job_pods(kube, "py")[0]["metadata"]["name"]).strip() == sys.prefix
    kube.create(job("nope", command=["no-such-binary-here"], backoffLimit=0))
    assert "Failed" in conditions(finished(kube, "nope"))
    term = job_pods(kube, "nope")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (128, "StartError")
