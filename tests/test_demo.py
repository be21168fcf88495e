"""`make demo` (scripts/demo.py): the whole pipeline on a short generated lecture, end to end, as
a user runs it (the real control plane, the chart installed with helm); and its one-line answer
to a video that is not there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"


def run_demo(*args: str, cwd: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demo_runs_the_whole_pipeline(tmp_path):
    if not shutil.which("node") or not (ROOT / "tests" / "node" / "node_modules" / "bullmq").is_dir():
        pytest.fail("node or tests/node/node_modules missing (make test runs npm ci)")
    out_dir, temp = tmp_path / "demo-output", tmp_path / "tmp"
    temp.mkdir()
    proc = run_demo("--duration", "3", "--size", "640x360", "--output-dir", str(out_dir), "--timeout", "60",
                    cwd=ROOT, timeout=80, env={**os.environ, "TMPDIR": str(temp)})
    text = proc.stdout
    assert proc.returncode == 0, text[-4000:] + proc.stderr[-4000:]
    assert '"status": "READY"' in text and '"videoUrl": "https://' in text and '"rawVideoUrl": "https://' in text
    assert "Lecture status -> PROCESSING" in text and "Lecture status -> READY" in text
    assert re.search(r"BullMQ +progress 100%", text) and "VIDEO_READY" in text, text
    # the kept output: demo-output/<lectureId>.mp4
    m = re.search(r"the output file: (\S+\.mp4)", text)
    assert m, text[-2000:]
    out = Path(m.group(1))
    assert out.is_file() and out.parent == out_dir and re.fullmatch(r"[0-9a-f]{24}\.mp4", out.name), out
    assert out.stat().st_size > 0
    assert "raw upload" in text and "smaller)" in text
    # the real kubectl against the real kube-apiserver: the node, the chart's two pods Running
    assert re.search(r"^\s+lectern-node-\w+\s+Ready\s", text, re.M), text[:4000]
    for component in ("operator", "intake"):
        assert re.search(rf"^\s+lectern-{component}-\S+\s+1/1\s+Running\s", text, re.M), text[:4000]
    header = next((line for line in text.splitlines() if re.search(r"\bNAME\s+LECTURE\s+PHASE\s+PROGRESS\b", line)
                   and "VIDEO URL" in line), None)
    assert header, text[-3000:]
    assert re.search(r"\bSucceeded\s+100\s+1\b", text), text[-3000:]
    # torn down: its temporary directory (every process's workdir) is gone
    assert "Everything stopped; temporary files removed." in text
    assert not any(temp.iterdir()), list(temp.iterdir())


def test_demo_refuses_a_missing_video(tmp_path):
    missing = tmp_path / "nonexistent.mp4"
    proc = run_demo("--video", str(missing), cwd=tmp_path, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], proc.stderr
