"""The node agent as the real control plane sees it (hack/cluster.py's session cluster: etcd,
kube-apiserver, controller manager, scheduler, and this agent as the only node). Pods are
created through the API, scheduled by the real scheduler, run by the agent as processes, and
every assertion reads what the API server holds. Test namespaces enforce Pod Security
`restricted`, so the pods here are what a restricted namespace admits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.kube_client import KubeClient

IMAGE = "ghcr.io/lectern/operator:0.1.0"     # any image the node knows; the command is ours
PY = "/usr/bin/python3"                       # the system interpreter: readable by uid 65532


def restricted() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod(name: str, code: str, *, restart: str = "Never", image: str = IMAGE, **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "main", "image": image, "command": [PY, "-c", code],
                            "securityContext": restricted(), **container}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 5, "containers": [spec]}}


def phase_in(*phases: str):
    return lambda p: p is not None and p.get("status", {}).get("phase") in phases


def main_status(p: dict) -> dict:
    return p["status"]["containerStatuses"][0]


def waiting_reason(p: dict | None) -> str | None:
    statuses = (p or {}).get("status", {}).get("containerStatuses") or []
    return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None


def test_node_registered_with_lease_and_capacity(cluster, kube: KubeClient):
    node = kube.get("nodes", cluster.node_name)
    labels, status = node["metadata"]["labels"], node["status"]
    assert labels["kubernetes.io/hostname"] == cluster.node_name and labels["kubernetes.io/os"] == "linux"
    assert int(status["capacity"]["pods"]) == 110 and int(status["allocatable"]["cpu"]) >= 1
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
    lease = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{cluster.node_name}")
    assert lease["spec"]["holderIdentity"] == cluster.node_name


def test_pods_finish_with_exit_code_and_termination_message(kube: KubeClient):
    kube.create(pod("ok", "open('/dev/termination-log', 'w').write('all done')"))
    kube.create(pod("fails", "import sys\nprint('first')\nprint('the reason')\nsys.exit(3)",
                    terminationMessagePolicy="FallbackToLogsOnError"))
    ok = kube.wait_for("pods", "ok", predicate=phase_in("Succeeded", "Failed"), timeout=30)
    fails = kube.wait_for("pods", "fails", predicate=phase_in("Succeeded", "Failed"), timeout=30)
    assert ok["status"]["phase"] == "Succeeded", ok["status"]
    done = main_status(ok)["state"]["terminated"]
    assert (done["exitCode"], done["reason"], done["message"]) == (0, "Completed", "all done")
    assert ok["status"]["podIP"] == "127.0.0.1" and ok["status"]["startTime"]
    conditions = {c["type"]: c for c in ok["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["status"] == "True"       # the scheduler's, kept
    assert fails["status"]["phase"] == "Failed"
    term = main_status(fails)["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "first\nthe reason\n")


def test_env_from_secret_waits_for_it_and_logs_go_through_the_api_server(cluster, kube: KubeClient, kubectl):
    code = "import os\nprint('line one')\nprint('secret is', os.environ['PASSWORD'], os.environ['POD'])"
    env = [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    kube.create(pod("envy", code, env=env))
    kube.wait_for("pods", "envy", predicate=lambda p: waiting_reason(p) == "CreateContainerConfigError", timeout=20)
    assert kube.get("pods", "envy")["status"]["phase"] == "Pending"
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}})
    kube.wait_for("pods", "envy", predicate=phase_in("Succeeded"), timeout=20)
    out = kubectl("logs", "envy").stdout
    assert out == "line one\nsecret is hunter2 envy\n"
    assert kubectl("logs", "envy", "--tail=1").stdout == "secret is hunter2 envy\n"
    assert "hunter2" not in cluster.procs["node"].log.read_text()      # secrets never logged


def test_unknown_image_is_a_failed_pull_and_never_runs(kube: KubeClient):
    kube.create(pod("nopull", "print('ran')", image="registry.example/nothing:1"))
    p = kube.wait_for("pods", "nopull", predicate=lambda p: waiting_reason(p) in ("ErrImagePull", "ImagePullBackOff"),
                      timeout=20)
    assert p["status"]["phase"] == "Pending" and main_status(p)["restartCount"] == 0
    kube.delete("pods", "nopull", grace=0)


def test_service_account_token_logs_the_pod_in_as_itself(kube: KubeClient):
    code = ("import json, os, ssl, urllib.request\n"
            "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
            "token = open(sa + '/token').read()\n"
            "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
            "url = 'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % ("
            "os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])\n"
            "body = json.dumps({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}).encode()\n"
            "req = urllib.request.Request(url, body, {'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'})\n"
            "user = json.load(urllib.request.urlopen(req, context=ctx))['status']['userInfo']\n"
            "ns = open(sa + '/namespace').read()\n"
            "open('/dev/termination-log', 'w').write(json.dumps([user['username'], user['extra'], ns]))\n")
    kube.create(pod("whoami", code))
    p = kube.wait_for("pods", "whoami", predicate=phase_in("Succeeded", "Failed"), timeout=40)
    term = main_status(p)["state"]["terminated"]
    assert p["status"]["phase"] == "Succeeded", term
    username, extra, ns = json.loads(term["message"])
    assert username == f"system:serviceaccount:{kube.namespace}:default" and ns == kube.namespace
    assert extra["authentication.kubernetes.io/pod-name"] == ["whoami"]      # a token bound to this pod


def test_memory_limit_oom_kills_and_cpu_limit_throttles(kube: KubeClient):
    hog = "b = []\nwhile True: b.append(bytearray(4 * 2**20))"
    kube.create(pod("hog", hog, resources={"limits": {"memory": "48Mi", "cpu": "1"}}))
    spin = ("import time, resource\nt = time.time()\nwhile time.time() - t < 2: pass\n"
            "r = resource.getrusage(resource.RUSAGE_SELF)\n"
            "open('/dev/termination-log', 'w').write(str((r.ru_utime + r.ru_stime) / 2))")
    kube.create(pod("spin", spin, resources={"limits": {"cpu": "500m", "memory": "64Mi"}}))
    hog_pod = kube.wait_for("pods", "hog", predicate=phase_in("Succeeded", "Failed"), timeout=30)
    term = main_status(hog_pod)["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled") and hog_pod["status"]["phase"] == "Failed"
    spin_pod = kube.wait_for("pods", "spin", predicate=phase_in("Succeeded", "Failed"), timeout=30)
    share = float(main_status(spin_pod)["state"]["terminated"]["message"])
    assert 0.3 < share < 0.62, share


def test_restarts_with_back_off_and_probes_gate_readiness(kube: KubeClient):
    kube.create(pod("crashy", "import sys\nsys.exit(2)", restart="Always"))
    server = ("import http.server\n"
              "http.server.HTTPServer(('127.0.0.1', 18931), http.server.SimpleHTTPRequestHandler).serve_forever()")
    kube.create(pod("served", server, restart="Always", ports=[{"name": "http", "containerPort": 18931}],
                    readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    livenessProbe={"exec": {"command": [PY, "-c", "import os; os.stat('/dev/termination-log')"]},
                                   "periodSeconds": 1}))
    crashy = kube.wait_for("pods", "crashy", predicate=lambda p: waiting_reason(p) == "CrashLoopBackOff", timeout=20)
    status = main_status(crashy)
    assert status["restartCount"] >= 1 and status["lastState"]["terminated"]["exitCode"] == 2
    assert crashy["status"]["phase"] == "Running"
    served = kube.wait_for("pods", "served", predicate=lambda p: p and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []), timeout=20)
    time.sleep(2.5)                                 # a few liveness periods: the exec probe keeps passing
    served = kube.get("pods", "served")
    assert main_status(served)["restartCount"] == 0 and main_status(served)["ready"] is True
    kube.delete("pods", "served")
    kube.delete("pods", "crashy")
    kube.wait_for("pods", "served", predicate=lambda p: p is None, timeout=20)


def test_emptydir_over_its_size_limit_is_evicted_as_a_disruption(cluster, kube: KubeClient):
    code = "import time\nopen('/scratch/big', 'wb').write(b'x' * 3 * 2**20)\ntime.sleep(60)"
    p = pod("filler", code, volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
    p["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]
    kube.create(p)
    done = kube.wait_for("pods", "filler", predicate=phase_in("Succeeded", "Failed"), timeout=30)
    assert done["status"]["phase"] == "Failed" and done["status"]["reason"] == "Evicted"
    disruption = next(c for c in done["status"]["conditions"] if c["type"] == "DisruptionTarget")
    assert disruption["status"] == "True" and disruption["reason"] == "TerminationByKubelet"
    records = [json.loads(line) for line in (cluster.node_workdir / "records.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["uid"] == done["metadata"]["uid"]]
    assert [(r["exitCode"], r["files"]) for r in mine] == [(143, ["big"])]


def test_job_retries_a_pod_evicted_mid_run_without_spending_its_backoff(kube: KubeClient):
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mode"}, "data": {"mode": "hang"}})
    code = "import os, sys, time\nif os.environ['MODE'] == 'hang': time.sleep(60)\nsys.exit(0)"
    template = pod("unused", code, env=[{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "mode", "key": "mode"}}}])
    kube.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "retry"},
                 "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]},
                          "podFailurePolicy": {"rules": [
                              {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                              {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}}]}}})
    deadline = time.monotonic() + 30
    while True:
        pods = [p for p in kube.list("pods", labels="job-name=retry") if p.get("status", {}).get("phase") == "Running"]
        if pods:
            break
        assert time.monotonic() < deadline, "the Job's pod never ran"
        time.sleep(0.2)
    first = pods[0]["metadata"]["name"]
    kube.patch("configmaps", "mode", {"data": {"mode": "finish"}})
    kube.evict(first)
    job = kube.wait_for("jobs", "retry", predicate=lambda j: any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in (j or {}).get("status", {}).get("conditions") or []),
        timeout=40)
    assert any(c["type"] == "Complete" for c in job["status"]["conditions"]), job["status"]
    assert job["status"].get("failed", 0) == 0 and job["status"]["succeeded"] == 1
    kube.wait_for("pods", first, predicate=lambda p: p is None, timeout=20)     # finalized by the node


@pytest.mark.timeout(120)
def test_node_that_goes_away_turns_not_ready_and_its_pods_are_settled_on_return(cluster, kube: KubeClient):
    kube.create(pod("longrun", "import time\ntime.sleep(120)"))
    kube.wait_for("pods", "longrun", predicate=phase_in("Running"), timeout=30)
    cluster.stop_node()
    try:
        def not_ready(node: dict | None) -> bool:
            return any(c["type"] == "Ready" and c["status"] != "True" for c in node["status"]["conditions"])
        kube.wait_for("nodes", cluster.node_name, predicate=not_ready, timeout=60, interval=0.5)
    finally:
        cluster.start_node()
    # Back again: the container is gone (as after a reboot); the pod either finished as Failed
    # with ContainerStatusUnknown or, evicted by the taint manager meanwhile, was finalized.
    p = kube.wait_for("pods", "longrun", predicate=lambda p: p is None or p["status"]["phase"] == "Failed", timeout=30)
    if p is not None:
        assert main_status(p)["state"]["terminated"]["reason"] == "ContainerStatusUnknown"
