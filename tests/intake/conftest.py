"""Harness for the intake tests: the real Node bullmq producer and QueueEvents listener (as
the platform API uses them), the Python intake as a subprocess (so it can be killed -9 or
SIGTERMed), and the Kubernetes emulator, where the test plays the operator by patching the
CR's status."""

from __future__ import annotations

import json
import os
import pathlib
import queue as queue_mod
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.standins.services import RedisServer, free_port, wait_until  # noqa: F401 (used by the intake tests)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
NAMESPACE = "lectern"
ALLOWED_HOST = "res.cloudinary.com"


def node_bin() -> str:
    exe = shutil.which("node")
    if not exe:
        pytest.fail("node is not installed")
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        pytest.fail("tests/node/node_modules missing (make test runs npm ci)")
    return exe


class _Lines:
    """A subprocess whose stdout is JSON lines, read by a thread."""

    def __init__(self, argv: list[str], cwd: pathlib.Path, log: pathlib.Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.lines: "queue_mod.Queue[dict]" = queue_mod.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"raw": line})

    def next(self, timeout: float = 15.0) -> dict:
        try:
            return self.lines.get(timeout=timeout)
        except queue_mod.Empty:
            raise TimeoutError(f"{self.proc.args[:3]}: no output in {timeout}s") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        self.log.close()


class Producer(_Lines):
    """The API side: `queue.add('transcode', data)` with the real Node bullmq."""

    def __init__(self, redis_url: str, queue: str, workdir: pathlib.Path):
        super().__init__([node_bin(), "producer.mjs", redis_url, queue], NODE_DIR, workdir / "producer.log")
        assert self.next(20).get("ready"), "producer did not start"
        self._lock = threading.Lock()

    def call(self, cmd: dict, timeout: float = 20.0) -> dict:
        with self._lock:
            assert self.proc.stdin
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            answer = self.next(timeout)
        assert answer.get("ok"), answer
        return answer

    def add(self, data: Any, opts: dict | None = None, name: str = "transcode") -> str:
        return self.call({"op": "add", "name": name, "data": data, "opts": opts or {}})["id"]

    def job(self, job_id: str) -> dict | None:
        return self.call({"op": "get", "id": job_id})["job"]

    def counts(self) -> dict:
        return self.call({"op": "counts"})["counts"]


