"""Inputs that can never work fail fast with exit 65 and one line naming the problem; SIGTERM
mid-encode stops ffmpeg, removes every temporary file and exits 143; progress only goes up and
ends at 100. No partial OUTPUT is ever left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.standins.services import spawn

from .conftest import CLI


def assert_unusable(res, out, *words):
    assert res.returncode == 65, (res.returncode, res.stderr)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("lectern-transcode: error:")]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    assert res.termination["exitCode"] == 65 and "\n" not in res.termination["reason"]
    assert "videoUrl" not in res.termination
    assert res.event("failed")["exitCode"] == 65
    assert not out.exists()
    assert list(out.parent.glob(".*partial*")) == []


def test_audio_only(media, run_cli, tmp_path):
    src = tmp_path / "talk.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=220:d=2", "-c:a", "aac", str(src)],
                   check=True)
    out = tmp_path / "out.mp4"
    assert_unusable(run_cli(str(src), str(out)), out, "no video stream", "audio")


def test_random_bytes(run_cli, tmp_path):
    src = tmp_path / "lecture.mp4"
    src.write_bytes(os.urandom(200_000))
    out = tmp_path / "out.mp4"
    assert_unusable(run_cli(str(src), str(out)), out, "not a readable video")


def test_empty_file(run_cli, tmp_path):
    src = tmp_path / "lecture.mp4"
    src.touch()
    out = tmp_path / "out.mp4"
    assert_unusable(run_cli(str(src), str(out)), out, "empty")


def test_truncated_before_the_index(media, run_cli, tmp_path):
    # an upload cut off midway: without faststart the moov index would have come last
    full = media("plain.mp4", video_codec="mpeg4", extra=["-q:v", "5"]).read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(full[: len(full) // 2])
    out = tmp_path / "out.mp4"
    assert_unusable(run_cli(str(src), str(out)), out, "not a readable video", "moov")


def test_truncated_after_the_index(media, run_cli, tmp_path):
    # faststart input cut in half: probing succeeds (the index is intact), decoding runs dry
    full = media("faststart.mp4", duration=4, faststart=True, video_codec="mpeg4", extra=["-q:v", "5"]).read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(full[: len(full) // 2])
    out = tmp_path / "out.mp4"
    assert_unusable(run_cli(str(src), str(out)), out, "truncated")


def test_missing_input(run_cli, tmp_path):
    out = tmp_path / "out.mp4"
    assert_unusable(run_cli(str(tmp_path / "nope.mp4"), str(out)), out, "does not exist")


@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    """Long enough to be mid-encode when the test acts, and for a few progress updates at ~1/s
    (the profile's superfast encode takes ~5 s for this one; 20 s at 640x360 took ~2 s)."""
    from lectern_transcoder import sample

    d = tmp_path_factory.mktemp("long")
    return sample.generate(d / "long.mp4", 30, "960x540", fps=30, preset="ultrafast", video_codec="mpeg4",
                           extra=["-q:v", "6"])


@pytest.mark.slow
def test_progress_is_monotonic_and_ends_at_100(long_input, run_cli, tmp_path):
    res = run_cli(str(long_input), str(tmp_path / "out.mp4"), "--threads", "1")
    assert res.returncode == 0, res.stderr
    progress = [e for e in res.events if e["event"] == "progress"]
    values = [e["progress"] for e in progress]
    assert values == sorted(values)
    assert values[-1] == 100 and progress[-1]["stage"] == "done"
    assert len(set(values)) >= 3, values  # it moved in between, not only 0 and 100
    assert all(0 <= v <= 100 and isinstance(v, int) for v in values)
    pairs = [(e["stage"], e["progress"]) for e in progress]
    assert len(pairs) == len(set(pairs))  # only on change


@pytest.mark.slow
def test_sigterm_mid_encode_cleans_up(long_input, tmp_path, scratch):
    out = tmp_path / "out.mp4"
    term = tmp_path / "termination-log"
    env = {**os.environ, "TMPDIR": str(scratch), "LECTERN_TERMINATION_LOG": str(term)}
    proc = spawn([CLI, str(long_input), str(out), "--threads", "1"], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if json.loads(line).get("stage") == "encoding":
                break
        time.sleep(0.5)
        assert proc.poll() is None, "finished before it could be interrupted"
        assert any(scratch.iterdir()), "no temp dir while encoding?"
        ffmpeg_children = _children(proc.pid)
        assert ffmpeg_children, "ffmpeg not running"
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, proc.stderr.read()
    assert list(scratch.iterdir()) == []
    assert not out.exists()
    assert json.loads(term.read_text())["exitCode"] == 143
    for pid in ffmpeg_children:
        assert not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
