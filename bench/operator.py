"""Operator benchmark on the real control plane: N VideoTranscodes created at once, cap C.

    .venv/bin/python bench/operator.py [--count 500,1000,2000] [--cap 100] [--work 6] [--retention 30] [--write]

`--count` is one size or a comma-separated sweep (each size on a fresh cluster, in one run, so
the sizes are measured side by side). Prints ONE JSON object on stdout (one size: its figures;
a sweep: `{"runs": [...], time_per_transcode_spread, ...}`; a size that went badly stays in
`runs` with its error), the tables on stderr; records the sweep in bench/results.json
(`record("operator", ...)`) and, with --write, rewrites bench/OPERATOR_RESULTS.md.

Steady state, before each size's creates: `cap` transcodes whose pods run and change nothing
(Running, one report, no more) for `--steady-seconds`; the operator's API requests in that
window are counted from the API server's audit log (a policy logging only the operator's
ServiceAccount user, Metadata level, one line per request) -> requests per running transcode
per minute. Finished VideoTranscodes are deleted `--retention` seconds after they finished
(`operator.retentionSeconds` rendered into the chart's environment), so a run also shows that
history does not weigh on the operator.

What runs, each its own process:
- a LocalCluster (hack/cluster.py) without the node agent: etcd, kube-apiserver,
  kube-controller-manager (the real Job, garbage-collector, TTL... controllers), kube-scheduler,
  v1.37.2, TLS, RBAC + Node authorization, Pod Security `restricted` on the namespace;
- redis-server and FerretDB (tests/standins/services.py), the Lectures inserted AWAITING_MEDIA;
- `lectern-operator` (the console script, so its RSS is its own) with the environment the chart
  gives its Deployment: the ConfigMap and the container's plain `env` are rendered by the real
  `helm template` (MALLOC_ARENA_MAX=2, reconcile 1 s, admit 10 s, progress notify 1 s, log level
  INFO json ...) with `transcode.maxConcurrent` = the cap; only the metrics/health ports are
  moved to free ports (others use 8080/9090 here) and the Mongo/Redis Secrets point at the local
  servers. It logs in with a kubeconfig holding a TokenRequest token of the chart's operator
  ServiceAccount, with the chart's RBAC rendered for the namespace (ChartIdentity); the VTs are
  created with the intake's ServiceAccount token, as the intake would.

Who plays the node: this driver, not the node agent. The scheduler binds the transcode pods
to a Node the driver registers (and keeps Ready with Lease heartbeats) with the client
certificate of `system:node:<name>`, so the Node authorizer and NodeRestriction hold it to what
a kubelet may do. For each bound pod it writes `pods/status` as a kubelet would (Running with a
started container, then Succeeded with exit code 0 and the transcoder's JSON termination
message), and in between plays the transcoder: a TokenRequest bound to the pod for the pod's
ServiceAccount (`lectern-transcoder`), then `status.report` patches with that token (downloading
0 %, encoding 25/50/75 % spread over `--work` seconds, done 100 % with a videoUrl). The real Job
controller completes the Jobs from those pod statuses; the operator sees them as on a cluster.
Why not the node agent with the fake transcoder image: the chart's transcode pods request 1 CPU
each and the node agent advertises this machine's 2 cores, so the scheduler would never let
more than 2 run: the cap of 100 could not be reached without changing the chart's settings.
And 2,000 process starts (Python, TLS, token files) on 2 cores shared with other work would
measure the node agent, not the operator, and the time of each report patch would only be known
inside the pod. The driver's node advertises room for 2x the cap (as kwok's fake nodes do), so
the operator's cap is the only limit, and the driver knows the instant each report is sent.
What it does not do: no process, env, volume or probe is real in the pods (nothing executes).

Measured, in one run:
- every CR `Succeeded`: time from the first create to the last CR Succeeded (from a watch);
- Running held by the operator: a watch of the VideoTranscodes counts the CRs whose
  `status.phase` is Running after every event (the watch delivers the resource's changes in
  etcd revision order, so the count is exact at each revision): the max, and time at the cap;
- report -> notification lag: for every encoding report, from the moment the driver sends the
  PATCH to the first `VIDEO_PROGRESS` message on Redis `notifications` for that lecture with a
  progress >= the reported value (a later value covers an earlier one). A report with no such
  message is counted as missing (and whether the final VIDEO_READY covered it), never dropped;
  the lag is split into the API write (PATCH round trip), the watch delivery (when the driver's
  own CR watch saw the report) and the rest (the operator: its queue, handlers and Redis);
- operator peak RSS (VmHWM of the process), final notifications per lecture (duplicates must be
  0), Lectures READY, CPU seconds of each process, and the API server's request counts and mean
  latencies by verb/resource during the run (from its /metrics).
Prints the figures, writes bench/out/operator.json (value, unit, the command, cores, load
average at start and end) and, with --write, bench/OPERATOR_RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder is sys.path[0]: this file is named operator.py (the stdlib's name).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, never first: the repo's operator/ folder shadows the stdlib

import aiohttp  # noqa: E402
import pymongo  # noqa: E402
import redis  # noqa: E402
import yaml  # noqa: E402

from hack.cluster import LocalCluster, free_port  # noqa: E402
from hack.tools import helm_path  # noqa: E402
from lectern_operator.api import v1alpha1 as api  # noqa: E402
from tests.cluster_fixtures import RESTRICTED, ChartIdentity, kubectl_env  # noqa: E402
from tests.kube_client import ApiError, KubeClient  # noqa: E402
from tests.standins.services import MongoServer, RedisServer, stop_process  # noqa: E402

NS = "lectern-bench"
STEADY = "st"  # lecture ids of the steady-state phase's transcodes (st00000...)
NODE = "lectern-node"
OUT = HERE / "out" / "operator.json"
DEFAULT_SWEEP = "500,1000,2000"
RESULTS = HERE / "OPERATOR_RESULTS.md"


def ts() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, -(-int(q * len(v) * 1000) // 1000) - 1))]


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) / 1024
    return out


# -- the chart's operator settings ------------------------------------------------------------

def chart_operator_env(cap: int, home: Path, cluster: LocalCluster, retention: float) -> dict[str, str]:
    """LECTERN_* from the rendered ConfigMap + the operator container's plain `env` values."""
    proc = subprocess.run(
        [str(helm_path()), "template", "lectern", str(ROOT / "helm" / "lectern"), "--namespace", NS,
         "--set", f"watchNamespaces={{{NS}}}", "--set", f"transcode.maxConcurrent={cap}",
         "--set", f"operator.retentionSeconds={retention:g}",
         "--set", "mongo.url=mongodb://set-below", "--set", "redis.url=redis://set-below",
         "--set", "cloudinary.existingSecret=lectern-cloudinary", "--set", "cloudinary.cloudName=demo",
         "--show-only", "templates/configmap.yaml", "--show-only", "templates/operator-deployment.yaml"],
        capture_output=True, text=True, env=kubectl_env(cluster, home), timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed: {proc.stderr}")
    env: dict[str, str] = {}
    for doc in yaml.safe_load_all(proc.stdout):
        if not doc:
            continue
        if doc["kind"] == "ConfigMap":
            env.update({k: str(v) for k, v in doc["data"].items()})
        elif doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return env


# -- a small async API client -----------------------------------------------------------------

class Api:
    def __init__(self, server: str, ca: Path, cert: tuple[Path, Path] | None = None, token: str | None = None,
                 limit: int = 64) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.server = server
        self.session = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=ctx, limit=limit),
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120))

    async def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
                   headers: dict | None = None) -> Any:
        h = {"Content-Type": ctype, **(headers or {})}
        async with self.session.request(method, self.server + path, headers=h,
                                        data=json.dumps(body) if body is not None else None) as r:
            raw = await r.read()
            if r.status >= 400:
                raise ApiError(r.status, r.reason or "", raw.decode(errors="replace")[:500])
            return json.loads(raw) if raw else None

    async def call_retry(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
                         headers: dict | None = None, errors: list | None = None, give_up: float = 60.0,
                         also: tuple[int, ...] = ()) -> Any:
        """`call`, retried as a kubelet (and the transcoder's reporter) would: on 403 (the Node
        authorizer learns a pod's binding from its own informer, a moment after the scheduler),
        429, 5xx, the codes in `also` and connection errors, for up to `give_up` seconds; each
        retry is recorded."""
        deadline = time.monotonic() + give_up
        delay = 0.2
        while True:
            try:
                return await self.call(method, path, body, ctype, headers)
            except (ApiError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                code = getattr(exc, "code", 0)
                if isinstance(exc, ApiError) and code not in (403, 429, *also) and code < 500:
                    raise
                if errors is not None:
                    errors.append(f"retried {method} {path.rsplit('/', 2)[-2:]}: {str(exc)[:160]}")
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def watch(self, path: str, handle, params: dict[str, str] | None = None,
                    listed_flag: asyncio.Event | None = None) -> None:
        """List, then watch from the list's resourceVersion, reconnecting from the last seen
        one; handle(type, obj, t_received) for every event (the list's items as ADDED)."""
        q = dict(params or {})
        rv = None
        while True:
            if rv is None:
                try:
                    listed = await self.call("GET", path + ("?" + "&".join(f"{k}={v}" for k, v in q.items()) if q else ""))
                except ApiError as exc:
                    if exc.code == 429 or exc.code >= 500:  # e.g. a new CRD's watch cache still initializing
                        await asyncio.sleep(0.5)
                        continue
                    raise
                t = time.monotonic()
                for item in listed.get("items") or []:
                    handle("ADDED", item, t)
                rv = listed["metadata"]["resourceVersion"]
                if listed_flag is not None:
                    listed_flag.set()
            qs = {**q, "watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "1800"}
            url = self.server + path + "?" + "&".join(f"{k}={v}" for k, v in qs.items())
            try:
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=1900)) as r:
                    if r.status == 429 or r.status >= 500:
                        await asyncio.sleep(0.5)
                        continue
                    if r.status >= 400:
                        raise ApiError(r.status, r.reason or "", (await r.read()).decode(errors="replace")[:500])
                    buf = b""
                    async for chunk in r.content.iter_any():
                        if rv is None:
                            break
                        t = time.monotonic()
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            if not line.strip():
                                continue
                            ev = json.loads(line)
                            obj = ev.get("object") or {}
                            if ev["type"] == "ERROR":
                                if obj.get("code") == 410:  # too old: list again (handlers are idempotent)
                                    say(f"watch {path}: 410 Gone, listing again")
                                    rv = None
                                    break
                                raise ApiError(obj.get("code", 0), obj.get("reason", ""), obj.get("message", ""))
                            rv = obj.get("metadata", {}).get("resourceVersion") or rv
                            if ev["type"] != "BOOKMARK":
                                handle(ev["type"], obj, t)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                say(f"watch {path} broke ({type(exc).__name__}); reconnecting from {rv}")
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.session.close()