class Events(_Lines):
    """The API's QueueEvents listener; collects every event."""

    def __init__(self, redis_url: str, queue: str, workdir: pathlib.Path):
        super().__init__([node_bin(), "events.mjs", redis_url, queue], NODE_DIR, workdir / "events.log")
        self.seen: list[dict] = []
        self._cond = threading.Condition()
        first = self.next(20)
        assert first.get("event") == "ready", first
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        while self.proc.poll() is None or not self.lines.empty():
            try:
                item = self.lines.get(timeout=0.2)
            except queue_mod.Empty:
                continue
            with self._cond:
                self.seen.append(item)
                self._cond.notify_all()

    def of(self, job_id: str, event: str | None = None) -> list[dict]:
        with self._cond:
            return [e for e in self.seen if e.get("jobId") == job_id and (event is None or e.get("event") == event)]

    def wait(self, job_id: str, event: str, timeout: float = 20.0, count: int = 1) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.seen if e.get("jobId") == job_id and e.get("event") == event]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {event!r} x{count} for job {job_id} in {timeout}s; "
                                       f"seen: {[e for e in self.seen if e.get('jobId') == job_id]}")
                self._cond.wait(left)

    def progress(self, job_id: str) -> list[Any]:
        return [e["data"] for e in self.of(job_id, "progress")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        super().close()


class IntakeProcess:
    """`python -m lectern_operator.intake` with test settings."""

    def __init__(self, env: dict[str, str], workdir: pathlib.Path, n: int):
        self.env = env
        self.health_port = int(env["LECTERN_HEALTH_PORT"])
        self.metrics_port = int(env["LECTERN_METRICS_PORT"])
        self.log_path = workdir / f"intake-{n}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lectern_operator.intake"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 30.0) -> "IntakeProcess":
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"intake exited with {self.proc.returncode}:\n{self.log()}")
            return self._get(self.health_port, "/readyz")[0] == 200
        wait_until(ready, timeout, 0.1, "intake /readyz")
        return self

    def health(self, path: str = "/readyz") -> tuple[int, dict]:
        status, body = self._get(self.health_port, path)
        return status, (json.loads(body) if body else {})

    def metrics(self) -> dict[str, float]:
        status, body = self._get(self.metrics_port, "/metrics")
        assert status == 200, status
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class Harness:
    def __init__(self, kube: Any, redis_url: str, workdir: pathlib.Path):
        self.kube = kube
        self.redis_url = redis_url
        self.workdir = workdir
        self.queue = f"video-queue-{uuid.uuid4().hex[:8]}"
        self._producer: Producer | None = None
        self._events: Events | None = None
        self.intakes: list[IntakeProcess] = []

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self.redis_url, self.queue, self.workdir)
        return self._producer

    @property
    def events(self) -> Events:
        if self._events is None:
            self._events = Events(self.redis_url, self.queue, self.workdir)
        return self._events

    def intake_env(self, kubeconfig: pathlib.Path | None = None, **overrides: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LECTERN_", "KUBE"))}
        if kubeconfig is not None:  # out-of-cluster, as a person would run it
            env["KUBECONFIG"] = str(kubeconfig)
        else:
            env["LECTERN_KUBE_API_URL"] = self.kube.url
        env.update({
            "LECTERN_REDIS_URL": self.redis_url,
            "LECTERN_QUEUE_NAME": self.queue,
            "LECTERN_NAMESPACES": NAMESPACE,
            "LECTERN_ALLOWED_HOSTS": ALLOWED_HOST,
            "LECTERN_HEALTH_PORT": str(free_port()),
            "LECTERN_METRICS_PORT": str(free_port()),
            "LECTERN_LOG_FORMAT": "text",
            "LECTERN_LOG_LEVEL": "INFO",
            # Short locks and stall checks so redelivery after a crash takes seconds, not minutes.
            "LECTERN_INTAKE_LOCK_DURATION_MS": "4000",
            "LECTERN_INTAKE_STALLED_INTERVAL_MS": "1000",
            "LECTERN_INTAKE_RESYNC_SECONDS": "2",
            "LECTERN_INTAKE_KUBE_RETRY_SECONDS": "10",
            "LECTERN_INTAKE_SHUTDOWN_GRACE_SECONDS": "10",
        })
        env.update({f"LECTERN_{k.upper()}": str(v) for k, v in overrides.items()})
        return env

    def start_intake(self, ready: bool = True, kubeconfig: pathlib.Path | None = None, **overrides: Any) -> IntakeProcess:
        intake = IntakeProcess(self.intake_env(kubeconfig, **overrides), self.workdir, len(self.intakes))
        self.intakes.append(intake)
        return intake.wait_ready() if ready else intake

    def start(self, kubeconfig: pathlib.Path | None = None, **overrides: Any) -> IntakeProcess:
        """Intake, producer and QueueEvents listener, started side by side."""
        intake = self.start_intake(ready=False, kubeconfig=kubeconfig, **overrides)
        self.events, self.producer  # noqa: B018 - start the Node processes meanwhile
        return intake.wait_ready()

    # --- playing the operator ---------------------------------------------------------------------
    def transcodes(self, labels: str | None = None) -> list[dict]:
        return self.kube.list("videotranscodes", NAMESPACE, labels=labels)

    def cr_for(self, job_id: str, timeout: float = 15.0) -> dict:
        def find():
            items = self.transcodes(f"media.lectern.dev/queue-job-id={job_id}")
            return items[0] if items else None
        return wait_until(find, timeout, what=f"a VideoTranscode for job {job_id}")

    def set_status(self, name: str, **status: Any) -> dict:
        return self.kube.patch("videotranscodes", name, {"status": status}, namespace=NAMESPACE, subresource="status")

    def close(self) -> None:
        for intake in self.intakes:
            intake.stop()
        if self._producer:
            self._producer.close()
        if self._events:
            self._events.close()


def register_crd(kube: Any) -> None:
    path = ROOT / "crds" / "videotranscodes.media.lectern.dev.yaml"
    if path.exists():
        kube.register_crd(path)
    else:  # not generated yet: the same CRD, straight from the models
        from lectern_operator.api import crd
        kube.register_crd(crd.crd())
    kube.ensure_namespace(NAMESPACE)


@pytest.fixture()
def vt_kube(kube):
    register_crd(kube)
    return kube


@pytest.fixture()
def harness(vt_kube, redis_server, tmp_path, request):
    h = Harness(vt_kube, redis_server.url, tmp_path)
    yield h
    h.close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for i, intake in enumerate(h.intakes):
            sys.stderr.write(f"\n----- intake {i} log -----\n{intake.log()[-6000:]}\n")


@pytest.fixture(scope="module")
def shared_harness(redis_server, tmp_path_factory):
    """One emulator, queue and intake for a whole module of tests that leave no trace on each
    other (distinct lectures, metrics compared as deltas): process start-up is most of the
    cost of an intake test."""
    from tests.standins.kube import running_emulator
    with running_emulator() as kube:
        register_crd(kube)
        from tests.standins.kube_fixtures import write_kubeconfig
        h = Harness(kube, redis_server.url, tmp_path_factory.mktemp("intake"))
        try:
            # This one finds the API server through a kubeconfig (the others: LECTERN_KUBE_API_URL).
            h.intake = h.start(kubeconfig=write_kubeconfig(h.workdir / "kubeconfig", kube.url))
            yield h
        except BaseException:
            for intake in h.intakes:
                sys.stderr.write(f"\n----- intake log -----\n{intake.log()[-6000:]}\n")
            raise
        finally:
            h.close()


@pytest.fixture()
def own_redis(tmp_path):
    """A Redis of its own (AOF on), for tests that restart it."""
    (tmp_path / "redis").mkdir()
    with RedisServer(workdir=tmp_path / "redis") as server:
        yield server


@pytest.fixture()
def restart_harness(vt_kube, own_redis, tmp_path, request):
    h = Harness(vt_kube, own_redis.url, tmp_path)
    h.redis = own_redis
    yield h
    h.close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for i, intake in enumerate(h.intakes):
            sys.stderr.write(f"\n----- intake {i} log -----\n{intake.log()[-6000:]}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def lecture_data(lecture: str = "65f1c0ffee0123456789abcd", n: int = 1, instructor: str = "instructor-7") -> dict:
    return {"lectureId": lecture, "rawVideoUrl": f"https://{ALLOWED_HOST}/demo/video/upload/v{n}/raw/{lecture}.mp4",
            "instructorId": instructor}
