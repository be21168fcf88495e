"""The whole Lectern pipeline on one machine, on a real Kubernetes control plane, with the chart
installed by the real `helm`.

    with LocalStack(workdir) as stack:
        raw = stack.upload_raw(clip, lecture_id)        # the API's Cloudinary upload (real SDK)
        stack.lectures.insert_one({... "status": "AWAITING_MEDIA", "rawVideoUrl": raw})
        job_id = stack.producer.add({"lectureId": ..., "rawVideoUrl": raw, "instructorId": ...})
        stack.events.wait(job_id, "completed", timeout=60)

What runs (loopback only, random free ports; `close()` stops everything in reverse order and is
also what a failing test gets, so nothing outlives the run):

| process | what |
| --- | --- |
| `redis-server` | real, with AOF, so a restart keeps the queue (the platform's Redis) |
| FerretDB | MongoDB (SQLite backend), reached with pymongo (or `$MONGO_URL`) |
| Cloudinary emulator | tests/standins/cloudinary.py: upload API on http, delivery over https with a throw-away CA; a control API for faults |
| local cluster | hack/cluster.py `LocalCluster`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler v1.37.2 (TLS, RBAC, Pod Security) + our node agent, which runs each pod's container as a local process |
| `helm install lectern helm/lectern -n lectern-system` | the chart, as a user installs it: CRDs, ServiceAccounts, RBAC, ConfigMap, the operator and intake Deployments (their pods run `lectern-operator` / `lectern-intake` with in-cluster login), PDBs, metrics Services; it watches the namespace `lectern` (Pod Security `restricted`) |
| Node `producer.mjs` / `events.mjs` | the platform API's `Queue.add` and `QueueEvents` (tests/node) |

and in this process a Redis subscriber on `notifications` (the Socket.IO server's side).

The connection settings reach the pods as a user's would: Secrets (`MONGO_URL`, `REDIS_URL` in
the release namespace, `CLOUDINARY_URL` in the transcode namespace) named by the chart's
`existingSecret` values. The emulator's account URL carries the SDK's own `upload_prefix`
parameter (the SDK reads an upload prefix from the environment only when CLOUDINARY_CLOUD_NAME is
set, and then ignores CLOUDINARY_URL). What only a test needs is in the node's *images*, as if
the test images had it baked in: trust of the emulator's throw-away CA (`SSL_CERT_FILE`) and the
SSRF guard's one loopback exception for the emulator's https port
(`LECTERN_TEST_INSECURE_LOOPBACK`, which the operator's check of reported URLs honours too); never
in the chart. Tight timings (admission, reconcile,
progress, BullMQ lock) are plain chart values. The pods share the host network, so the operator
and the intake get distinct health and metrics ports (`intake.healthPort`, `intake.metricsPort`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import cloudinary.uploader
import pymongo
import redis
import yaml

from hack.cluster import LocalCluster, grant_traverse
from hack.nodeagent.images import images_from_dockerfiles
from hack.tools import helm_path
from tests.intake.conftest import Events, Producer
from tests.kube_client import ApiError, KubeClient
from tests.standins.cloudinary import CloudinaryProcess
from tests.standins.services import MongoServer, RedisServer, free_port, wait_until
from tests.standins.tls import make_test_certs

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "lectern"               # where the VideoTranscodes and their Jobs live
RELEASE = "lectern"
RELEASE_NAMESPACE = "lectern-system"
QUEUE = "video-queue"                # the contract's queue name and prefix
CHANNEL = "notifications"            # the contract's pub/sub channel
STREAM = "notifications:stream"
CLOUDINARY_FOLDER = "lectern/lectures"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
# A pod mounts an emptyDir at /tmp (the chart's read-only root): the node's own files must not
# live under /tmp, or the pod's /tmp mount would hide the volumes mounted after it.
CLUSTER_PARENT = os.environ.get("LECTERN_E2E_CLUSTER_DIR", "/var/tmp")


class Notifications:
    """A Redis pub/sub subscriber on `notifications`, as the Socket.IO server runs it; it
    re-subscribes after a Redis restart (messages published meanwhile are what the durable
    `notifications:stream` is for)."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        self.url, self.channel = url, channel
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notifications", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"no subscription to {channel}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.url, socket_timeout=5)
            try:
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    m = pubsub.get_message(timeout=0.2)
                    if m and m["type"] == "subscribe":
                        self._subscribed.set()
                    elif m and m["type"] == "message":
                        with self._cond:
                            self.messages.append({**json.loads(m["data"]), "_at": time.time()})
                            self._cond.notify_all()
            except (redis.RedisError, OSError, ValueError):
                self._stop.wait(0.2)
            finally:
                client.close()

    def of(self, lecture_id: str, type_: str | None = None) -> list[dict]:
        with self._cond:
            return [m for m in self.messages
                    if m.get("lectureId") == lecture_id and type_ in (None, m.get("type"))]

    def wait(self, lecture_id: str, type_: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if m.get("lectureId") == lecture_id and m.get("type") == type_]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {type_!r} notification for lecture {lecture_id} in {timeout:g}s; "
                                       f"seen: {[m for m in self.messages if m.get('lectureId') == lecture_id]}")
                self._cond.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LectureWatch:
    """Polls one Lecture document and records every status it passes through (FerretDB has
    no change streams; a transcode stays PROCESSING for seconds, so 20 ms polling sees it)."""

    def __init__(self, collection, key: Any, interval: float = 0.02) -> None:
        self.collection, self.key, self.interval = collection, key, interval
        self.statuses: list[str] = []
        self.last: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lecture-watch", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:
            doc = self.collection.find_one({"_id": self.key})
        except pymongo.errors.PyMongoError:
            doc = None
        if doc is not None:
            self.last = doc
            if not self.statuses or self.statuses[-1] != doc.get("status"):
                self.statuses.append(doc.get("status"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def wait_status(self, status: str, timeout: float) -> dict:
        wait_until(lambda: self.statuses and self.statuses[-1] == status, timeout, 0.02,
                   f"Lecture {self.key} {status} (so far: {self.statuses})")
        return self.last

    def stop(self) -> list[str]:
        """Stops polling and returns the statuses seen, the current one included (a poll may
        be slower than the event that made the caller stop)."""
        self._stop.set()
        self._thread.join(5)
        self._poll()
        return self.statuses


class ClusterRecorder:
    """Watches Jobs and Pods in one namespace through the real API server for the whole run and
    keeps what it saw, so a test can count what was ever created (Jobs are deleted by their TTL
    seconds after they finish) and how many pods ran at once. A broken watch (API server
    restart, 410 Gone) lists again; what vanished meanwhile counts as deleted."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.jobs: dict[str, dict] = {}        # uid -> last seen object (the DELETED one at the end)
        self.pods: dict[str, dict] = {}        # uid -> last seen object
        self.running: set[str] = set()
        self.max_running = 0
        self.deleted_jobs: set[str] = set()
        self.deleted_pods: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = {r: threading.Event() for r in ("jobs", "pods")}
        self._threads = [threading.Thread(target=self._watch, args=(r,), daemon=True, name=f"watch-{r}")
                         for r in ("jobs", "pods")]
        for t in self._threads:
            t.start()
        for event in self._synced.values():
            event.wait(15)

    def _watch(self, resource: str) -> None:
        path = self.kube.path(resource, namespace=self.namespace)
        while not self._stop.is_set():
            try:
                listing = self.kube.request("GET", path, timeout=15)
                rv = listing["metadata"]["resourceVersion"]
                self._relisted(resource, listing["items"])
                self._synced[resource].set()
                while not self._stop.is_set():
                    url = (f"{self.kube.server}{path}?watch=1&timeoutSeconds=10&allowWatchBookmarks=true"
                           f"&resourceVersion={rv}")
                    with urllib.request.urlopen(url, context=self.kube.ssl_context, timeout=20) as stream:
                        for line in stream:
                            event = json.loads(line)
                            if event["type"] == "ERROR":
                                raise ValueError(event["object"].get("message"))
                            obj = event["object"]
                            rv = obj["metadata"].get("resourceVersion", rv)
                            if event["type"] != "BOOKMARK":
                                self._seen(resource, event["type"], obj)
            except Exception:  # noqa: BLE001 - a cut stream (IncompleteRead), 410 Gone, a restart: list again
                if self._stop.wait(0.2):
                    return

    def _relisted(self, resource: str, items: list[dict]) -> None:
        present = {o["metadata"]["uid"] for o in items}
        known = self.jobs if resource == "jobs" else self.pods
        with self._lock:
            gone = [uid for uid in known if uid not in present]
        for uid in gone:
            self._seen(resource, "DELETED", known[uid])
        for obj in items:
            self._seen(resource, "MODIFIED", obj)

    def _seen(self, resource: str, etype: str, obj: dict) -> None:
        uid = obj["metadata"]["uid"]
        with self._lock:
            if resource == "jobs":
                self.jobs[uid] = obj
                if etype == "DELETED":
                    self.deleted_jobs.add(uid)
                return
            self.pods[uid] = obj
            if etype == "DELETED":
                self.deleted_pods.add(uid)
            if etype != "DELETED" and (obj.get("status") or {}).get("phase") == "Running":
                self.running.add(uid)
            else:
                self.running.discard(uid)
            self.max_running = max(self.max_running, len(self.running))

    def jobs_for(self, transcode_name: str) -> list[dict]:
        """Every Job ever created for a VideoTranscode (by its owner reference)."""
        with self._lock:
            return [j for j in self.jobs.values()
                    if any(r.get("kind") == "VideoTranscode" and r.get("name") == transcode_name
                           for r in j["metadata"].get("ownerReferences") or [])]

    def pods_for(self, job_name: str) -> list[dict]:
        with self._lock:
            pods = [p for p in self.pods.values()
                    if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job_name]
        return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])

    def pod_named(self, name: str) -> dict | None:
        with self._lock:
            found = [p for p in self.pods.values() if p["metadata"]["name"] == name]
        return found[-1] if found else None

    def job_deleted(self, job_uid: str) -> bool:
        with self._lock:
            return job_uid in self.deleted_jobs

    def reset_peak(self) -> None:
        with self._lock:
            self.max_running = len(self.running)

    def close(self) -> None:
        self._stop.set()


class ChartPod:
    """The pod of one of the chart's Deployments (`operator`, `intake`): find it, check its
    health endpoint (host network: the port is on this machine), crash it, read its log."""

    def __init__(self, stack: "LocalStack", component: str, health_port: int, health_path: str) -> None:
        self.stack, self.component = stack, component
        self.name = f"lectern-{component}"
        self.health_port, self.health_path = health_port, health_path
        self.selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"

    def pods(self) -> list[dict]:
        return self.stack.system.list("pods", labels=self.selector)

    def pod(self) -> dict | None:
        """The live pod (not being deleted)."""
        live = [p for p in self.pods() if not p["metadata"].get("deletionTimestamp")]
        return live[0] if live else None

    def restarts(self) -> int:
        pod = self.pod() or {}
        return sum(c.get("restartCount", 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{self.health_path}", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def ready(self) -> bool:
        """Its pod Running and Ready (the kubelet's probes passed), and its endpoint answering."""
        pod = self.pod()
        conditions = ((pod or {}).get("status") or {}).get("conditions") or []
        return bool(pod and pod["status"].get("phase") == "Running" and self.healthy()
                    and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions))

    def wait_ready(self, timeout: float = 60, pod_ready: bool = False) -> None:
        """`pod_ready`: also wait for the Ready condition (the chart's probes run every 5-10 s);
        otherwise the process answering its health endpoint is enough."""
        check = self.ready if pod_ready else (lambda: self.healthy() and self.pod() is not None)
        wait_until(check, timeout, 0.1, f"{self.name} {self.health_path}")

    def pids(self) -> list[int]:
        """The container's processes: the node agent's cgroup of the pod (else the process whose
        HOSTNAME is the pod's name, as the runtime sets it)."""
        pod = self.pod()
        if pod is None:
            return []
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        found: set[int] = set()
        node = self.stack.cluster.node_name
        for group in {node, f"lectern-{node}"}:  # hack/nodeagent/agent.py names its parent group so
            for hierarchy in ("cpu", "memory"):
                try:
                    procs = Path("/sys/fs/cgroup") / hierarchy / group / uid / "cgroup.procs"
                    found.update(int(p) for p in procs.read_text().split())
                except OSError:
                    pass
        if not found:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        if f"\0HOSTNAME={name}\0".encode() in b"\0" + (proc / "environ").read_bytes():
                            found.add(int(proc.name))
                    except OSError:
                        pass
        return sorted(found)

    def kill(self) -> int:
        """SIGKILL the container's processes (a crash, an OOM kill): the kubelet restarts the
        container (restartPolicy Always), the Deployment keeps the pod. Returns the restarts
        before the kill."""
        before = self.restarts()
        pids = self.pids()
        assert pids, f"no process of {self.name}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.healthy(), 10, 0.05, f"{self.name} gone")
        return before

    def log(self, tail: int = 200) -> str:
        pod = self.pod()
        if pod is None:
            return "(no pod)"
        return self.stack.pod_log(pod, tail=tail)


class LocalStack:
    """Starts every process of the pipeline and installs the chart; `close()` stops them in
    reverse order."""

    def __init__(self, workdir: Path, *, max_concurrent: int = 2, job_ttl_seconds: int = 2,
                 mongo_db: str = "lectern", say: Callable[[str], None] | None = None,
                 values: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.max_concurrent, self.job_ttl_seconds, self.mongo_db = max_concurrent, job_ttl_seconds, mongo_db
        self.extra_values = dict(values or {})
        self.say = say or (lambda _msg: None)
        self._closers: list[Callable[[], None]] = []

    # ----- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> "LocalStack":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()

        # The emulator first: the node's test images need its CA and port.
        self.certs = make_test_certs(self._dir("tls"))
        self.cloudinary = CloudinaryProcess(self._dir("cloudinary"), tls=(self.certs.cert, self.certs.key)).start()
        self._on_close(self.cloudinary.stop)
        self.loopback = f"127.0.0.1:{self.cloudinary.tls_port}"

        # The cluster starts (10-20 s) while Redis and MongoDB come up.
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="lectern-e2e-cluster-", dir=CLUSTER_PARENT))
        self._on_close(lambda: shutil.rmtree(self.cluster_dir, ignore_errors=True))
        # A node name of its own: the node agent's cgroups are named after it, and an agent
        # starting sweeps every pod group under its name (another session's cluster with the
        # default name would kill this one's pods, and the other way round).
        node_name = f"lectern-node-{secrets.token_hex(3)}"
        self.cluster = LocalCluster(self.cluster_dir, images=self._test_images(), node_name=node_name)
        started = _Keeper(self.cluster.start)
        self._on_close(started.release)
        self._on_close(lambda: _remove_node_cgroups(node_name))
        self._on_close(self.cluster.stop)

        self.redis = RedisServer(self._dir("redis"), appendonly=True).start()
        self._on_close(self.redis.stop)
        self.redis_url = self.redis.url
        if os.environ.get("MONGO_URL"):
            self.mongo_url = os.environ["MONGO_URL"]
        else:
            self.mongo_server = MongoServer(self._dir("mongo")).start()
            self._on_close(self.mongo_server.stop)
            self.mongo_url = self.mongo_server.url
        self.say(f"redis-server {self.redis_url}, MongoDB {self.mongo_url}")
        self.say(f"Cloudinary emulator: upload API {self.cloudinary.base_url}, "
                 f"delivery {self.cloudinary.https_base_url} (TLS, throw-away CA)")
        self.mongo = pymongo.MongoClient(self.mongo_url, serverSelectionTimeoutMS=5000)
        self._on_close(self.mongo.close)
        self.lectures = self.mongo[self.mongo_db]["lectures"]

        started.result()
        self.say(f"Kubernetes v1.37.2 control plane (etcd, kube-apiserver, kube-controller-manager, "
                 f"kube-scheduler) + node {self.cluster.node_name}: {self.cluster.server} "
                 f"({time.monotonic() - t0:.1f}s)")
        self.admin = KubeClient(self.cluster.server, self.cluster.ssl_context())
        self.kube = self.admin.in_namespace(NAMESPACE)
        self.system = self.admin.in_namespace(RELEASE_NAMESPACE)
        self._install()
        self.recorder = ClusterRecorder(self.kube, NAMESPACE)
        self._on_close(self.recorder.close)

        self.notifications = Notifications(self.redis_url)
        self._on_close(self.notifications.close)
        self.events = Events(self.redis_url, QUEUE, self.workdir)
        self._on_close(self.events.close)
        self.producer = Producer(self.redis_url, QUEUE, self.workdir)
        self._on_close(self.producer.close)
        self.operator.wait_ready(90, pod_ready=True)
        self.intake.wait_ready(90, pod_ready=True)
        self.say(f"lectern-operator (kopf, cap {self.max_concurrent}) and lectern-intake ({QUEUE}) pods Running "
                 f"and Ready; Node bullmq producer and QueueEvents listener connected ({time.monotonic() - t0:.1f}s)")

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _test_images(self) -> dict[str, dict]:
        """The node's images: the repo's Dockerfiles mapped onto .venv/bin, each with what a test
        image has baked in: trust of the emulator's CA and the SSRF guard's loopback exception
        for the emulator's https port."""
        images_dir = self.cluster_dir / "images"
        images_dir.mkdir()
        ca = images_dir / "test-ca.pem"
        shutil.copyfile(self.certs.ca, ca)
        ca.chmod(0o644)
        images_dir.chmod(0o755)
        grant_traverse([images_dir], lambda _msg: None)
        images = images_from_dockerfiles(ROOT, Path(sys.prefix) / "bin")
        return {repo: {**config, "env": {**config["env"], "SSL_CERT_FILE": str(ca),
                                         "LECTERN_TEST_INSECURE_LOOPBACK": self.loopback}}
                for repo, config in images.items()}

    def values(self) -> dict:
        """The chart values of the test install: Secrets by name, tight timings, distinct ports."""
        self.ports = {name: free_port() for name in ("operator_health", "operator_metrics",
                                                     "intake_health", "intake_metrics")}
        values = {
            "watchNamespaces": [NAMESPACE],
            "mongo": {"existingSecret": "lectern-mongo", "database": self.mongo_db},
            "redis": {"existingSecret": "lectern-redis"},
            # The operator believes only URLs of this cloud (operator/trust.py); the emulator's
            # delivery host is the loopback port the test images let through.
            "cloudinary": {"existingSecret": "lectern-cloudinary", "folder": CLOUDINARY_FOLDER,
                           "cloudName": cloudinary_config(self.cloudinary.cloudinary_url)["cloud_name"]},
            "queue": {"name": QUEUE},
            "notifications": {"progressIntervalSeconds": 0.2},
            "transcode": {
                "maxConcurrent": self.max_concurrent,
                "ttlSecondsAfterFinished": self.job_ttl_seconds,
                # Two transcodes and the operator and intake fit the node's two CPUs.
                "resources": {"cpu": {"request": "500m", "limit": "2"}},
            },
            "operator": {"reconcileIntervalSeconds": 0.2, "admitIntervalSeconds": 1, "watchTimeoutSeconds": 30,
                         "lectureRetry": {"initialSeconds": 0.5, "maxSeconds": 2}},
            # A killed intake's jobs come back after the lock expires: seconds here, minutes in a
            # cluster (see values.yaml).
            "intake": {"resyncSeconds": 2, "kubeRetrySeconds": 60, "shutdownGraceSeconds": 5,
                       "lockDurationMs": 4000, "stalledIntervalMs": 1000,
                       "healthPort": self.ports["intake_health"], "metricsPort": self.ports["intake_metrics"]},
            "healthPort": self.ports["operator_health"],
            "metrics": {"port": self.ports["operator_metrics"]},
            "logging": {"format": "text"},
        }
        return _merge(values, self.extra_values)

    def _install(self) -> None:
        """What a user does: namespaces, Secrets, `helm install`."""
        t0 = time.monotonic()
        self.admin.ensure_namespace(NAMESPACE, RESTRICTED)
        self.admin.ensure_namespace(RELEASE_NAMESPACE, RESTRICTED)
        self.system.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-mongo"},
                            "stringData": {"MONGO_URL": self.mongo_url}})
        self.system.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-redis"},
                            "stringData": {"REDIS_URL": self.redis_url}})
        self.kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-cloudinary"},
                          "stringData": {"CLOUDINARY_URL": self.cloudinary.cloudinary_url}})
        values_file = self.workdir / "values.yaml"
        values_file.write_text(yaml.safe_dump(self.values()))
        self.helm("install", RELEASE, str(ROOT / "helm" / "lectern"), "--namespace", RELEASE_NAMESPACE,
                  "-f", str(values_file))
        self.operator = ChartPod(self, "operator", self.ports["operator_health"], "/healthz")
        self.intake = ChartPod(self, "intake", self.ports["intake_health"], "/readyz")
        self.say(f"helm install {RELEASE} helm/lectern -n {RELEASE_NAMESPACE} (watching {NAMESPACE}, Pod Security "
                 f"restricted; Secrets lectern-mongo, lectern-redis, lectern-cloudinary) "
                 f"({time.monotonic() - t0:.1f}s)")

    def tool_env(self) -> dict[str, str]:
        """Environment of a kubectl/helm subprocess: this cluster, caches inside the stack."""
        home = self._dir("home")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env.update(KUBECONFIG=str(self.cluster.kubeconfig), HOME=str(home), KUBECACHEDIR=str(home / "kube-cache"),
                   HELM_CACHE_HOME=str(home / "helm-cache"), HELM_CONFIG_HOME=str(home / "helm-config"),
                   HELM_DATA_HOME=str(home / "helm-data"))
        return env

    def helm(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run([str(helm_path()), *args], env=self.tool_env(), capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} -> {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, check=check, input=input, timeout=timeout,
                                    env={"HOME": str(self._dir("home"))})

    def close(self) -> None:
        errors = []
        while self._closers:
            fn = self._closers.pop()
            try:
                fn()
            except BaseException as exc:  # keep tearing down the rest
                errors.append(exc)
        if errors:
            raise errors[0]

    # ----- what the platform API does --------------------------------------------------------
    def upload_raw(self, clip: Path, lecture_id: str, *, version: str = "") -> str:
        """The instructor's raw upload, stored the way the API stores it: the real cloudinary
        SDK's `upload_large` against the emulator. Returns its https `secure_url`."""
        answer = cloudinary.uploader.upload_large(
            str(clip), resource_type="video", public_id=f"raw/{lecture_id}{version}", overwrite=True,
            **cloudinary_config(self.cloudinary.cloudinary_url))
        return answer["secure_url"]

    def plant_raw(self, path: Path, lecture_id: str) -> str:
        """Store bytes as a 'video' without Cloudinary's own check (a file that is not a usable
        video must still reach the transcoder to be refused there)."""
        return self.cloudinary.control.put_asset(path, f"raw/{lecture_id}")["secure_url"]

    # ----- looking at the cluster ------------------------------------------------------------
    def transcodes(self, labels: str | None = None) -> list[dict]:
        return self.kube.list("videotranscodes", labels=labels)

    def transcode(self, name: str) -> dict | None:
        return self.kube.get("videotranscodes", name)

    def transcode_for(self, job_id: str, timeout: float = 15) -> dict:
        def find():
            try:
                items = self.transcodes(f"media.lectern.dev/queue-job-id={job_id}")
            except (OSError, ApiError):  # the API server restarting
                return None
            return items[0] if items else None
        return wait_until(find, timeout, 0.05, f"a VideoTranscode for job {job_id}")

    def pods_of(self, job_name: str) -> list[dict]:
        return self.kube.list("pods", labels=f"batch.kubernetes.io/job-name={job_name}")

    def pod_log(self, pod: dict | str, tail: int | None = None) -> str:
        """A pod's container log, as `kubectl logs` shows it (the API server proxies to the node
        agent), read from the node's log files when the pod is already gone (TTL) or the API
        server is down. Every run of the container, in order."""
        if isinstance(pod, str):
            pod = self.recorder.pod_named(pod) or {"metadata": {"name": pod, "uid": "?"}}
        folder = self.cluster.node_workdir / "pods" / pod["metadata"]["uid"] / "logs"
        files = sorted(folder.glob("*/*.log"), key=lambda p: (p.parent.name, int(p.stem))) if folder.is_dir() else []
        text = "".join(f.read_text(errors="replace") for f in files)
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def api_log(self, pod: str, namespace: str = NAMESPACE) -> str:
        """`GET pods/<pod>/log` through the API server (what `kubectl logs` does)."""
        url = f"{self.cluster.server}/api/v1/namespaces/{namespace}/pods/{pod}/log"
        with urllib.request.urlopen(url, context=self.admin.ssl_context, timeout=30) as r:
            return r.read().decode(errors="replace")

    def leftovers(self) -> list[dict]:
        """The node agent's record of every container exit in the transcode namespace: exit code
        and the files it left in its emptyDirs."""
        path = self.cluster.node_workdir / "records.jsonl"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if r.get("namespace") == NAMESPACE]

    def finals_in_stream(self, lecture_id: str) -> list[dict]:
        """The final notifications of a lecture in `notifications:stream` (the durable copy a
        Socket.IO server catches up from)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            entries = client.xrange(STREAM)
        finally:
            client.close()
        finals = [json.loads(fields[b"data"]) for _, fields in entries]
        return [m for m in finals if m.get("lectureId") == lecture_id]

    def https_get(self, url: str) -> bytes:
        """GET over the emulator's TLS listener, verifying against the test CA."""
        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            return r.read()

    def logs(self) -> str:
        """The operator's and intake's pod logs, the transcoder pods' logs and the control
        plane's, for a failure report."""
        parts = []
        for svc in (self.operator, self.intake):
            try:
                parts.append(f"----- {svc.name} -----\n{svc.log(80)[-6000:]}")
            except Exception as exc:  # noqa: BLE001 - a report, whatever is broken
                parts.append(f"----- {svc.name} -----\n(cannot read: {exc})")
        with self.recorder._lock:
            pods = list(self.recorder.pods.values())
        for pod in pods[-6:]:
            parts.append(f"----- pod {pod['metadata']['name']} -----\n{self.pod_log(pod, 30)[-3000:]}")
        for name in ("node", "controller_manager", "apiserver"):
            proc = self.cluster.procs.get(name)
            if proc:
                parts.append(f"----- {name} -----\n{proc.tail(15)}")
        return "\n".join(parts)


