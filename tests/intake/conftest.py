"""Harness for the intake tests: the real Node bullmq producer and QueueEvents listener (as
the platform API uses them), the Python intake as a subprocess (the `lectern-intake` console
script, so it can be killed -9 or SIGTERMed), and the real local cluster (hack/cluster.py).

The intake logs in the normal way (lectern_operator.kube.Credentials: `$KUBECONFIG`) as the
chart's intake ServiceAccount, with the Role the chart grants it (rendered by the real
`helm template` and applied to the test's namespace: RBAC enforced). The test plays the
operator by patching the CR's status subresource as admin."""

from __future__ import annotations

import base64
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

from tests.cluster_fixtures import RESTRICTED, ChartIdentity
from tests.kube_client import KubeClient
from tests.standins.services import RedisServer, free_port, spawn, wait_until  # noqa: F401 (used by the intake tests)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
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
        self.proc = spawn(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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

    def expect_none(self, job_id: str, event: str, seconds: float, count: int = 1) -> None:
        """A bounded watch for the event that would prove a test wrong: fails as soon as the
        job's `count`-th `event` arrives within `seconds` (where a fixed sleep would only look
        afterwards, or never)."""
        try:
            found = self.wait(job_id, event, timeout=seconds, count=count)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {event!r} x{count} for job {job_id}: {found}")

    def progress(self, job_id: str) -> list[Any]:
        return [e["data"] for e in self.of(job_id, "progress")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        super().close()


class IntakeProcess:
    """The `lectern-intake` console script with test settings."""

    def __init__(self, env: dict[str, str], workdir: pathlib.Path, n: int):
        self.env = env
        self.health_port = int(env["LECTERN_HEALTH_PORT"])
        self.metrics_port = int(env["LECTERN_METRICS_PORT"])
        self.log_path = workdir / f"intake-{n}.log"
        self._log = open(self.log_path, "w")
        # The console script, not `python -m` from the repo root (operator/ would shadow the stdlib).
        self.proc = spawn([str(INTAKE_BIN)], cwd=workdir, env=env,
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


INTAKE_BIN = pathlib.Path(sys.executable).parent / "lectern-intake"


class Harness:
    """One queue, the Node producer/listener, intake processes logged in as the chart's intake
    ServiceAccount, and the test's namespace (`kube`: admin, bound to it)."""

    def __init__(self, kube: KubeClient, identity: ChartIdentity, redis_url: str, workdir: pathlib.Path):
        self.kube = kube
        self.identity = identity
        self.namespace = kube.namespace
        self.redis_url = redis_url
        self.workdir = workdir
        self.queue = f"video-queue-{uuid.uuid4().hex[:8]}"
        self._producer: Producer | None = None
        self._events: Events | None = None
        self._kubeconfig: pathlib.Path | None = None
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

    @property
    def kubeconfig(self) -> pathlib.Path:
        """The chart's intake ServiceAccount (its token inline), as a person would run it."""
        if self._kubeconfig is None:
            self._kubeconfig = self.identity.kubeconfig("intake")
        return self._kubeconfig

    def intake_env(self, kubeconfig: pathlib.Path | None = None, **overrides: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LECTERN_", "KUBE"))}
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env.update({
            "LECTERN_REDIS_URL": self.redis_url,
            "LECTERN_QUEUE_NAME": self.queue,
            "LECTERN_NAMESPACES": self.namespace,
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
        return self.kube.list("videotranscodes", labels=labels)

    def cr_for(self, job_id: str, timeout: float = 15.0) -> dict:
        def find():
            items = self.transcodes(f"media.lectern.dev/queue-job-id={job_id}")
            return items[0] if items else None
        return wait_until(find, timeout, what=f"a VideoTranscode for job {job_id}")

    def set_status(self, name: str, **status: Any) -> dict:
        return self.kube.patch("videotranscodes", name, {"status": status}, subresource="status")

    def dump_logs(self) -> None:
        for i, intake in enumerate(self.intakes):
            sys.stderr.write(f"\n----- intake {i} log -----\n{intake.log()[-6000:]}\n")

    def close(self) -> None:
        for intake in self.intakes:
            intake.stop()
        if self._producer:
            self._producer.close()
        if self._events:
            self._events.close()


class AdmissionHook:
    """A validating admission webhook on VideoTranscode creates in one namespace, served by the
    test (HTTPS on loopback, a throw-away self-signed certificate as the caBundle), so the real
    API server answers the intake the way the test decides: `decide(request) -> None` (allow)
    or `(code, message)` (refuse with that HTTP status, e.g. 503). `seen` holds every admission
    request. Probes (dry-run creates by the test) confirm the API server calls the hook."""

    PROBE = "webhook-probe"

    def __init__(self, kube: KubeClient, workdir: pathlib.Path):
        import http.server
        import ssl

        self.kube, self.workdir = kube, workdir
        self.decide: Any = lambda request: None
        self.seen: list[dict] = []
        self.name = f"lectern-test-{kube.namespace}"[:63]
        cert, key = workdir / "hook.crt", workdir / "hook.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        self.ca_bundle = base64.b64encode(cert.read_bytes()).decode()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                hook.seen.append(request)
                name = ((request.get("object") or {}).get("metadata") or {}).get("name") or ""
                verdict = None if name.startswith(hook.PROBE) else hook.decide(request)
                response: dict[str, Any] = {"uid": request["uid"], "allowed": verdict is None}
                if verdict is not None:
                    response["status"] = {"code": verdict[0], "message": verdict[1]}
                body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                   "response": response}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def user(self, request: dict) -> str:
        return (request.get("userInfo") or {}).get("username", "")

    def lecture(self, request: dict) -> str:
        return ((request.get("object") or {}).get("spec") or {}).get("lectureId", "")

    def __enter__(self) -> "AdmissionHook":
        ns = self.kube.namespace
        self.kube.request("POST", WEBHOOKS, {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [{
                "name": "videotranscodes.test.lectern.dev",
                "clientConfig": {"url": f"https://127.0.0.1:{self.server.server_port}/validate",
                                 "caBundle": self.ca_bundle},
                "rules": [{"apiGroups": ["media.lectern.dev"], "apiVersions": ["*"], "operations": ["CREATE"],
                           "resources": ["videotranscodes"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10}]})
        # The API server loads webhook configurations from a watch: wait until it calls this one.
        self._wait_until(lambda called: called, "the API server never called the admission webhook")
        return self

    def _probe(self) -> bool:
        """A dry-run create as admin; True if it went through this hook."""
        from lectern_operator.intake import resources as res
        from lectern_operator.intake.payload import parse_payload

        body = res.cr_body(parse_payload(lecture_data(lecture="probe"), [ALLOWED_HOST]), name=self.PROBE,
                           namespace=self.kube.namespace, job_id="probe", job_timestamp=1, queue="probe")
        before = len(self.seen)
        self.kube.request("POST", self.kube.path("vt"), body, params={"dryRun": "All"})
        return len(self.seen) > before

    def _wait_until(self, done: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done(self._probe()):
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.decide = lambda request: None
        try:
            self.kube.request("DELETE", f"{WEBHOOKS}/{self.name}")
            # Keep serving until the API server has dropped the hook: a hook that is gone while
            # still configured fails every create (failurePolicy Fail).
            self._wait_until(lambda called: not called, "the API server kept calling the removed webhook")
        finally:
            self.server.shutdown()
            self.server.server_close()


WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


@pytest.fixture()
def admission_hook(kube, tmp_path):
    with AdmissionHook(kube, tmp_path) as hook:
        yield hook


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return bool(rep is not None and rep.failed)


@pytest.fixture()
def harness(kube, chart_identity, redis_server, tmp_path, request):
    h = Harness(kube, chart_identity, redis_server.url, tmp_path)
    yield h
    h.close()
    if _failed(request):
        h.dump_logs()


@pytest.fixture(scope="module")
def shared_harness(cluster, redis_server, tmp_path_factory, request):
    """One namespace, queue and intake for a whole module of tests that leave no trace on each
    other (distinct lectures, metrics compared as deltas): process start-up is most of the
    cost of an intake test."""
    from tests.cluster_fixtures import namespace_for

    ns = namespace_for(request)
    kube = KubeClient(cluster.server, cluster.ssl_context(), ns)
    kube.ensure_namespace(ns, RESTRICTED)
    workdir = tmp_path_factory.mktemp("intake")
    h = Harness(kube, ChartIdentity(cluster, kube, workdir), redis_server.url, workdir)
    try:
        h.intake = h.start()
        yield h
    except BaseException:
        h.dump_logs()
        raise
    finally:
        h.close()
        try:
            kube.delete("namespaces", ns)
        except Exception:  # noqa: BLE001 - teardown
            pass


@pytest.fixture()
def own_redis(tmp_path):
    """A Redis of its own (AOF on), for tests that restart it."""
    (tmp_path / "redis").mkdir()
    with RedisServer(workdir=tmp_path / "redis") as server:
        yield server


@pytest.fixture()
def restart_harness(kube, chart_identity, own_redis, tmp_path, request):
    h = Harness(kube, chart_identity, own_redis.url, tmp_path)
    h.redis = own_redis
    yield h
    h.close()
    if _failed(request):
        h.dump_logs()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def lecture_data(lecture: str = "65f1c0ffee0123456789abcd", n: int = 1, instructor: str = "instructor-7") -> dict:
    return {"lectureId": lecture, "rawVideoUrl": f"https://{ALLOWED_HOST}/demo/video/upload/v{n}/raw/{lecture}.mp4",
            "instructorId": instructor}
