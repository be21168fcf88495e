"""The fake transcoder the operator tests run (tests/fake_transcoder.py) keeps the real CLI's
contract with the operator: the same exit codes for the same outcomes, the same termination
message, and status.report patches of the same shape, with no field the real one never sends.
Both run here side by side, by hand (LECTERN_KUBE_API_URL, LECTERN_TERMINATION_LOG), against
one recording API endpoint; the real one on a tiny real input through the Cloudinary emulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lectern_operator.api.v1alpha1 import TranscoderReport
from tests.transcoder.conftest import CLI
from tests.transcoder.test_report import API_PATH, _ApiServer, api_server  # noqa: F401 (fixture)

FAKE = Path(__file__).resolve().parents[1] / "fake_transcoder.py"
REPORT_FIELDS = {f.alias or name for name, f in TranscoderReport.model_fields.items()}


@dataclass
class Run:
    code: int
    termination: dict
    reports: list[dict]
    stderr: str


@pytest.fixture
def run_both(api_server, emu, tmp_path):  # noqa: F811
    def run(argv: list[str], *, real: bool, plan: dict | None = None) -> Run:
        term = tmp_path / "termination-log"
        term.unlink(missing_ok=True)
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        plans = tmp_path / "plans"
        plans.mkdir(exist_ok=True)
        env = {**os.environ, "LECTERN_KUBE_API_URL": api_server, "LECTERN_TERMINATION_LOG": str(term),
               "TMPDIR": str(scratch), "LECTERN_TEST_INSECURE_LOOPBACK": f"127.0.0.1:{emu.port}",
               "LECTERN_FAKE_PLANS": str(plans), "POD_NAME": "vt-contract-abcde", "HOSTNAME": "vt-contract-abcde"}
        if plan is not None:
            (plans / "lecC.json").write_text(json.dumps(plan))
        _ApiServer.patches = []
        cmd = [CLI, *argv] if real else [sys.executable, str(FAKE), *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert list(scratch.iterdir()) == [], "temporary files left behind"
        for p in _ApiServer.patches:
            assert p["path"] == API_PATH + "/status" and p["type"] == "application/merge-patch+json", p
            assert list(p["body"]) == ["status"] and list(p["body"]["status"]) == ["report"], p["body"]
        reports = [p["body"]["status"]["report"] for p in _ApiServer.patches]
        return Run(done.returncode, json.loads(term.read_text()), reports, done.stderr)
    return run


def _args(src: str) -> list[str]:
    return [src, "cloudinary:lectures/lecC/0123456789ab", "--lecture-id", "lecC", "--report-cr", API_PATH,
            "--progress", "json"]


def _check_shape(run: Run) -> None:
    assert run.reports, run.stderr
    for report in run.reports:
        assert set(report) <= REPORT_FIELDS, set(report) - REPORT_FIELDS
        TranscoderReport.model_validate(report)  # the operator's own model reads it
    assert run.termination["exitCode"] == run.code and run.termination["reason"]


def _compare(real: Run, fake: Run) -> None:
    _check_shape(real)
    _check_shape(fake)
    assert fake.code == real.code
    assert set(fake.termination) == set(real.termination), (fake.termination, real.termination)
    real_fields = set().union(*map(set, real.reports))
    fake_fields = set().union(*map(set, fake.reports))
    assert fake_fields <= real_fields, f"the fake reports what the real one never does: {fake_fields - real_fields}"
    assert fake.reports[-1].get("stage") == real.reports[-1].get("stage")


def test_success(run_both, emu, media):
    src = media("contract.mp4", size="320x180", video_codec="mpeg4")
    emu.put_asset(src, "raw/lecC")
    url = emu.delivery_url("raw/lecC")
    real = run_both(_args(url), real=True)
    fake = run_both(_args(url), real=False, plan={"progress": [50]})
    _compare(real, fake)
    assert real.code == 0 and real.reports[-1]["stage"] == "done" and real.reports[-1]["progress"] == 100
    for run in (real, fake):
        # The URL the operator will check: this transcode's public id, in the report and the message.
        assert run.reports[-1]["videoUrl"] == run.termination["videoUrl"]
        # (a Cloudinary delivery URL may carry a version segment, v1234/, or not)
        assert re.search(r"/video/upload/(?:v\d+/)?lectures/lecC/0123456789ab\.mp4$",
                         run.termination["videoUrl"]), run.termination


def test_unusable_input(run_both, emu, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(50_000))
    emu.put_asset(junk, "raw/lecJ")
    url = emu.delivery_url("raw/lecJ")
    real = run_both(_args(url), real=True)
    fake = run_both(_args(url), real=False, plan={"exit": 65, "reason": "unusable input: not a video"})
    _compare(real, fake)
    assert real.code == 65 and real.reports[-1]["stage"] == "failed" and "videoUrl" not in real.termination
