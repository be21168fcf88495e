"""Health endpoint (kopf liveness + our probe) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from prometheus_client import REGISTRY, generate_latest

from tests.operator.conftest import make_cr, phase_is, wait_until
from tests.standins.services import free_port


async def test_health_and_metrics(kube, operator_factory, lectures):
    port = free_port()
    await operator_factory(liveness_endpoint=f"http://127.0.0.1:{port}/healthz")
    lectures.insert_one({"_id": "m1", "status": "AWAITING_MEDIA", "rawVideoUrl": "https://res.cloudinary.com/demo/video/upload/m1.mov"})
    before = REGISTRY.get_sample_value("lectern_transcodes_finished_total", {"phase": "Succeeded"}) or 0
    kube.create(make_cr("vt-m1", "m1"))  # no plan: the fake transcoder succeeds at once
    vt = await kube.await_for("vt", "vt-m1", predicate=phase_is("Succeeded", "Failed"), timeout=30)
    assert vt["status"]["phase"] == "Succeeded", vt["status"]

    def health():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    status, body = await asyncio.to_thread(health)
    assert status == 200 and "queue" in body, body
    await wait_until(lambda: (REGISTRY.get_sample_value("lectern_transcodes_finished_total", {"phase": "Succeeded"}) or 0) > before,
                     what="finished metric")
    text = generate_latest().decode()
    for name in ("lectern_transcodes{", "lectern_queue_length", "lectern_transcode_duration_seconds_bucket",
                 "lectern_queue_wait_seconds_bucket", "lectern_transcode_retries_total",
                 "lectern_watchdog_restarts_total", "lectern_notifications_total"):
        assert name in text, name
