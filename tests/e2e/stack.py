"""The whole Lectern pipeline on one machine, every component its own process, as in a cluster.

    with LocalStack(workdir) as stack:
        raw = stack.upload_raw(clip, lecture_id)        # the API's Cloudinary upload (real SDK)
        stack.lectures.insert_one({... "status": "AWAITING_MEDIA", "rawVideoUrl": raw})
        job_id = stack.producer.add({"lectureId": ..., "rawVideoUrl": raw, "instructorId": ...})
        stack.events.wait(job_id, "completed", timeout=60)

Processes (loopback only, random free ports; `close()` stops them in reverse order and is
also what a failing test gets, so nothing outlives the run):

| process | what |
| --- | --- |
| `redis-server` | real, with AOF, so a restart keeps the queue (the platform's Redis) |
| FerretDB | MongoDB (SQLite backend), reached with pymongo (or `$MONGO_URL`) |
| Cloudinary emulator | tests/standins/cloudinary.py: upload API on http (the SDK's `upload_prefix`), delivery over https with a throw-away CA; a control API for faults |
| local cluster | tests/standins/cluster.py: API-server emulator (CRD from crds/, namespace, Secret) + kubelet/Job controller that runs each pod's own command, `lectern-transcode` |
| `lectern-operator` | the operator's console script (kopf.run), settings from `LECTERN_*` as the chart sets them |
| `lectern-intake` | the BullMQ worker's console script |
| Node `producer.mjs` / `events.mjs` | the platform API's `Queue.add` and `QueueEvents` (tests/node) |

and in this process a Redis subscriber on `notifications` (the Socket.IO server's side).

Test-only settings, all through the environment: the transcoder (via the kubelet) and the
intake let exactly the emulator's https port through the SSRF guard
(`LECTERN_TEST_INSECURE_LOOPBACK`) and trust the test CA (`SSL_CERT_FILE`); the operator
polls faster than its production defaults so a test takes seconds.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import ssl
import subprocess
import sys
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

from lectern_operator.api import crd as crdgen
from tests.intake.conftest import Events, Producer
from tests.standins.cloudinary import CloudinaryProcess
from tests.standins.cluster import ClusterProcess
from tests.standins.services import MongoServer, RedisServer, free_port, stop_process, wait_until
from tests.standins.tls import make_test_certs

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAMESPACE = "lectern"
QUEUE = "video-queue"          # the contract's queue name and prefix
CHANNEL = "notifications"      # the contract's pub/sub channel
STREAM = "notifications:stream"
CLOUDINARY_FOLDER = "lectern/lectures"

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: a stand-in or service gets SIGTERM if the test runner dies, so a killed
    run leaves no process behind either."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)


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


class Service:
    """One Lectern process (`lectern-operator`, `lectern-intake`) as a Deployment runs it: a
    console script, `LECTERN_*` settings, a health endpoint. It can be killed (SIGKILL: a crash
    or an OOM kill) or stopped (SIGTERM: a rollout) and started again with the same settings."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, health_path: str) -> None:
        self.name, self.env, self.log_path, self.health_path = name, env, log_path, health_path
        self.health_port = int(env["LECTERN_HEALTH_PORT"])
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Service":
        with open(self.log_path, "ab") as log:
            log.write(f"----- start #{self.starts + 1} -----\n".encode())
            self.proc = subprocess.Popen([str(BIN / self.name)], cwd=self.log_path.parent, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.starts += 1
        return self

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = self.proc.returncode if self.proc else None
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{self.health_path}", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(self.ready, timeout, 0.1, f"{self.name} {self.health_path}")

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20) -> int | None:
        proc, self.proc = self.proc, None
        return stop_process(proc, sig, grace)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ClusterRecorder:
    """Watches Jobs and Pods in the namespace for the whole run and keeps what it saw, so a
    test can count what was ever created (Jobs are deleted by their TTL seconds after they
    finish) and how many transcoder pods ran at once."""

    def __init__(self, cluster: ClusterProcess, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.jobs: dict[str, dict] = {}        # uid -> last seen object (the DELETED one at the end)
        self.pods: dict[str, dict] = {}        # uid -> last seen object
        self.running: set[str] = set()
        self.max_running = 0
        self.deleted_jobs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(r,), daemon=True, name=f"watch-{r}")
                         for r in ("jobs", "pods")]
        for t in self._threads:
            t.start()

    def _watch(self, resource: str) -> None:
        rv = "0"
        while not self._stop.is_set():
            url = (f"{self.cluster.url}{ClusterProcess.path(resource, self.namespace)}"
                   f"?watch=1&timeoutSeconds=5&allowWatchBookmarks=true&resourceVersion={rv}")
            try:
                with urllib.request.urlopen(url, timeout=15) as stream:
                    for line in stream:
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            rv = "0"
                            break
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if event["type"] != "BOOKMARK":
                            self._seen(resource, event["type"], obj)
            except (OSError, ValueError, urllib.error.URLError):
                if self._stop.wait(0.2):
                    return

    def _seen(self, resource: str, etype: str, obj: dict) -> None:
        uid = obj["metadata"]["uid"]
        with self._lock:
            if resource == "jobs":
                self.jobs[uid] = obj
                if etype == "DELETED":
                    self.deleted_jobs.add(uid)
                return
            self.pods[uid] = obj
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
            return [p for p in self.pods.values()
                    if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job_name]

    def job_deleted(self, job_uid: str) -> bool:
        with self._lock:
            return job_uid in self.deleted_jobs

    def reset_peak(self) -> None:
        with self._lock:
            self.max_running = len(self.running)

    def close(self) -> None:
        self._stop.set()


