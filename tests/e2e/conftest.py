"""Harness of the end-to-end tests: one `LocalStack` (tests/e2e/stack.py) for the whole
package — every component its own process on loopback — shared because start-up is most of the
cost and the tests use distinct lectures. Each fault test leaves the stack as it found it
(services restarted, faults cleared).

At the end of the run the fault matrix is printed: one row per scenario with its outcome and
the invariants checked (tests/e2e/invariants.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.invariants import MATRIX
from tests.e2e.stack import LocalStack

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if not shutil.which("node") or not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        pytest.fail("node or tests/node/node_modules missing (make test runs npm ci)")
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (the Cloudinary emulator's TLS certificate)")
    with LocalStack(tmp_path_factory.mktemp("e2e"), max_concurrent=2, job_ttl_seconds=3) as s:
        yield s


@pytest.fixture(autouse=True)
def _show_logs_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "stack" in request.fixturenames:
        sys.stderr.write("\n" + request.getfixturevalue("stack").logs() + "\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.when == "call" and rep.failed:
        for row in MATRIX:
            if row.test == item.nodeid and row.held is None:
                row.held = False


def pytest_terminal_summary(terminalreporter):
    if MATRIX:
        terminalreporter.write_sep("=", "fault matrix (tests/e2e)")
        for line in MATRIX.table():
            terminalreporter.write_line(line)


def _clip(out: Path, duration: float, size: str) -> Path:
    subprocess.run([sys.executable, "-m", "lectern_transcoder.sample", str(out), "--duration", str(duration),
                    "--size", size, "--preset", "ultrafast"], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def lecture_clip(tmp_path_factory) -> Path:
    """A generated 1280x720, 4 s lecture clip (slides + speaker inset + speech-like audio), at a
    camera-like high bitrate: the transcoder must really re-encode it."""
    return _clip(tmp_path_factory.mktemp("clip") / "lecture.mp4", 4, "1280x720")


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory) -> Path:
    """Long enough (12 s) that a fault can land while ffmpeg is encoding. 720p at camera
    bitrate: the CDN's c_limit rendition is the original, so the pod really encodes it (the
    rendition of a 1080p upload is already H.264 within limits and only remuxed, in a blink)."""
    return _clip(tmp_path_factory.mktemp("clip") / "long.mp4", 12, "1280x720")


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory) -> Path:
    """A 2 s 640x360 clip for the many-jobs case."""
    return _clip(tmp_path_factory.mktemp("clip") / "small.mp4", 2, "640x360")