# -- the node: registration, heartbeats, pods as a kubelet reports them -------------------------

class Node:
    def __init__(self, node_api: Api, anon: Api, cap: int, work: float, stats: "Stats") -> None:
        self.api, self.anon, self.work, self.stats = node_api, anon, work, stats
        room = 2 * cap + 8
        self.capacity = {"cpu": str(room), "memory": f"{room}Gi", "ephemeral-storage": f"{room * 4}Gi",
                         "pods": str(room)}
        self.tasks: dict[str, asyncio.Task] = {}
        self.errors: list[str] = []
        self.retries: list[str] = []
        self.started: dict[str, tuple[str, str]] = {}   # pod uid -> (startedAt, containerID)
        self.release_steady = asyncio.Event()

    def _status(self) -> dict:
        t = ts()
        conds = [("MemoryPressure", "False", "KubeletHasSufficientMemory"), ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                 ("PIDPressure", "False", "KubeletHasSufficientPID"), ("Ready", "True", "KubeletReady")]
        return {"capacity": self.capacity, "allocatable": self.capacity,
                "conditions": [{"type": a, "status": s, "reason": r, "message": r, "lastHeartbeatTime": t,
                                "lastTransitionTime": t} for a, s, r in conds],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}],
                "nodeInfo": {"machineID": "bench", "systemUUID": "bench", "bootID": "bench", "kernelVersion": "",
                             "osImage": "bench driver (plays the kubelet)", "containerRuntimeVersion": "bench://0",
                             "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux",
                             "architecture": "amd64"}}

    async def register(self) -> None:
        labels = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        node = await self.api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                                             "metadata": {"name": NODE, "labels": labels}, "spec": {}})
        await self.api.call("PATCH", f"/api/v1/nodes/{NODE}/status", {"status": self._status()},
                            "application/strategic-merge-patch+json")
        await self.api.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NODE, "namespace": "kube-node-lease",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"]}]},
            "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": self._micro()}})

    @staticmethod
    def _micro() -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def heartbeat(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(10)
            n += 1
            try:
                await self.api.call("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}",
                                    {"spec": {"renewTime": self._micro()}}, "application/merge-patch+json")
                if n % 6 == 0:
                    await self.api.call("PATCH", f"/api/v1/nodes/{NODE}/status", {"status": self._status()},
                                        "application/strategic-merge-patch+json")
            except Exception as exc:  # noqa: BLE001 - keep heartbeating
                say(f"node heartbeat failed: {exc}")

    def on_pod(self, etype: str, pod: dict, t: float) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if etype == "DELETED":
            task = self.tasks.get(uid)
            if task and not task.done():
                task.cancel()
            return
        if meta.get("deletionTimestamp"):
            if uid in self.tasks and not self.tasks[uid].done():
                self.tasks[uid].cancel()
            if uid not in self.stats.deleted_pods:
                self.stats.deleted_pods.add(uid)
                asyncio.get_running_loop().create_task(self._finalize_delete(pod))
            return
        if uid not in self.tasks and (pod.get("status") or {}).get("phase") == "Pending":
            self.tasks[uid] = asyncio.get_running_loop().create_task(self.run_pod(pod, t))

    async def _finalize_delete(self, pod: dict) -> None:
        """A pod deleted while it runs (the operator's watchdog, eviction): as a kubelet, stop the
        container (exit 143), report the pod Failed, then remove the object with grace 0."""
        meta = pod["metadata"]
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and meta["uid"] in self.started:
            self.errors.append(f"pod {meta['name']} deleted while running")
            say(f"node: pod {meta['name']} deleted while running")
            started, cid = self.started[meta["uid"]]
            (container,) = pod["spec"]["containers"]
            try:
                await self.api.call_retry("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {
                    "status": {"phase": "Failed", "conditions": [
                        {"type": "ContainersReady", "status": "False", "reason": "PodFailed"},
                        {"type": "Ready", "status": "False", "reason": "PodFailed"}],
                        "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                               "containerID": cid, "ready": False, "started": False, "restartCount": 0,
                                               "state": {"running": None, "terminated": {
                                                   "exitCode": 143, "reason": "Error", "startedAt": started,
                                                   "finishedAt": ts(), "containerID": cid}}}]}},
                    "application/strategic-merge-patch+json", give_up=20)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"pod {meta['name']} status on delete: {exc}")
        try:
            await self.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
        except ApiError as exc:
            if exc.code not in (404, 409):
                self.errors.append(f"delete {meta['name']}: {exc}")

    async def run_pod(self, pod: dict, t_seen: float) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        name, ns, uid = meta["name"], meta["namespace"], meta["uid"]
        (container,) = spec["containers"]
        args = container.get("args") or []
        lid = args[args.index("--lecture-id") + 1]
        report_path = args[args.index("--report-cr") + 1] + "/status"
        cid = f"bench://{uid}"
        started = ts()
        pod_path = f"/api/v1/namespaces/{ns}/pods/{name}/status"
        smp = "application/strategic-merge-patch+json"
        t0 = time.monotonic()
        self.stats.pod_seen[lid] = t_seen
        self.started[uid] = (started, cid)
        try:
            await self.api.call_retry("PATCH", pod_path, errors=self.retries, body={"status": {
                "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "startTime": started,
                "conditions": [{"type": c, "status": "True", "lastTransitionTime": started}
                               for c in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                       "containerID": cid, "ready": True, "started": True, "restartCount": 0,
                                       "state": {"running": {"startedAt": started}}}]}}, ctype=smp)
            tok = await self.api.call_retry("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{spec['serviceAccountName']}/token", errors=self.retries, also=(404,), body={
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}})
            auth = {"Authorization": f"Bearer {tok['status']['token']}"}

            async def report(**fields: Any) -> tuple[float, float]:
                fields.setdefault("pod", name)
                sent = time.monotonic()
                await self.anon.call_retry("PATCH", report_path, {"status": {"report": fields}},
                                           "application/merge-patch+json", headers=auth, errors=self.retries)
                return sent, time.monotonic()

            await report(stage="downloading", progress=0, bytesDownloaded=0, cpuSeconds=0.0)
            if lid.startswith(STEADY):
                # The steady-state phase: a transcode that runs and changes nothing until released.
                await self.release_steady.wait()
                t0 = time.monotonic() - self.work
            values = self.stats.values
            for k, value in enumerate(values if not lid.startswith(STEADY) else [], 1):
                await asyncio.sleep(max(0.0, t0 + self.work * k / (len(values) + 1) - time.monotonic()))
                sent, acked = await report(stage="encoding", progress=value, bytesDownloaded=4_000_000,
                                           inputDurationSeconds=120.0, speed=4.0, cpuSeconds=round(0.5 * k, 3))
                self.stats.reports.append({"lid": lid, "value": value, "sent": sent, "acked": acked})
            await asyncio.sleep(max(0.0, t0 + self.work - time.monotonic()))
            # The upload the Job was told to write (args[1] = cloudinary:<public id>): the operator
            # believes no other URL (operator/trust.py).
            video = f"https://res.cloudinary.com/demo/video/upload/{args[1].split(':', 1)[1]}.mp4"
            await report(stage="done", progress=100, videoUrl=video, bytesDownloaded=4_000_000,
                         bytesUploaded=1_000_000, inputDurationSeconds=120.0, speed=4.0, cpuSeconds=2.0)
            finished = ts()
            message = json.dumps({"exitCode": 0, "reason": "ok", "videoUrl": video})
            await self.api.call_retry("PATCH", pod_path, errors=self.retries, body={"status": {
                "phase": "Succeeded",
                "conditions": [{"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
                               {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
                               {"type": "Initialized", "status": "True", "reason": "PodCompleted"}],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                       "containerID": cid, "ready": False, "started": False, "restartCount": 0,
                                       "state": {"running": None, "terminated": {
                                           "exitCode": 0, "reason": "Completed", "message": message,
                                           "startedAt": started, "finishedAt": finished, "containerID": cid}}}]}}, ctype=smp)
            self.stats.pod_done[lid] = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
            self.errors.append(f"pod {name}: {type(exc).__name__}: {exc}")
            say(f"node: pod {name} gave up: {type(exc).__name__}: {str(exc)[:300]}")


