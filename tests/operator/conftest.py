"""Harness for operator tests: the operator runs in the test's event loop (kopf.operator),
against the API-server emulator, real Redis and nx-27017; tight settings keep tests fast."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.task: asyncio.Task | None = None
        self.stop_flag: asyncio.Event | None = None
        self.starts = 0

    async def start(self) -> None:
        self.stop_flag, ready = asyncio.Event(), asyncio.Event()
        self.task = asyncio.create_task(run(self.settings, stop_flag=self.stop_flag, ready_flag=ready))
        done, _ = await asyncio.wait({self.task, asyncio.ensure_future(ready.wait())}, timeout=15,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        self.starts += 1

    async def stop(self) -> None:
        if self.task is None:
            return
        self.stop_flag.set()
        done, _ = await asyncio.wait({self.task}, timeout=20)
        if not done:  # pragma: no cover
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def operator(op_settings):
    op = Operator(op_settings)
    await op.start()
    try:
        yield op
    finally:
        await op.stop()


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