class _Keeper:
    """Runs `fn` in a thread that stays alive until `release()`: the processes it starts get
    SIGTERM when the thread that forked them ends (PR_SET_PDEATHSIG is per thread)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._done, self._release = threading.Event(), threading.Event()
        self._error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to result()
                self._error = exc
            finally:
                self._done.set()
            self._release.wait()
        threading.Thread(target=run, name="cluster-keeper", daemon=True).start()

    def result(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error

    def release(self) -> None:
        self._done.wait()
        self._release.set()


def _remove_node_cgroups(node_name: str) -> None:
    """The node agent's parent groups, empty once it stopped (it removes each pod's own)."""
    for hierarchy in ("cpu", "memory"):
        try:
            (Path("/sys/fs/cgroup") / hierarchy / f"lectern-{node_name}").rmdir()
        except OSError:
            pass


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cloudinary_config(url: str) -> dict[str, str]:
    """The SDK's per-call options from a CLOUDINARY_URL (`cloudinary://KEY:SECRET@CLOUD?upload_prefix=...`),
    so the test process never changes the SDK's global configuration."""
    parsed = urllib.parse.urlparse(url)
    options = {"cloud_name": parsed.hostname, "api_key": urllib.parse.unquote(parsed.username or ""),
               "api_secret": urllib.parse.unquote(parsed.password or "")}
    options.update({k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()})
    return options
