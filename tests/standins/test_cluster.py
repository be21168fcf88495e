"""The one-node local cluster process (tests/standins/cluster.py): what the end-to-end stack
and `make demo` rely on — an API server reachable by URL and kubeconfig, a kubelet that runs
Jobs as local processes with the given env, a record of what each container left in its
scratch volume, eviction through the API, and a clean stop on SIGTERM."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.standins.cluster import ClusterProcess
from tests.standins.services import wait_until
from tests.standins.test_kubelet import job

NS = "lectern"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ClusterProcess(tmp_path_factory.mktemp("cluster"), namespaces=[NS],
                       kubelet_env={"FROM_THE_NODE": "node-value"}).start()
    yield c
    c.stop()


def _job(name: str, script: str, **spec) -> dict:
    manifest = job(name, [sys.executable, "-c", script], **spec)
    manifest["spec"]["template"]["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "TMPDIR", "value": "/scratch"}]
    return manifest


def _finished(cluster, name: str, condition: str) -> dict:
    def done():
        j = cluster.get("jobs", name, NS)
        conds = ((j or {}).get("status") or {}).get("conditions") or []
        return j if any(c["type"] == condition and c["status"] == "True" for c in conds) else None
    return wait_until(done, 30, 0.05, f"Job {name} {condition}")


def test_runs_a_job_with_the_node_env_and_records_leftovers(cluster):
    script = ("import os, tempfile; assert os.environ['FROM_THE_NODE'] == 'node-value'; "
              "tempfile.NamedTemporaryFile(delete=False).write(b'x'); print('hello from the pod')")
    cluster.create(_job("leaves-a-file", script), NS)
    _finished(cluster, "leaves-a-file", "Complete")
    [pod] = cluster.list("pods", NS, "batch.kubernetes.io/job-name=leaves-a-file")
    assert "hello from the pod" in cluster.logs(pod["metadata"]["name"], NS)
    [record] = [r for r in cluster.leftovers() if r["pod"] == pod["metadata"]["name"]]
    assert record["exitCode"] == 0 and len(record["files"]) == 1 and record["files"][0].startswith("scratch/")

    cluster.create(_job("cleans-up", "import tempfile\nwith tempfile.NamedTemporaryFile(): pass"), NS)
    _finished(cluster, "cleans-up", "Complete")
    [pod] = cluster.list("pods", NS, "batch.kubernetes.io/job-name=cleans-up")
    assert [r["files"] for r in cluster.leftovers() if r["pod"] == pod["metadata"]["name"]] == [[]]


def test_eviction_through_the_api_is_a_disruption(cluster):
    spec = job("evicted", [sys.executable, "-c", "import time; time.sleep(60)"])
    spec["spec"]["podFailurePolicy"] = {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    spec["spec"]["backoffLimit"] = 0
    cluster.create(spec, NS)

    def running():
        pods = cluster.list("pods", NS, "batch.kubernetes.io/job-name=evicted")
        return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    [pod] = wait_until(running, 30, 0.05, "a running pod")
    cluster.evict(pod["metadata"]["name"], NS)
    # backoffLimit 0, yet a replacement pod: the eviction did not count as a failure
    wait_until(lambda: [p for p in running() if p["metadata"]["name"] != pod["metadata"]["name"]],
               30, 0.05, "a replacement pod")
    assert int(cluster.get("jobs", "evicted", NS)["status"].get("failed") or 0) == 0
    cluster.delete("jobs", "evicted", NS)


def test_kubeconfig_works_for_kubectl_and_sigterm_stops_everything(tmp_path, kube_binaries):
    c = ClusterProcess(tmp_path / "c", namespaces=[NS]).start()
    try:
        c.create(job("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"]), NS)
        out = subprocess.run([str(kube_binaries["kubectl"]), "--kubeconfig", c.kubeconfig, "get", "jobs"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "sleeper" in out.stdout, out.stderr
        wait_until(lambda: c.list("pods", NS), 30, 0.05, "the sleeper's pod")
        proc = c.proc
    finally:
        c.stop()
    assert proc.returncode == 0, c.log()[-2000:]
    # the container went with the node
    assert not subprocess.run(["pgrep", "-f", "time.sleep\\(120\\)"], capture_output=True).stdout