# -- what the watches and the subscriber record ---------------------------------------------------

class Stats:
    def __init__(self, count: int, cap: int, values: list[int]) -> None:
        self.count, self.cap, self.values = count, cap, values
        self.phase: dict[str, str | None] = {}
        self.running = 0
        self.max_running = 0
        self.exceeded: list[tuple[float, int]] = []
        self.series: list[tuple[float, int]] = []     # (t, Running count) after each change
        self.t_running: dict[str, float] = {}
        self.t_succeeded: dict[str, float] = {}
        self.t_failed: dict[str, float] = {}
        self.report_seen: dict[tuple[str, int], float] = {}   # (lid, value) -> when our CR watch saw it
        self.lid_of: dict[str, str] = {}
        self.reports: list[dict] = []
        self.pod_seen: dict[str, float] = {}
        self.pod_done: dict[str, float] = {}
        self.deleted_pods: set[str] = set()
        self.job_created: dict[str, float] = {}
        self.job_complete: dict[str, float] = {}
        self.jobs_active = 0
        self.max_jobs_active = 0
        self.notes: list[tuple[float, dict]] = []
        self.all_done = asyncio.Event()
        self.deleted = 0
        self.last_vt_event = 0.0
        self.sample: dict | None = None
        self.steady_running = 0
        self.steady_done: set[str] = set()

    def on_vt(self, etype: str, obj: dict, t: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        self.last_vt_event = t
        lid = (obj.get("spec") or {}).get("lectureId", "")
        self.lid_of[name] = lid
        new = None if etype == "DELETED" else status.get("phase")
        old = self.phase.get(name)
        steady = name.startswith("st-")
        if etype == "DELETED":
            self.deleted += 1
        elif not steady and name == "vt-00000":
            self.sample = obj
        if steady:
            if new == "Running" and old != "Running":
                self.steady_running += 1
            elif old == "Running" and new != "Running":
                self.steady_running -= 1
            if new == "Succeeded":
                self.steady_done.add(name)
        if new != old:
            self.phase[name] = new
            if old == "Running":
                self.running -= 1
            if new == "Running":
                self.running += 1
                self.t_running.setdefault(lid, t)
                if self.running > self.max_running:
                    self.max_running = self.running
                if self.running > self.cap:
                    self.exceeded.append((t, self.running, name))
            if new == "Succeeded" and not steady:
                self.t_succeeded.setdefault(lid, t)
            elif new == "Failed" and not steady:
                self.t_failed.setdefault(lid, t)
            self.series.append((t, self.running))
            if len(self.t_succeeded) + len(self.t_failed) >= self.count:
                self.all_done.set()
        progress = (status.get("report") or {}).get("progress")
        if isinstance(progress, int):
            for v in self.values:
                if v <= progress:
                    self.report_seen.setdefault((lid, v), t)

    def on_job(self, etype: str, obj: dict, t: float) -> None:
        lid = (obj["metadata"].get("labels") or {}).get(api.LABEL_LECTURE_ID, obj["metadata"]["name"])
        if lid not in self.job_created:
            self.job_created[lid] = t
            self.jobs_active += 1
            self.max_jobs_active = max(self.max_jobs_active, self.jobs_active)
        conds = (obj.get("status") or {}).get("conditions") or []
        # The operator reads a Job as finished from its first terminal(-to-be) condition: the Job
        # controller sets SuccessCriteriaMet / FailureTarget before Complete / Failed.
        if lid not in self.job_complete and any(c.get("type") in ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget")
                                                and c.get("status") == "True" for c in conds):
            self.job_complete[lid] = t
            self.jobs_active -= 1


def subscribe(url: str, stats: Stats, ready: threading.Event, stop: threading.Event) -> None:
    """The Socket.IO server's side: every message on `notifications`, timestamped on arrival."""
    r = redis.Redis.from_url(url)
    ps = r.pubsub()
    ps.subscribe("notifications")
    ready.set()
    while not stop.is_set():
        m = ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if m and m["type"] == "message":
            stats.notes.append((time.monotonic(), json.loads(m["data"])))
    ps.close()


# -- apiserver /metrics ---------------------------------------------------------------------------

_METRIC = re.compile(r'^(apiserver_request_total|apiserver_request_duration_seconds_sum|apiserver_request_duration_seconds_count)\{([^}]*)\} (\S+)$')


def api_metrics(cluster: LocalCluster) -> dict[tuple[str, str, str], list[float]]:
    req = urllib.request.Request(cluster.server + "/metrics")
    with urllib.request.urlopen(req, context=cluster.ssl_context(), timeout=30) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # total, dur_sum, dur_count
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("verb") == "WATCH" or labels.get("verb") == "CONNECT":
            continue
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        i = {"apiserver_request_total": 0, "apiserver_request_duration_seconds_sum": 1,
             "apiserver_request_duration_seconds_count": 2}[m.group(1)]
        out[key][i] += float(m.group(3))
    return dict(out)


# -- the run --------------------------------------------------------------------------------------

async def drive(args, cluster: LocalCluster, identity: ChartIdentity, op_env: dict[str, str], op_log: Path,
                redis_url: str, stats: Stats, result: dict) -> None:
    p = cluster.pki
    assert p is not None
    admin = Api(cluster.server, p.ca.cert, (p.admin.cert, p.admin.key))
    node_api = Api(cluster.server, p.ca.cert, (p.node.cert, p.node.key), limit=100)
    anon = Api(cluster.server, p.ca.cert, limit=100)                      # transcoders: their own tokens
    intake = Api(cluster.server, p.ca.cert, token=identity.token("intake", seconds=6 * 3600), limit=32)
    node = Node(node_api, anon, args.cap, args.work, stats)
    tasks: list[asyncio.Task] = []
    op = None
    try:
        await node.register()
        loop = asyncio.get_running_loop()
        failed: list[BaseException] = []

        def fatal(task: asyncio.Task) -> None:  # a dead watch would silently stop the counts
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())
                say(f"{task.get_name()} died: {task.exception()!r}")
                stats.all_done.set()

        listed = [asyncio.Event() for _ in range(3)]
        for coro, what in ((node.heartbeat(), "node heartbeat"),
                           (admin.watch(f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}", stats.on_vt,
                                        listed_flag=listed[0]), "CR watch"),
                           (admin.watch(f"/apis/batch/v1/namespaces/{NS}/jobs", stats.on_job, listed_flag=listed[1]), "Job watch"),
                           (node_api.watch("/api/v1/pods", node.on_pod, {"fieldSelector": f"spec.nodeName%3D{NODE}"},
                                           listed_flag=listed[2]), "pod watch")):
            tasks.append(loop.create_task(coro, name=what))
            tasks[-1].add_done_callback(fatal)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in listed)), 120)

        op = subprocess.Popen([str(Path(sys.executable).with_name("lectern-operator"))], env=op_env, cwd=str(op_log.parent),
                              stdout=open(op_log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        result["_op"] = op
        health = f"http://127.0.0.1:{op_env['LECTERN_HEALTH_PORT']}/healthz"
        deadline = time.monotonic() + 120
        while True:
            if op.poll() is not None:
                raise RuntimeError(f"lectern-operator exited with {op.returncode}:\n{op_log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("lectern-operator not healthy after 120 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        say(f"operator up (pid {op.pid})")
        if args.steady_seconds > 0:
            result["steady"] = await steady_state(args, cluster, intake, node, stats, result)
        say(f"creating {args.count} VideoTranscodes")

        cpu0 = {name: proc_cpu(pid) for name, pid in result["pids"].items()} | {"lectern-operator": proc_cpu(op.pid)}
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        metrics0 = await asyncio.to_thread(api_metrics, cluster)
        result["load_start"] = os.getloadavg()
        t0 = time.monotonic()
        result["t0"] = t0
        sem = asyncio.Semaphore(32)
        create_errors: list[str] = []

        async def create(i: int) -> None:
            lid = f"lec{i:05d}"
            body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"vt-{i:05d}", "namespace": NS},
                    "spec": {"lectureId": lid, "instructorId": "bench",
                             "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/{lid}.mov"}}
            async with sem:
                for attempt in range(5):
                    try:
                        await intake.call("POST", f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}", body)
                        return
                    except ApiError as exc:
                        if exc.code == 409:
                            return
                        if attempt == 4:
                            create_errors.append(f"{lid}: {exc}")
                        await asyncio.sleep(1)

        await asyncio.gather(*(create(i) for i in range(args.count)))
        result["create_seconds"] = time.monotonic() - t0
        result["create_errors"] = create_errors
        say(f"created in {result['create_seconds']:.1f} s; waiting for all to finish (timeout {args.timeout:g} s)")

        rss_peak_sampled = 0.0
        rss_series: list[tuple[float, float, int, int]] = []   # (t, VmRSS MB, succeeded, running)
        result["rss_series"] = rss_series
        last_say = time.monotonic()
        deadline = t0 + args.timeout
        while not stats.all_done.is_set() and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(stats.all_done.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if op.poll() is not None:
                raise RuntimeError(f"lectern-operator exited with {op.returncode} mid-run:\n{op_log.read_text()[-3000:]}")
            rss_now = proc_mem_mb(op.pid)["VmRSS"]
            rss_peak_sampled = max(rss_peak_sampled, rss_now)
            rss_series.append((round(time.monotonic() - t0, 1), round(rss_now, 1), len(stats.t_succeeded), stats.running))
            if time.monotonic() - last_say > 15:
                last_say = time.monotonic()
                say(f"t={time.monotonic() - t0:.0f}s succeeded {len(stats.t_succeeded)}/{args.count}, running "
                    f"{stats.running} (max {stats.max_running}), reports {len(stats.reports)}, notifications "
                    f"{len(stats.notes)}, load {os.getloadavg()[0]:.1f}, operator RSS {proc_mem_mb(op.pid)['VmRSS']:.0f} MB")
        if failed:
            raise RuntimeError(f"a watch of the driver failed: {failed[0]!r}")
        result["timed_out"] = not stats.all_done.is_set()
        t_end = max([*stats.t_succeeded.values(), *stats.t_failed.values()], default=time.monotonic())
        result["all_final_seconds"] = t_end - t0
        # The final notification goes out before the Succeeded patch; give stragglers a moment.
        for _ in range(50):
            finals = sum(1 for _, m in stats.notes if m.get("type") in ("VIDEO_READY", "VIDEO_FAILED"))
            if finals >= args.count:
                break
            await asyncio.sleep(0.2)
        result["load_end"] = os.getloadavg()
        mem = proc_mem_mb(op.pid)
        result["rss"] = {**mem, "sampled_peak": rss_peak_sampled}
        result["cpu"] = {name: round(proc_cpu(pid) - cpu0[name], 1) for name, pid in
                         (result["pids"] | {"lectern-operator": op.pid}).items()}
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu"]["driver (this process)"] = round(self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime, 1)
        result["wall"] = time.monotonic() - t0
        metrics1 = await asyncio.to_thread(api_metrics, cluster)
        rows = []
        for key, (total, dsum, dcount) in metrics1.items():
            b = metrics0.get(key, [0.0, 0.0, 0.0])
            n = total - b[0]
            if n >= 1:
                c = dcount - b[2]
                rows.append({"verb": key[0], "resource": key[1] + (f"/{key[2]}" if key[2] else ""), "count": int(n),
                             "mean_ms": round(1000 * (dsum - b[1]) / c, 1) if c else None})
        result["api_requests"] = sorted(rows, key=lambda r: -r["count"])
        # How big one CR is as the operator receives it (kopf keeps every object's body).
        sample = stats.sample or {"metadata": {}}  # (the CR itself may be gone: retention)
        managed = sample["metadata"].get("managedFields") or []
        result["cr_bytes"] = {"whole": len(json.dumps(sample)), "managedFields": len(json.dumps(managed)),
                              "annotations": len(json.dumps(sample["metadata"].get("annotations") or {}))}
        result["node_errors"] = node.errors
        result["node_retries"] = node.retries
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in node.tasks.values():
            t.cancel()
        await asyncio.gather(*node.tasks.values(), return_exceptions=True)
        for a in (admin, node_api, anon, intake):
            await a.close()


def audit_count(log: Path, user: str, start: float, end: float) -> tuple[int, Counter]:
    """Requests of `user` (not watches) received in [start, end] (epoch seconds), from the API
    server's audit log (ResponseComplete / Panic stages only: one line per request)."""
    n = 0
    by: Counter = Counter()
    if not log.exists():
        return 0, by
    for path in sorted(log.parent.glob(log.name + "*")):
        with open(path) as fh:
            for line in fh:
                ev = json.loads(line)
                if (ev.get("user") or {}).get("username") != user or ev.get("verb") == "watch":
                    continue
                t = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
                if start <= t <= end:
                    n += 1
                    ref = ev.get("objectRef") or {}
                    by[f"{ev.get('verb')} {ref.get('resource', '')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"] += 1
    return n, by


async def steady_state(args, cluster: LocalCluster, intake: "Api", node: Node, stats: Stats, result: dict) -> dict:
    """`cap` transcodes that run and change nothing (their pods Running, no reports) for
    `--steady-seconds`: the operator's own API requests in that window (the API server's audit
    log, filtered to the operator's ServiceAccount user) per running transcode per minute."""
    say(f"steady state: {args.cap} transcodes held Running for {args.steady_seconds:g} s")
    for i in range(args.cap):
        lid = f"{STEADY}{i:05d}"
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"st-{i:05d}", "namespace": NS},
                "spec": {"lectureId": lid, "instructorId": "bench",
                         "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/{lid}.mov"}}
        await intake.call_retry("POST", f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}", body)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        processing = {m.get("lectureId") for _, m in stats.notes if m.get("type") == "VIDEO_PROCESSING"}
        if stats.steady_running >= args.cap and sum(1 for l in processing if str(l).startswith(STEADY)) >= args.cap:
            break
        await asyncio.sleep(0.5)
    else:
        say(f"steady state: only {stats.steady_running} of {args.cap} Running after 300 s")
    # The starts settle: the window opens once no CR has changed for 5 s (at most 120 s).
    quiet_deadline = time.monotonic() + 120
    while time.monotonic() - stats.last_vt_event < 5 and time.monotonic() < quiet_deadline:
        await asyncio.sleep(0.5)
    running = stats.steady_running
    metrics0 = await asyncio.to_thread(api_metrics, cluster)
    start = time.time()
    await asyncio.sleep(args.steady_seconds)
    end = time.time()
    metrics1 = await asyncio.to_thread(api_metrics, cluster)
    await asyncio.sleep(2)  # audit lines are written when the response completes
    n, by = await asyncio.to_thread(audit_count, result["audit_log"], result["operator_user"], start, end)
    all_clients = int(sum(v[0] - metrics0.get(k, [0.0])[0] for k, v in metrics1.items()))
    node.release_steady.set()
    deadline = time.monotonic() + 300
    while len(stats.steady_done) < args.cap and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    minutes = (end - start) / 60
    out = {"running": running, "seconds": round(end - start, 1), "operator_requests": n,
           "operator_requests_by_kind": dict(by.most_common(10)),
           "requests_per_running_per_min": round(n / max(running, 1) / minutes, 3),
           "all_clients_requests": all_clients, "steady_finished": len(stats.steady_done)}
    say(f"steady state: {json.dumps(out)}")
    return out