class LocalStack:
    """Starts every process of the pipeline; `close()` stops them in reverse order."""

    def __init__(self, workdir: Path, *, max_concurrent: int = 2, job_ttl_seconds: int = 2,
                 mongo_db: str = "lectern", say: Callable[[str], None] | None = None,
                 operator_env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.max_concurrent, self.job_ttl_seconds, self.mongo_db = max_concurrent, job_ttl_seconds, mongo_db
        self.extra_operator_env = dict(operator_env or {})
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

        self.certs = make_test_certs(self._dir("tls"))
        self.cloudinary = CloudinaryProcess(self._dir("cloudinary"), tls=(self.certs.cert, self.certs.key)).start()
        self._on_close(self.cloudinary.stop)
        self.loopback = f"127.0.0.1:{self.cloudinary.tls_port}"
        self.say(f"Cloudinary emulator: upload API {self.cloudinary.base_url}, "
                 f"delivery {self.cloudinary.https_base_url} (TLS, throw-away CA)")

        # What the kubelet adds to every container's env: the test-only loopback escape for the
        # emulator's https port and trust of the throw-away CA. The Job itself is the operator's.
        self.cluster = ClusterProcess(self._dir("cluster"), crds=[ROOT / "crds" / crdgen.FILE_NAME],
                                      namespaces=[NAMESPACE], kubelet_env={
                                          "LECTERN_TEST_INSECURE_LOOPBACK": self.loopback,
                                          "SSL_CERT_FILE": str(self.certs.ca)}).start()
        self._on_close(self.cluster.stop)
        self.recorder = ClusterRecorder(self.cluster, NAMESPACE)
        self._on_close(self.recorder.close)
        # The Secret the chart's values point the transcoder at (created here as an admin would).
        self.cluster.create({"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "lectern-cloudinary", "namespace": NAMESPACE},
                             "stringData": {"CLOUDINARY_URL": self.cloudinary.cloudinary_url}}, NAMESPACE)
        self.say(f"local cluster: API server {self.cluster.url} (CRD videotranscodes.media.lectern.dev, "
                 f"namespace {NAMESPACE}) + kubelet/Job controller; kubeconfig {self.cluster.kubeconfig}")

        self.mongo = pymongo.MongoClient(self.mongo_url, serverSelectionTimeoutMS=5000)
        self._on_close(self.mongo.close)
        self.lectures = self.mongo[self.mongo_db]["lectures"]

        self.operator = Service("lectern-operator", self.operator_env(), self.workdir / "operator.log", "/healthz")
        self.intake = Service("lectern-intake", self.intake_env(), self.workdir / "intake.log", "/readyz")
        self._on_close(self.operator.stop)
        self._on_close(self.intake.stop)
        self.operator.start()
        self.intake.start()

        self.notifications = Notifications(self.redis_url)
        self._on_close(self.notifications.close)
        self.events = Events(self.redis_url, QUEUE, self.workdir)
        self._on_close(self.events.close)
        self.producer = Producer(self.redis_url, QUEUE, self.workdir)
        self._on_close(self.producer.close)
        self.operator.wait_ready()
        self.intake.wait_ready()
        self.say(f"lectern-operator (kopf, cap {self.max_concurrent}) and lectern-intake ({QUEUE}) ready; "
                 f"Node bullmq producer and QueueEvents listener connected ({time.monotonic() - t0:.1f}s)")

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LECTERN_", "KUBE", "CLOUDINARY"))}
        env.update({
            "LECTERN_REDIS_URL": self.redis_url,
            "LECTERN_NAMESPACES": NAMESPACE,
            "LECTERN_KUBE_API_URL": self.cluster.url,
            "LECTERN_LOG_FORMAT": "text",
        })
        return env

    def operator_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update({
            "LECTERN_MONGO_URL": self.mongo_url,
            "LECTERN_MONGO_DB": self.mongo_db,
            "LECTERN_STANDALONE": "true",
            "LECTERN_MAX_CONCURRENT": str(self.max_concurrent),
            "LECTERN_RECONCILE_INTERVAL_SECONDS": "0.2",
            "LECTERN_ADMIT_INTERVAL_SECONDS": "1",
            "LECTERN_PROGRESS_NOTIFY_INTERVAL_SECONDS": "0.2",
            "LECTERN_WATCH_TIMEOUT_SECONDS": "30",
            "LECTERN_LECTURE_RETRY_INITIAL_SECONDS": "0.5",
            "LECTERN_LECTURE_RETRY_MAX_SECONDS": "2",
            "LECTERN_TRANSCODER_TTL_SECONDS_AFTER_FINISHED": str(self.job_ttl_seconds),
            "LECTERN_CLOUDINARY_FOLDER": CLOUDINARY_FOLDER,
            "LECTERN_HEALTH_PORT": str(free_port()),
            "LECTERN_METRICS_PORT": str(free_port()),
            "LECTERN_LOG_LEVEL": "INFO",
        })
        env.update(self.extra_operator_env)
        return env

    def intake_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update({
            "LECTERN_QUEUE_NAME": QUEUE,
            "LECTERN_TEST_INSECURE_LOOPBACK": self.loopback,
            "LECTERN_HEALTH_PORT": str(free_port()),
            "LECTERN_METRICS_PORT": str(free_port()),
            "LECTERN_INTAKE_RESYNC_SECONDS": "2",
            "LECTERN_INTAKE_KUBE_RETRY_SECONDS": "30",
            "LECTERN_INTAKE_SHUTDOWN_GRACE_SECONDS": "5",
            # A killed intake's jobs come back after the lock expires: seconds here, minutes in a
            # cluster (see values.yaml).
            "LECTERN_INTAKE_LOCK_DURATION_MS": "4000",
            "LECTERN_INTAKE_STALLED_INTERVAL_MS": "1000",
        })
        return env

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
        return self.cluster.list("videotranscodes", NAMESPACE, labels)

    def transcode_for(self, job_id: str, timeout: float = 15) -> dict:
        def find():
            items = self.transcodes(f"media.lectern.dev/queue-job-id={job_id}")
            return items[0] if items else None
        return wait_until(find, timeout, 0.05, f"a VideoTranscode for job {job_id}")

    def pods_of(self, job_name: str) -> list[dict]:
        return self.cluster.list("pods", NAMESPACE, f"batch.kubernetes.io/job-name={job_name}")

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
        """The services' logs and the transcoder pods' logs, for a failure report."""
        parts = [f"----- {s.name} -----\n{s.log()[-4000:]}" for s in (self.operator, self.intake)]
        for pod in self.cluster.list("pods", NAMESPACE):
            name = pod["metadata"]["name"]
            parts.append(f"----- pod {name} -----\n{self.cluster.logs(name, NAMESPACE)[-3000:]}")
        parts.append(f"----- cluster -----\n{self.cluster.log()[-3000:]}")
        return "\n".join(parts)


def cloudinary_config(url: str) -> dict[str, str]:
    """The SDK's per-call options from a CLOUDINARY_URL (`cloudinary://KEY:SECRET@CLOUD?upload_prefix=...`),
    so the test process never changes the SDK's global configuration."""
    parsed = urllib.parse.urlparse(url)
    options = {"cloud_name": parsed.hostname, "api_key": urllib.parse.unquote(parsed.username or ""),
               "api_secret": urllib.parse.unquote(parsed.password or "")}
    options.update({k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()})
    return options
