"""Harness for operator tests on the real local cluster (tests/cluster_fixtures.py).

The operator runs in-process (its own thread and event loop) and logs in the normal way,
through `$KUBECONFIG`, as the chart's operator ServiceAccount: RBAC is exactly what the chart
grants (`chart_identity`). The real Job controller makes the pods, the scheduler binds them,
the node agent runs them: the image is the fake transcoder (tests/fake_transcoder.py), whose
behaviour per lectureId is scripted with `plan(...)`; Mongo is FerretDB, Redis is redis-server.
Nothing here writes a Job's or a pod's status by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis.asyncio as aioredis

from lectern_operator.api import v1alpha1 as api
from lectern_operator.main import run
from lectern_operator.settings import Settings
from tests.cluster_fixtures import FAKE_IMAGE, ChartIdentity

ROOT = Path(__file__).resolve().parents[2]
RAW = "https://res.cloudinary.com/demo/video/upload/{}.mov"
LONG = 600  # "hang" of a pod that runs until the test ends it (evicts/deletes it)


def own_video_url(lecture_id: str, raw: str | None = None, cloud: str = "demo") -> str:
    """The delivery URL of the MP4 the operator told this lecture's Job to write (with a
    version, as Cloudinary's secure_url has): the only video URL it believes (operator/trust.py)."""
    from lectern_operator import jobs
    public_id = jobs.output_target(Settings(), lecture_id, raw or RAW.format(lecture_id)).split(":", 1)[1]
    return f"https://res.cloudinary.com/{cloud}/video/upload/v7/{public_id}.mp4"


def tid_of(request) -> str:
    return re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40].strip("_")


def cloudinary_secret(kube) -> None:
    if kube.get("secrets", "lectern-cloudinary") is None:
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-cloudinary"},
                     "stringData": {"CLOUDINARY_URL": "cloudinary://key:secret@demo"}})


@pytest.fixture
def chart_values() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(extra `--set` values, extra templates) of the chart rendered for the test; a test
    overrides it with `@pytest.mark.parametrize("chart_values", [...])` (peering: replicas=2)."""
    return (), ()


@pytest.fixture
def operator_identity(cluster, kube, tmp_path, chart_values) -> ChartIdentity:
    """The chart's ServiceAccounts and RBAC (`helm template`) applied in the test namespace."""
    values, templates = chart_values
    return ChartIdentity(cluster, kube, tmp_path, values=values, templates=templates)


@pytest.fixture
def operator_login(operator_identity, monkeypatch) -> Path:
    """KUBECONFIG = a kubeconfig of the chart's operator ServiceAccount (TokenRequest token)."""
    path = operator_identity.kubeconfig("operator")
    monkeypatch.setenv("KUBECONFIG", str(path))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def op_settings(kube, operator_login, redis_server, mongo_server, request) -> Settings:
    tid = tid_of(request)
    cloudinary_secret(kube)
    return Settings(
        namespaces=kube.namespace, standalone=True,
        mongo_url=mongo_server.url, mongo_db="lectern_optest", mongo_collection=f"lectures_{tid}",
        mongo_timeout_ms=400, lecture_retry_initial_seconds=0.3, lecture_retry_max_seconds=1,
        redis_url=redis_server.url, notifications_channel=f"notifications:{tid}:{kube.namespace}",
        notifications_stream=f"notifications:stream:{tid}:{kube.namespace}",
        max_concurrent=2, reconcile_interval_seconds=0.3, admit_interval_seconds=1,
        progress_notify_interval_seconds=0.2, watch_timeout_seconds=30, metrics_port=0, health_port=0,
        transcoder_image=FAKE_IMAGE, transcoder_service_account="lectern-transcoder",
        cloudinary_cloud_name="demo",  # the fake transcoder reports res.cloudinary.com/demo/... URLs
        transcoder_cpu_request="50m", transcoder_cpu_limit="500m",
        transcoder_memory_request="128Mi", transcoder_memory_limit="256Mi",
    )


class Operator:
    """The operator in its own thread and event loop (kopf cancels every task in its loop that
    it did not start when it stops, so it must not share the test's loop)."""

    def __init__(self, settings: Settings, liveness_endpoint: str | None = None) -> None:
        self.settings = settings
        self.liveness_endpoint = liveness_endpoint
        self.thread: threading.Thread | None = None
        self.stop_flag: threading.Event | None = None
        self.error: BaseException | None = None
        self.starts = 0

    def _main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(run(self.settings, stop_flag=self.stop_flag, ready_flag=ready,
                            liveness_endpoint=self.liveness_endpoint))
        except BaseException as exc:  # pragma: no cover
            self.error = exc
            ready.set()

    async def start(self) -> None:
        self.stop_flag, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name=f"operator-{self.starts}", daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 30), "the operator did not become ready"
        if self.error:
            raise self.error
        self.starts += 1

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 30)
        assert not self.thread.is_alive(), "the operator did not stop"
        self.thread = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def operator_factory(op_settings):
    """make(**setting_overrides) -> a started Operator (stopped at teardown)."""
    started: list[Operator] = []

    async def make(liveness_endpoint: str | None = None, **overrides: Any) -> Operator:
        op = Operator(Settings(**{**dict(op_settings), **overrides}), liveness_endpoint)
        await op.start()
        started.append(op)
        return op
    yield make
    for op in started:
        await op.stop()