def analyse(args, stats: Stats, result: dict, coll) -> dict:
    t0 = result["t0"]
    notes_progress: dict[str, list[tuple[float, int]]] = defaultdict(list)
    finals: Counter = Counter()
    final_t: dict[str, float] = {}
    for t, m in stats.notes:
        if m.get("type") == "VIDEO_PROGRESS" and isinstance(m.get("progress"), int):
            notes_progress[m["lectureId"]].append((t, m["progress"]))
        elif m.get("type") in ("VIDEO_READY", "VIDEO_FAILED"):
            finals[m["lectureId"]] += 1
            final_t.setdefault(m["lectureId"], t)
    lags, lags_any, api_write, watch_seen, rest = [], [], [], [], []
    missing, covered_by_final = [], 0
    per_cr_missing: set[str] = set()
    by_window: dict[str, list[float]] = defaultdict(list)
    for r in stats.reports:
        hit = next((t for t, v in notes_progress.get(r["lid"], ()) if v >= r["value"] and t >= r["sent"] - 0.001), None)
        if hit is None:
            missing.append(r)
            per_cr_missing.add(r["lid"])
            ft = final_t.get(r["lid"])
            if ft is not None and ft >= r["sent"]:
                covered_by_final += 1
                lags_any.append(ft - r["sent"])
            continue
        lag = hit - r["sent"]
        lags.append(lag)
        lags_any.append(lag)
        api_write.append(r["acked"] - r["sent"])
        seen = stats.report_seen.get((r["lid"], r["value"]))
        if seen is not None:
            watch_seen.append(max(0.0, seen - r["sent"]))
            rest.append(max(0.0, hit - seen))
        minute = int((r["sent"] - t0) // 60)
        by_window[f"{minute * 60}-{minute * 60 + 60}s"].append(lag)
    expected_reports = args.count * len(stats.values)
    # Progress notifications wait for the once-only VIDEO_PROCESSING (sent by the first reconcile
    # tick after the Lecture write): how late it was, and how many missing reports were already
    # overwritten (by the next report, or the final one) when it went out.
    proc_t: dict[str, float] = {}
    for t, m in stats.notes:
        if m.get("type") == "VIDEO_PROCESSING":
            proc_t.setdefault(m["lectureId"], t)
    processing_delay = [proc_t[l] - stats.t_running[l] for l in proc_t if l in stats.t_running]
    sent_by_lid: dict[str, list[float]] = defaultdict(list)
    for r in stats.reports:
        sent_by_lid[r["lid"]].append(r["sent"])
    overwritten_before_processing = 0
    for r in missing:
        later = sorted(t for t in sent_by_lid[r["lid"]] if t > r["sent"])
        replaced = later[0] if later else stats.pod_done.get(r["lid"], float("inf"))
        if proc_t.get(r["lid"], float("inf")) > replaced:
            overwritten_before_processing += 1

    def trio(v: list[float]) -> dict:
        return {"p50": round(pct(v, 0.5), 3) if v else None, "p95": round(pct(v, 0.95), 3) if v else None,
                "max": round(max(v), 3) if v else None, "n": len(v)}

    # Time the operator held the cap: seconds with Running == cap, from the series.
    at_cap = over_cap = 0.0
    for (t1, n1), (t2, _) in zip(stats.series, stats.series[1:]):
        if n1 >= args.cap:
            at_cap += t2 - t1
        if n1 > args.cap:
            over_cap += t2 - t1
    # Each time above the cap: which CR started, and whether a CR went Running -> Succeeded
    # right after (the operator's own final patch of the transcode whose slot it reused).
    over_examples = []
    for t, n, name in stats.exceeded[:5]:
        nxt = next(((t2 - t) for t2, n2 in stats.series if t2 > t and n2 <= args.cap), None)
        over_examples.append({"started": name, "running": n, "back_under_cap_after_s": round(nxt, 3) if nxt is not None else None})
    job_to_done = [stats.job_complete[l] - stats.pod_done[l] for l in stats.pod_done if l in stats.job_complete]
    vt_after_job = [stats.t_succeeded[l] - stats.job_complete[l] for l in stats.job_complete if l in stats.t_succeeded]
    ready = coll.count_documents({"status": "READY", "steady": {"$exists": False}})
    f = {
        "count": args.count, "cap": args.cap, "work_seconds": args.work,
        "all_succeeded_seconds": round(result["all_final_seconds"], 1),
        "succeeded": len(stats.t_succeeded), "failed": len(stats.t_failed), "timed_out": result["timed_out"],
        "create_seconds": round(result["create_seconds"], 1), "create_errors": len(result["create_errors"]),
        "max_running_operator": stats.max_running, "times_over_cap": len(stats.exceeded),
        "seconds_at_cap": round(at_cap, 1), "seconds_over_cap": round(over_cap, 3), "over_cap_examples": over_examples,
        "max_jobs_unfinished": stats.max_jobs_active, "jobs_created": len(stats.job_created),
        "lag": trio(lags), "lag_reports_expected": expected_reports, "lag_reports_sent": len(stats.reports),
        "lag_missing": len(missing), "lag_missing_covered_by_final": covered_by_final,
        "lag_missing_overwritten_before_processing_notification": overwritten_before_processing,
        "running_to_processing_notification": trio(processing_delay),
        "crs_with_a_missing_progress_notification": len(per_cr_missing),
        "lag_including_final": trio(lags_any),
        "lag_api_write": trio(api_write), "lag_watch_delivery": trio(watch_seen), "lag_operator_after_watch": trio(rest),
        "lag_p95_by_minute": {k: round(pct(v, 0.95), 3) for k, v in sorted(by_window.items(), key=lambda kv: int(kv[0].split('-')[0]))},
        "pod_succeeded_to_job_complete": trio(job_to_done),
        "job_complete_to_vt_succeeded": trio(vt_after_job),
        "operator_peak_rss_mb": round(result["rss"]["VmHWM"], 1), "operator_rss_end_mb": round(result["rss"]["VmRSS"], 1),
        "final_notifications": sum(finals.values()), "lectures_with_final": len(finals),
        "duplicate_final_notifications": sum(n - 1 for n in finals.values() if n > 1),
        "lectures_ready": ready, "cpu_seconds": result["cpu"], "wall_seconds": round(result["wall"], 1),
        "cr_object_bytes": result["cr_bytes"],
        "operator_rss_series_every_10th": result["rss_series"][::10],
        "operator_rss_when_all_created_mb": next((r for _, r, _, _ in result["rss_series"]), None),
        "api_requests": result["api_requests"][:25], "node_errors": result["node_errors"][:20],
        "node_errors_total": len(result["node_errors"]), "node_retries_total": len(result["node_retries"]),
        "node_retries": result["node_retries"][:10],
        "load_start": [round(x, 2) for x in result["load_start"]], "load_end": [round(x, 2) for x in result["load_end"]],
    }
    return f


def show(f: dict) -> None:
    """The run's figures as a table, on stderr (stdout carries the one JSON object)."""
    import builtins

    def print(*a: Any, **k: Any) -> None:  # noqa: A001 - this function's output goes to stderr
        builtins.print(*a, file=sys.stderr, **k)
    lag, cap = f["lag"], f["cap"]
    rows = [
        ("VideoTranscodes / cap / work per transcode", f"{f['count']} / {cap} / {f['work_seconds']:g} s", ""),
        ("all Succeeded (first create -> last Succeeded)", f"{f['all_succeeded_seconds']} s ({f['succeeded']} ok, {f['failed']} failed"
         + (", TIMED OUT" if f["timed_out"] else "") + ")", ""),
        ("Running held by the operator, max", f"{f['max_running_operator']} ({f['times_over_cap']} times over the cap, "
         f"{f['seconds_over_cap']} s in all; {f['seconds_at_cap']} s at or over it)", f"<= {cap}"),
        ("Jobs not finished at once, max (Job watch)", f"{f['max_jobs_unfinished']}", ""),
        ("report -> VIDEO_PROGRESS lag p50/p95/max", f"{lag['p50']} / {lag['p95']} / {lag['max']} s", "p95 <= 2 s"),
        ("  measured / sent / expected", f"{lag['n']} / {f['lag_reports_sent']} / {f['lag_reports_expected']}", ""),
        ("  missing (of which covered by the final)", f"{f['lag_missing']} ({f['lag_missing_covered_by_final']}), "
         f"CRs affected {f['crs_with_a_missing_progress_notification']}", "0"),
        ("  missing, overwritten before VIDEO_PROCESSING went out", f"{f['lag_missing_overwritten_before_processing_notification']}", ""),
        ("  CR Running -> VIDEO_PROCESSING p50/p95", f"{f['running_to_processing_notification']['p50']} / {f['running_to_processing_notification']['p95']} s", ""),
        ("  API write p50/p95", f"{f['lag_api_write']['p50']} / {f['lag_api_write']['p95']} s", ""),
        ("  watch delivery p50/p95", f"{f['lag_watch_delivery']['p50']} / {f['lag_watch_delivery']['p95']} s", ""),
        ("  operator after the watch p50/p95", f"{f['lag_operator_after_watch']['p50']} / {f['lag_operator_after_watch']['p95']} s", ""),
        ("pod Succeeded -> Job Complete p50/p95", f"{f['pod_succeeded_to_job_complete']['p50']} / {f['pod_succeeded_to_job_complete']['p95']} s", ""),
        ("Job Complete -> CR Succeeded p50/p95", f"{f['job_complete_to_vt_succeeded']['p50']} / {f['job_complete_to_vt_succeeded']['p95']} s", ""),
        ("driver's node: API retries / pods given up or deleted", f"{f['node_retries_total']} / {f['node_errors_total']}", "0"),
        ("operator peak RSS (VmHWM)", f"{f['operator_peak_rss_mb']} MB (end {f['operator_rss_end_mb']} MB)", "<= 200 MB"),
        ("final notifications / duplicates", f"{f['final_notifications']} / {f['duplicate_final_notifications']}", "N / 0"),
        ("Lectures READY", f"{f['lectures_ready']}", f"{f['count']}"),
        ("load average start -> end", f"{f['load_start']} -> {f['load_end']}", ""),
    ]
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:<{v}}  {c}")
    print(f"one CR as served: {f['cr_object_bytes']} bytes of JSON; operator RSS right after the creates: "
          f"{f['operator_rss_when_all_created_mb']} MB")
    print("CPU seconds during the run: " + ", ".join(f"{k} {v}" for k, v in f["cpu_seconds"].items()))
    print("API requests (verb resource: count, mean latency):")
    for r in f["api_requests"][:15]:
        print(f"  {r['verb']:<7} {r['resource']:<34} {r['count']:>7}  {r['mean_ms']} ms")
    if f["node_errors"]:
        print("node errors:", *f["node_errors"][:5], sep="\n  ")


