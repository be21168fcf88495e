"""Harness of the end-to-end tests: one `FlowStack` (tests/e2e/stack.py) per module — the
Cloudinary emulator over TLS, the API-server emulator + kubelet, the operator, `lectern-intake`
and the Node bullmq producer/QueueEvents — on the session's Redis and nx-27017. Start-up is
most of the cost, and the tests use distinct lectures, so they share it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.stack import FlowStack

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="module")
def stack(redis_server, mongo_server, tmp_path_factory):
    if not shutil.which("node") or not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        pytest.fail("node or tests/node/node_modules missing (make test runs npm ci)")
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (the Cloudinary emulator's TLS certificate)")
    with FlowStack(tmp_path_factory.mktemp("e2e"), redis_server.url, mongo_server.url,
                   mongo_db="lectern_e2e") as s:
        yield s


@pytest.fixture
def show_logs_on_failure(stack, request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        sys.stderr.write("\n" + stack.logs() + "\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="module")
def lecture_clip(tmp_path_factory) -> Path:
    """A generated 1280x720, 4 s lecture clip (slides + speaker inset + speech-like audio),
    encoded at a camera-like high bitrate: the transcoder must really re-encode it."""
    out = tmp_path_factory.mktemp("clip") / "lecture.mp4"
    subprocess.run([sys.executable, "-m", "lectern_transcoder.sample", str(out), "--duration", "4",
                    "--size", "1280x720", "--preset", "ultrafast"], check=True, capture_output=True, timeout=60)
    return out
