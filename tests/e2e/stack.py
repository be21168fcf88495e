"""The whole Lectern flow on one machine, every part real except what cannot run here.

    with FlowStack(workdir, redis_url, mongo_url) as stack:
        raw = stack.seed_raw(clip, lecture_id)                 # "the API uploaded it to Cloudinary"
        stack.lectures.insert_one({... "status": "AWAITING_MEDIA", "rawVideoUrl": raw})
        job_id = stack.producer.add({"lectureId": ..., "rawVideoUrl": raw, "instructorId": ...})
        stack.events.wait(job_id, "completed", timeout=60)

What runs (used by tests/e2e and scripts/demo_flow.py):

* the Cloudinary emulator (tests/standins/cloudinary.py) with its **https** listener, on a
  certificate of a throw-away CA (tests/standins/tls.py): delivery URLs are
  `https://127.0.0.1:PORT/<cloud>/video/upload/...`, which pass the CRD's `^https://` pattern;
  the intake and the transcoder let exactly that loopback port through
  (`LECTERN_TEST_INSECURE_LOOPBACK`) and the transcoder verifies the certificate against the
  test CA (`SSL_CERT_FILE`). The SDK's upload API stays on the emulator's plain-http port
  (`upload_prefix` in CLOUDINARY_URL, from the Secret the Job reads).
* the Kubernetes API-server emulator with the generated CRD, the namespace and the Cloudinary
  Secret; the local kubelet + Job controller runs the Job's own command (`lectern-transcode`,
  the real console script, no override).
* the operator (`lectern_operator.main.run`, kopf, in its own thread and event loop, as
  tests/operator does), the intake as the `lectern-intake` console script (a subprocess),
  and the real Node bullmq producer + QueueEvents listener (tests/node).
* Redis and MongoDB (nx-27017 or $MONGO_URL) are given by the caller.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pymongo
import redis

from lectern_operator.api import crd as crdgen
from lectern_operator.settings import Settings
from tests.intake.conftest import Events, Producer
from tests.operator.conftest import Operator
from tests.standins.cloudinary import CloudinaryEmulator
from tests.standins.kube import KubeEmulator
from tests.standins.kubelet import Kubelet
from tests.standins.services import free_port, wait_until
from tests.standins.tls import make_test_certs

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "lectern"
QUEUE = "video-queue"          # the contract's queue name and prefix
CHANNEL = "notifications"      # the contract's pub/sub channel
INTAKE = str(Path(sys.executable).with_name("lectern-intake"))


class Notifications:
    """A Redis pub/sub subscriber on `notifications`, as the Socket.IO server runs it."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        first = self.pubsub.get_message(timeout=5)
        assert first and first["type"] == "subscribe", f"no subscription to {channel}: {first}"
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notifications", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                m = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            except (redis.RedisError, OSError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                continue
            if m and m["type"] == "message":
                with self._cond:
                    self.messages.append(json.loads(m["data"]))
                    self._cond.notify_all()

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
        self.pubsub.close()
        self.client.close()


class LectureWatch:
    """Polls one Lecture document and records every status it passes through (nx-27017 has
    no change streams; a transcode stays PROCESSING for seconds, so 20 ms polling sees it)."""

    def __init__(self, collection, key: Any, interval: float = 0.02) -> None:
        self.collection, self.key, self.interval = collection, key, interval
        self.statuses: list[str] = []
        self.last: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lecture-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                doc = self.collection.find_one({"_id": self.key})
            except pymongo.errors.PyMongoError:
                doc = None
            if doc is not None:
                self.last = doc
                if not self.statuses or self.statuses[-1] != doc.get("status"):
                    self.statuses.append(doc.get("status"))
            self._stop.wait(self.interval)

    def wait_status(self, status: str, timeout: float) -> dict:
        wait_until(lambda: self.statuses and self.statuses[-1] == status, timeout, 0.02,
                   f"Lecture {self.key} {status} (so far: {self.statuses})")
        return self.last

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(5)
        return self.statuses