def write_md(runs: list[dict], flats: list[dict], summary: dict, command: str) -> None:
    """bench/OPERATOR_RESULTS.md: the sweep, then the details of its largest run."""
    f = max(runs, key=lambda r: r["count"])
    lag, cap = f["lag"], f["cap"]
    cpu = ", ".join(f"{k} {v} s" for k, v in f["cpu_seconds"].items())
    api_rows = "\n".join(f"| {r['verb']} {r['resource']} | {r['count']} | {r['mean_ms']} |" for r in f["api_requests"][:14])
    sweep = "\n".join(
        f"| {r['count']:,} | {r['all_succeeded_seconds']} s | {r['seconds_per_transcode']} s | {r['operator_peak_rss_mb']} MB "
        f"| {r['lag_p95_s']} s | {r['lag_measured']} / {r['lag_expected']} | {r['api_requests_per_running_per_min']} "
        f"| {r['max_running_operator']} | {r['duplicate_final_notifications']} | {r['crs_deleted_by_retention']} |"
        for r in flats if "error" not in r)
    bad = [r for r in flats if "error" in r]
    bad_md = "".join(f"\n- {r['count']:,}: **did not finish**: {r['error']}" for r in bad)
    steady = f.get("steady") or {}
    kinds = ", ".join(f"{k}: {v}" for k, v in (steady.get("operator_requests_by_kind") or {}).items()) or "none"
    env = f.get("chart_env") or {}
    RESULTS.write_text(f"""# Operator benchmark (real API server)

`{command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared with other work; load
average {f['load_start'][0]} at the start of the largest run, {f['load_end'][0]} at its end). What runs and
how each figure is measured: the docstring of `bench/operator.py`. In short: etcd + kube-apiserver +
kube-controller-manager + kube-scheduler v1.37.2 (hack/cluster.py, a fresh one per size), Redis,
FerretDB, and `lectern-operator` as its own process with the chart's environment (rendered by
`helm template`: {", ".join(f"{k}={v}" for k, v in env.items())}) and its ServiceAccount's token
and RBAC. The driver plays the node (pods/status as a kubelet, the transcoder's `status.report`
patches with the pod's ServiceAccount token, {f['work_seconds']:g} s of "work" per transcode:
downloading 0 %, then 25/50/75 % spread over it, then done); the real Job controller completes
the Jobs. Finished VideoTranscodes are deleted {f['retention_seconds']:g} s after they finished
(`operator.retentionSeconds`, 7 days by default). Machine-readable: `bench/out/operator.json`
and the `operator` section of `bench/results.json`.

## The sweep (cap {cap})

| VideoTranscodes | all Succeeded after | per transcode | operator peak RSS | lag p95 | lag measured / expected | API requests / running / min (steady) | max Running | duplicate finals | CRs deleted by retention |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{sweep}
{bad_md}

Time per transcode, largest / smallest - 1: **{summary['time_per_transcode_spread']}** (target <= 0.2);
peak RSS at most **{summary['peak_rss_max_mb']} MB** (target <= 200); lag p95 at most
**{summary['lag_p95_max_s']} s** (target <= 2); steady-state API requests per running transcode
per minute at most **{summary['api_requests_per_running_per_min_max']}** (target < 6).

**Steady state** (before each run's creates): {steady.get('running')} transcodes held Running
(pods Running, no reports) for {steady.get('seconds')} s; the API server's audit log, filtered to
the operator's ServiceAccount user, shows {steady.get('operator_requests')} requests from the
operator in that window ({kinds}); all clients together made {steady.get('all_clients_requests')}
(`apiserver_request_total`, the driver's node heartbeats included).

## The largest run ({f['count']:,}) in detail

| figure | measured | target |
| --- | --- | --- |
| all {f['count']} CRs `Succeeded` (first create -> last Succeeded) | {f['all_succeeded_seconds']} s ({f['succeeded']} Succeeded, {f['failed']} Failed) | |
| Running held by the operator (its CRs' `status.phase`, from a watch), max | **{f['max_running_operator']}** | <= cap ({cap}) |
| ... times above the cap / time at or above it | {f['times_over_cap']} / {f['seconds_at_cap']} s | 0 |
| report -> `VIDEO_PROGRESS` lag, p50 / p95 / max | **{lag['p50']} / {lag['p95']} / {lag['max']} s** | p95 <= 2 s |
| reports measured / sent / expected | {lag['n']} / {f['lag_reports_sent']} / {f['lag_reports_expected']} | all |
| reports with no `VIDEO_PROGRESS` (of which the final covered) | {f['lag_missing']} ({f['lag_missing_covered_by_final']}), in {f['crs_with_a_missing_progress_notification']} CRs | 0 |
| CR Running -> `VIDEO_PROCESSING`, p50 / p95 | {f['running_to_processing_notification']['p50']} / {f['running_to_processing_notification']['p95']} s | |
| Job finished -> CR Succeeded, p50 / p95 | {f['job_complete_to_vt_succeeded']['p50']} / {f['job_complete_to_vt_succeeded']['p95']} s | |
| the driver's node: API calls retried / pods given up or deleted while running | {f['node_retries_total']} / {f['node_errors_total']} | 0 |
| operator peak RSS (VmHWM) | **{f['operator_peak_rss_mb']} MB** (end {f['operator_rss_end_mb']} MB) | <= 200 MB |
| final notifications / duplicates | {f['final_notifications']} / **{f['duplicate_final_notifications']}** | {f['count'] + cap} / 0 |
| Lectures READY | {f['lectures_ready']} | {f['count']} |

Where the lag goes (p50 / p95 of the measured reports): API write {f['lag_api_write']['p50']} /
{f['lag_api_write']['p95']} s, watch delivery {f['lag_watch_delivery']['p50']} / {f['lag_watch_delivery']['p95']} s,
the operator after that {f['lag_operator_after_watch']['p50']} / {f['lag_operator_after_watch']['p95']} s.
Lag p95 by minute of the run: {", ".join(f"{k}: {v} s" for k, v in f["lag_p95_by_minute"].items())}.

CPU seconds during the run ({f['wall_seconds']} s of wall time): {cpu}.

API requests during the run (all clients; watches not counted):

| verb resource | count | mean latency (ms) |
| --- | --- | --- |
{api_rows}

## Reading the figures

- **Reads from watches.** The operator learns about its Jobs and pods from one list+watch per
  kind and namespace, selected by label on the server (`lectern_operator.cache`); a Job/pod
  event or a report reconciles that transcode at once, and a 10 s resync reads the cache. So a
  transcode that simply runs costs the API server nothing (the steady-state figure), and the
  requests in the table above are writes that something changed: the CR's status, kopf's
  finalizer/annotations, Events, the Job, and the driver's own pod/report traffic.
- **Memory.** The operator keeps the transcodes in flight (the queue index, the cache of their
  Jobs and pods); a finished one is dropped from both once its Lecture and final notification
  are done, and deleted from the cluster after the retention period. What still grows with the
  CRs that exist (within the retention) is kopf's per-object record (a few KB each).
- **Missing progress notifications** are reports overwritten by the next report before the
  lecture's once-only `VIDEO_PROCESSING` went out (progress notifications wait for it), or
  reports within the 1 s progress-notify interval of the previous one.
""")


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
    users: ["{user}"]
  - level: None