@pytest.fixture
async def operator(operator_factory):
    return await operator_factory()


@pytest.fixture
def plan(fake_transcoder):
    """plan(lecture_id, progress=[..], interval=, hang=, exit=, reason=) for the fake transcoder
    pods of this test (read when a container starts: rewriting it changes the next attempt)."""
    written: list[Path] = []

    def write(lecture_id: str, **behaviour: Any) -> None:
        fake_transcoder.plan(lecture_id, **behaviour)
        written.append(fake_transcoder.folder / f"{lecture_id}.json")
    yield write
    for path in written:
        path.unlink(missing_ok=True)


@pytest.fixture
def lectures(op_settings, mongo_server):
    client = pymongo.MongoClient(mongo_server.url)
    coll = client[op_settings.mongo_db][op_settings.mongo_collection]
    coll.delete_many({})
    yield coll
    client.close()


def lecture(lectures, lid: str, status: str = "AWAITING_MEDIA", raw: str | None = None) -> None:
    lectures.insert_one({"_id": lid, "status": status, "rawVideoUrl": raw or RAW.format(lid)})


class Subscriber:
    """A real Redis pub/sub subscriber on the notifications channel (what Socket.IO runs)."""

    def __init__(self, url: str, channel: str) -> None:
        self.redis = aioredis.from_url(url)
        self.channel = channel
        self.messages: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> "Subscriber":
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(self.channel)
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while True:
            m = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if m and m["type"] == "message":
                self.messages.append(json.loads(m["data"]))

    def of(self, lecture_id: str, type_: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("lectureId") == lecture_id and (type_ is None or m["type"] == type_)]

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.pubsub.aclose()
        await self.redis.aclose()


@pytest.fixture
async def notifications(op_settings):
    sub = await Subscriber(op_settings.redis_url.get_secret_value(), op_settings.notifications_channel).start()
    yield sub
    await sub.close()


def make_cr(name: str, lecture_id: str, raw: str | None = None, priority: int = 0, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": {"lectureId": lecture_id, "instructorId": "inst-1",
                     "rawVideoUrl": raw or RAW.format(lecture_id), "priority": priority, **spec}}


async def never(predicate, within: float = 1.5, interval: float = 0.1, what: str = "condition") -> None:
    """A bounded watch: `predicate` (what would prove the test wrong) stays false for `within`."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        assert not await asyncio.to_thread(predicate), f"{what} happened"
        await asyncio.sleep(interval)


async def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll a blocking predicate (API/Mongo reads) off the event loop until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s")
        await asyncio.sleep(interval)


def phase_is(*phases: str):
    return lambda o: o is not None and (o.get("status") or {}).get("phase") in phases


def status_of(kube, name: str) -> dict[str, Any]:
    return (kube.get("vt", name) or {}).get("status") or {}


def reasons(kube, name: str) -> list[str]:
    return [e["reason"] for e in kube.events(kube.get("vt", name))]


def pods_of_job(kube, job_name: str) -> list[dict]:
    return sorted(kube.list("pods", labels=f"job-name={job_name}"), key=lambda p: p["metadata"]["creationTimestamp"])


def running_pod(kube, job_name: str) -> dict | None:
    """The Job's pod whose container runs (not being deleted)."""
    for p in pods_of_job(kube, job_name):
        cs = (p.get("status") or {}).get("containerStatuses") or []
        if not p["metadata"].get("deletionTimestamp") and cs and "running" in (cs[0].get("state") or {}):
            return p
    return None


async def release(kube, plan, name: str, lecture_id: str, **next_plan: Any) -> None:
    """End a hanging attempt: the next attempt follows `next_plan` (default: succeed at once),
    and the running pod is evicted (Eviction API: DisruptionTarget, the Job retries it without
    spending its failure budget)."""
    job = status_of(kube, name)["jobName"]
    # The running pod first: a pod still starting would read the next plan and not hang at all
    # (the CR is Running, and its Lecture PROCESSING, as soon as the Job exists).
    pod = await wait_until(lambda: running_pod(kube, job), what=f"a running pod of {job}")
    plan(lecture_id, **next_plan)
    await asyncio.to_thread(kube.evict, pod["metadata"]["name"])


def exit_records(cluster, namespace: str) -> list[dict]:
    """The node agent's record of every container exit in one namespace."""
    path = cluster.node_workdir / "records.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("namespace") == namespace:
                out.append(rec)
    return out
