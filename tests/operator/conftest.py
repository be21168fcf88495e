"""Harness for operator tests: the operator runs in the test's event loop (kopf.operator),
against the API-server emulator, real Redis and FerretDB; tight settings keep tests fast."""

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

from lectern_operator.api import crd as crdgen, v1alpha1 as api
from lectern_operator.main import run
from lectern_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NS = "lectern"


def test_id(request) -> str:
    return re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40].strip("_")


@pytest.fixture
def op_settings(kube, redis_server, mongo_server, request) -> Settings:
    kube.register_crd(ROOT / "crds" / crdgen.FILE_NAME)
    kube.ensure_namespace(NS)
    tid = test_id(request)
    return Settings(
        kube_api_url=kube.url, namespaces=NS, standalone=True,
        mongo_url=mongo_server.url, mongo_db="lectern_optest", mongo_collection=f"lectures_{tid}",
        mongo_timeout_ms=400, lecture_retry_initial_seconds=0.3, lecture_retry_max_seconds=1,
        redis_url=redis_server.url, notifications_channel=f"notifications:{tid}",
        notifications_stream=f"notifications:stream:{tid}",
        max_concurrent=2, reconcile_interval_seconds=0.2, admit_interval_seconds=1,
        progress_notify_interval_seconds=0.2, watch_timeout_seconds=10, metrics_port=0, health_port=0,
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
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not become ready"
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


def fake_pod(kube, cr_name: str, job: dict, index: int, phase: str = "Running", exit_code: int | None = None,
             message: str | None = None, conditions: list[dict] | None = None) -> dict:
    """A pod of `job` as the Job controller + kubelet would leave it (for tests without a kubelet)."""
    name = f"{job['metadata']['name']}-{index}"
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": NS, "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                             "uid": job["metadata"]["uid"], "controller": True}]},
        "spec": job["spec"]["template"]["spec"]})
    state: dict[str, Any] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                "message": message or ""}}
    status = {"phase": phase, "startTime": f"2026-01-01T00:00:{index:02d}Z", "conditions": conditions or [],
              "containerStatuses": [{"name": "transcoder", "state": state, "ready": phase == "Running",
                                     "restartCount": 0, "image": "x", "imageID": "", "started": phase == "Running"}]}
    return kube.patch("pods", name, {"status": status}, NS, subresource="status")


def finish_job(kube, job_name: str, ok: bool = True, reason: str = "BackoffLimitExceeded", message: str = "",
               failed: int = 1) -> None:
    cond = [{"type": "Complete" if ok else "Failed", "status": "True",
             "reason": "Completed" if ok else reason, "message": message}]
    kube.patch("jobs", job_name, {"status": {"conditions": cond, "succeeded": 1 if ok else 0,
                                             "failed": 0 if ok else failed, "active": 0}}, NS, subresource="status")


@pytest.fixture
def lectures(op_settings, mongo_server):
    client = pymongo.MongoClient(mongo_server.url)
    coll = client[op_settings.mongo_db][op_settings.mongo_collection]
    coll.delete_many({})
    yield coll
    client.close()


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
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"lectureId": lecture_id, "instructorId": "inst-1",
                     "rawVideoUrl": raw or f"https://res.cloudinary.com/demo/video/upload/{lecture_id}.mov",
                     "priority": priority, **spec}}


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s")
        await asyncio.sleep(interval)


def phase_is(*phases: str):
    return lambda o: o is not None and (o.get("status") or {}).get("phase") in phases