"""


def flat(f: dict) -> dict:
    """The figures of one size, as `--count N` prints them (one JSON object)."""
    steady = f.get("steady") or {}
    return {
        "count": f["count"], "cap": f["cap"], "work_seconds": f["work_seconds"],
        "retention_seconds": f["retention_seconds"],
        "all_succeeded_seconds": f["all_succeeded_seconds"],
        "seconds_per_transcode": round(f["all_succeeded_seconds"] / max(f["count"], 1), 4),
        "succeeded": f["succeeded"], "failed": f["failed"], "timed_out": f["timed_out"],
        "operator_peak_rss_mb": f["operator_peak_rss_mb"], "operator_rss_end_mb": f["operator_rss_end_mb"],
        "lag_p50_s": f["lag"]["p50"], "lag_p95_s": f["lag"]["p95"], "lag_max_s": f["lag"]["max"],
        "lag_measured": f["lag"]["n"], "lag_expected": f["lag_reports_expected"], "lag_missing": f["lag_missing"],
        "api_requests_per_running_per_min": steady.get("requests_per_running_per_min"),
        "steady_running": steady.get("running"), "steady_seconds": steady.get("seconds"),
        "steady_operator_requests": steady.get("operator_requests"),
        "duplicate_final_notifications": f["duplicate_final_notifications"],
        "max_running_operator": f["max_running_operator"], "times_over_cap": f["times_over_cap"],
        "crs_deleted_by_retention": f["crs_deleted"], "lectures_ready": f["lectures_ready"],
        "load_start": f["load_start"], "load_end": f["load_end"],
    }


def run_one(args, count: int) -> dict:
    """One size: a fresh control plane, Redis, FerretDB and operator; returns the analysis."""
    work = Path(tempfile.mkdtemp(prefix="lectern-bench-op-"))
    work.chmod(0o755)
    say(f"[{count}] work folder {work}; load average {os.getloadavg()}")
    audit_dir = work / "audit"
    audit_dir.mkdir()
    user = f"system:serviceaccount:{NS}:lectern-operator"
    (audit_dir / "policy.yaml").write_text(AUDIT_POLICY.replace("{user}", user))
    cluster = LocalCluster(work / "cluster", node=False, fast_failure=False, quiet=True, apiserver_args=[
        f"--audit-policy-file={audit_dir / 'policy.yaml'}", f"--audit-log-path={audit_dir / 'audit.log'}",
        "--audit-log-format=json", "--audit-log-maxsize=200", "--audit-log-maxbackup=50",
        "--audit-log-mode=batch"], controller_manager_args=[
        # The Job controller's client is held to --kube-api-qps (20 by default): at a cap of 100
        # with 6 s transcodes it needs ~4 writes per Job, so the default held the slots (pod
        # Succeeded -> Job Complete p50 8.5 s) and measured the controller, not the operator.
        f"--kube-api-qps={args.kcm_qps}", f"--kube-api-burst={2 * args.kcm_qps}"])
    redis_srv = RedisServer(workdir=work / "redis", appendonly=False)
    mongo = MongoServer(workdir=work / "mongo")
    op = None
    result: dict[str, Any] = {"audit_log": audit_dir / "audit.log", "operator_user": user}
    args.count = count
    try:
        t = time.monotonic()
        cluster.start()
        say(f"control plane up in {time.monotonic() - t:.1f} s: {cluster.server}")
        admin = KubeClient(cluster.server, cluster.ssl_context())
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            for created in admin.apply_yaml(crd):
                admin.wait_for("crd", created["metadata"]["name"], timeout=60, predicate=lambda c: any(
                    x["type"] == "Established" and x["status"] == "True"
                    for x in ((c or {}).get("status") or {}).get("conditions") or []))
        kube = admin.in_namespace(NS)
        kube.ensure_namespace(NS, RESTRICTED)
        kube.wait_for("serviceaccounts", "default", timeout=60)
        home = work / "home"
        home.mkdir()
        identity = ChartIdentity(cluster, kube, home)
        sa = identity.service_account("operator")
        if sa != "lectern-operator":
            raise RuntimeError(f"the audit policy names lectern-operator, the chart's ServiceAccount is {sa}")
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-cloudinary", "namespace": NS},
                     "stringData": {"CLOUDINARY_URL": "cloudinary://key:secret@demo"}})
        token_file = home / "operator.token"
        token_file.write_text(identity.token("operator", seconds=6 * 3600))
        op_kubeconfig = identity.kubeconfig("operator", token_file=token_file)

        (work / "redis").mkdir()
        (work / "mongo").mkdir()
        redis_srv.start()
        mongo.start()
        coll = pymongo.MongoClient(mongo.url)["lectern"]["lectures"]
        coll.insert_many([{"_id": f"lec{i:05d}", "status": "AWAITING_MEDIA", "title": f"bench {i}",
                           "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/lec{i:05d}.mov"}
                          for i in range(count)])
        coll.insert_many([{"_id": f"{STEADY}{i:05d}", "status": "AWAITING_MEDIA", "steady": True,
                           "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/{STEADY}{i:05d}.mov"}
                          for i in range(args.cap)])

        chart_env = chart_operator_env(args.cap, home, cluster, args.retention)
        op_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
                  **chart_env,
                  "POD_ID": "lectern-operator-bench",
                  "LECTERN_MONGO_URL": mongo.url, "LECTERN_REDIS_URL": redis_srv.url,
                  "LECTERN_METRICS_PORT": str(free_port()), "LECTERN_HEALTH_PORT": str(free_port()),
                  "KUBECONFIG": str(op_kubeconfig)}
        result["chart_env"] = {k: v for k, v in chart_env.items()
                               if k in ("MALLOC_ARENA_MAX", "LECTERN_MAX_CONCURRENT", "LECTERN_RECONCILE_INTERVAL_SECONDS",
                                        "LECTERN_ADMIT_INTERVAL_SECONDS", "LECTERN_PROGRESS_NOTIFY_INTERVAL_SECONDS",
                                        "LECTERN_LOG_LEVEL", "LECTERN_STANDALONE", "LECTERN_RETENTION_SECONDS")}
        say("operator settings from the chart: " + json.dumps(result["chart_env"]))
        result["pids"] = {name: proc.proc.pid for name, proc in
                          (("etcd", cluster.procs["etcd"]), ("kube-apiserver", cluster.procs["apiserver"]),
                           ("kube-controller-manager", cluster.procs["controller_manager"]),
                           ("kube-scheduler", cluster.procs["scheduler"]))} | {
                              "redis-server": redis_srv.proc.pid, "ferretdb": mongo.proc.pid}

        values = [25, 50, 75]
        stop = threading.Event()
        ready = threading.Event()
        holder: dict[str, Stats] = {}

        async def run() -> None:
            stats = Stats(count, args.cap, values)
            holder["stats"] = stats
            threading.Thread(target=subscribe, args=(redis_srv.url, stats, ready, stop), daemon=True).start()
            await asyncio.to_thread(ready.wait, 10)
            await drive(args, cluster, identity, op_env, work / "operator.log", redis_srv.url, stats, result)

        try:
            asyncio.run(run())
        finally:
            op = result.get("_op")
            stop.set()
        f = analyse(args, holder["stats"], result, coll)
        f["steady"] = result.get("steady")
        f["retention_seconds"] = args.retention
        f["crs_deleted"] = holder["stats"].deleted
        f["chart_env"] = result["chart_env"]
        show(f)
        return f
    finally:
        if op is not None:
            stop_process(op, grace=30)
        cluster.stop()
        redis_srv.stop()
        mongo.stop()
        if args.keep:
            say(f"kept {work}")
        else:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def summarize(runs: list[dict], planned: int) -> tuple[list[dict], dict, dict]:
    flats = [flat(f) if "error" not in f else f for f in runs]
    ok_runs = [r for r in flats if "error" not in r]
    per = [r["seconds_per_transcode"] for r in ok_runs]
    summary = {
        "time_per_transcode_spread": round(max(per) / min(per) - 1, 3) if len(per) > 1 and min(per) > 0 else None,
        "peak_rss_max_mb": max((r["operator_peak_rss_mb"] for r in ok_runs), default=None),
        "lag_p95_max_s": max((r["lag_p95_s"] or 0 for r in ok_runs), default=None),
        "api_requests_per_running_per_min_max": max((r["api_requests_per_running_per_min"] or 0 for r in ok_runs), default=None),
        "duplicate_final_notifications": sum(r["duplicate_final_notifications"] for r in ok_runs),
    }
    out = flats[0] if planned == 1 and flats else {"runs": flats, **summary}
    return flats, summary, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", default=DEFAULT_SWEEP,
                    help="VideoTranscodes per run; a comma-separated list runs a size sweep (each on a fresh cluster)")
    ap.add_argument("--cap", type=int, default=100)
    ap.add_argument("--work", type=float, default=6.0, help="seconds each transcode 'runs' (reports spread over it)")
    ap.add_argument("--retention", type=float, default=30.0,
                    help="operator.retentionSeconds for the run: finished VTs are deleted this long after they finished")
    ap.add_argument("--steady-seconds", type=float, default=20.0,
                    help="the steady-state window (cap transcodes held Running); 0 skips it")
    ap.add_argument("--kcm-qps", type=int, default=200,
                    help="kube-controller-manager --kube-api-qps (its controllers' client rate limit)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--write", action="store_true", help="rewrite bench/OPERATOR_RESULTS.md")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    counts = [int(c) for c in str(args.count).split(",") if c.strip()]
    command = ".venv/bin/python bench/operator.py " + " ".join(sys.argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop every server on kill

    runs: list[dict] = []
    for i, count in enumerate(counts):
        try:
            runs.append(run_one(args, count))
        except Exception as exc:  # noqa: BLE001 - a size that went badly stays in the output
            say(f"[{count}] failed: {type(exc).__name__}: {exc}")
            runs.append({"count": count, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        # Recorded after every size (the section says which sizes it holds): a sweep cut short
        # keeps what it measured.
        flats, summary, out = summarize(runs, len(counts))
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "result": out,
                                   "details": runs}, indent=2, default=str) + "\n")
        say(f"wrote {OUT.relative_to(ROOT)}")
        if not args.no_record:
            from bench.results import record
            record("operator", {"runs": flats, **summary, "sizes_planned": counts, "cap": args.cap,
                                "work_seconds": args.work, "retention_seconds": args.retention,
                                "steady_seconds": args.steady_seconds, "kcm_qps": args.kcm_qps})
    flats, summary, out = summarize(runs, len(counts))
    ok_runs = [r for r in flats if "error" not in r]
    if args.write and ok_runs:
        write_md([f for f in runs if "error" not in f], flats, summary, command)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    print(json.dumps(out))
    good = all("error" not in r and not r["timed_out"] and r["succeeded"] == r["count"] and r["times_over_cap"] == 0
               and r["duplicate_final_notifications"] == 0 for r in flats)
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