class IntakeProcess:
    """`lectern-intake`, the real console script, with the settings a chart would give it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.health_port = int(env["LECTERN_HEALTH_PORT"])
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([INTAKE], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"lectern-intake exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: in-flight jobs are handed back
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class FlowStack:
    """Starts the stand-ins and the Lectern processes; `close()` stops them in reverse."""

    def __init__(self, workdir: Path, redis_url: str, mongo_url: str, *, mongo_db: str = "lectern",
                 say: Callable[[str], None] | None = None) -> None:
        self.workdir = Path(workdir)
        self.redis_url, self.mongo_url, self.mongo_db = redis_url, mongo_url, mongo_db
        self.say = say or (lambda _msg: None)
        self._closers: list[Callable[[], None]] = []

    # ----- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> "FlowStack":
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

        self.certs = make_test_certs(self.workdir / "tls")
        self.cloudinary = CloudinaryEmulator(root=self.workdir / "cloudinary",
                                             tls=(self.certs.cert, self.certs.key)).start()
        self._on_close(self.cloudinary.stop)
        self.loopback = f"127.0.0.1:{self.cloudinary.tls_port}"
        self.say(f"Cloudinary emulator: upload API {self.cloudinary.base_url}, "
                 f"delivery {self.cloudinary.https_base_url} (TLS, throw-away CA)")

        self.kube = KubeEmulator().start()
        self._on_close(self.kube.stop)
        self.kube.register_crd(ROOT / "crds" / crdgen.FILE_NAME)
        self.kube.ensure_namespace(NAMESPACE)
        self.kube.create({"apiVersion": "v1", "kind": "Secret",
                          "metadata": {"name": "lectern-cloudinary", "namespace": NAMESPACE},
                          "stringData": {"CLOUDINARY_URL": self.cloudinary.cloudinary_url}})
        # What the kubelet adds to every container's env: the test-only loopback escape for the
        # emulator's https port and trust of the throw-away CA. The Job itself is the operator's.
        self.kubelet = Kubelet(self.kube, workdir=self.workdir / "kubelet", extra_env={
            "LECTERN_TEST_INSECURE_LOOPBACK": self.loopback, "SSL_CERT_FILE": str(self.certs.ca)}).start()
        self._on_close(self.kubelet.stop)
        self.say(f"Kubernetes API emulator {self.kube.url} (CRD videotranscodes.media.lectern.dev, "
                 f"namespace {NAMESPACE}) + local kubelet/Job controller")

        self.mongo = pymongo.MongoClient(self.mongo_url, serverSelectionTimeoutMS=5000)
        self._on_close(self.mongo.close)
        self.lectures = self.mongo[self.mongo_db]["lectures"]

        # Intake first (a process: it starts while the operator starts in this one).
        self.intake = IntakeProcess(self.intake_env(), self.workdir / "intake.log")
        self._on_close(self.intake.stop)

        self.settings = Settings(
            kube_api_url=self.kube.url, namespaces=NAMESPACE, standalone=True,
            mongo_url=self.mongo_url, mongo_db=self.mongo_db, mongo_collection="lectures",
            redis_url=self.redis_url, notifications_channel=CHANNEL,
            max_concurrent=2, reconcile_interval_seconds=0.2, admit_interval_seconds=1,
            progress_notify_interval_seconds=0.2, watch_timeout_seconds=30,
            metrics_port=0, health_port=0, log_format="text", log_level="WARNING")
        self.operator = Operator(self.settings)
        asyncio.run(self.operator.start())
        self._on_close(lambda: asyncio.run(self.operator.stop()))
        self.say("operator (kopf) running")

        self.notifications = Notifications(self.redis_url)
        self._on_close(self.notifications.close)
        self.events = Events(self.redis_url, QUEUE, self.workdir)
        self._on_close(self.events.close)
        self.producer = Producer(self.redis_url, QUEUE, self.workdir)
        self._on_close(self.producer.close)
        wait_until(self.intake.ready, 30, 0.1, "lectern-intake /readyz")
        self.say(f"intake (lectern-intake) ready on {QUEUE}; Node bullmq producer and QueueEvents "
                 f"listener connected ({time.monotonic() - t0:.1f}s)")

    def intake_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LECTERN_", "KUBE"))}
        env.update({
            "LECTERN_REDIS_URL": self.redis_url,
            "LECTERN_QUEUE_NAME": QUEUE,
            "LECTERN_NAMESPACES": NAMESPACE,
            "LECTERN_KUBE_API_URL": self.kube.url,
            "LECTERN_TEST_INSECURE_LOOPBACK": self.loopback,
            "LECTERN_HEALTH_PORT": str(free_port()),
            "LECTERN_METRICS_PORT": str(free_port()),
            "LECTERN_LOG_FORMAT": "text",
            "LECTERN_INTAKE_RESYNC_SECONDS": "2",
            "LECTERN_INTAKE_KUBE_RETRY_SECONDS": "10",
            "LECTERN_INTAKE_SHUTDOWN_GRACE_SECONDS": "5",
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

    # ----- helpers ---------------------------------------------------------------------------
    def seed_raw(self, clip: Path, lecture_id: str) -> str:
        """Store `clip` as the instructor's raw upload; returns its https `secure_url`."""
        return self.cloudinary.put_asset(clip, f"raw/{lecture_id}")["secure_url"]

    def transcode_for(self, job_id: str, timeout: float = 15) -> dict:
        def find():
            items = self.kube.list("videotranscodes", NAMESPACE,
                                   labels=f"media.lectern.dev/queue-job-id={job_id}")
            return items[0] if items else None
        return wait_until(find, timeout, 0.05, f"a VideoTranscode for job {job_id}")

    def finals_in_stream(self, lecture_id: str) -> list[dict]:
        """The final notifications of a lecture in `notifications:stream` (the durable copy a
        Socket.IO server catches up from)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            entries = client.xrange(self.settings.notifications_stream)
        finally:
            client.close()
        finals = [json.loads(fields[b"data"]) for _, fields in entries]
        return [m for m in finals if m.get("lectureId") == lecture_id]

    def pods_of(self, job_name: str) -> list[dict]:
        return self.kube.list("v1/pods", NAMESPACE, labels=f"batch.kubernetes.io/job-name={job_name}")

    def https_get(self, url: str) -> bytes:
        """GET over the emulator's TLS listener, verifying against the test CA."""
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            return r.read()

    def logs(self) -> str:
        """The intake's log and the transcoder pods' logs, for a failure report."""
        parts = [f"----- intake -----\n{self.intake.log()[-4000:]}"]
        for pod in self.kube.list("v1/pods", NAMESPACE):
            name = pod["metadata"]["name"]
            parts.append(f"----- pod {name} -----\n{self.kubelet.logs(name, NAMESPACE)[-4000:]}")
        return "\n".join(parts)
