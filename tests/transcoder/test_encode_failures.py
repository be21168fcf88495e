"""How an ffmpeg failure is classified (encode._classify: the exit code the Job's pod failure
policy acts on), on real ffmpeg: an input only the parallel audio process cannot handle, a mux
onto a full disk, a mux whose own input vanished, a command line ffmpeg rejects, an ffmpeg that
crashed; and the real CLI's exit codes 64 (bad command line) and 75 (transient)."""

from __future__ import annotations

import http.server
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from lectern_transcoder import encode
from lectern_transcoder.errors import EXIT_BUG, TranscodeError, Transient, UnusableInput


def assert_failed(res, code: int, reason_start: str, out: Path | None = None) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.termination is not None and res.termination["exitCode"] == code, res.termination
    assert res.termination["reason"].startswith(reason_start), res.termination["reason"]
    assert "\n" not in res.termination["reason"] and "videoUrl" not in res.termination
    assert "Traceback" not in res.stderr
    assert f"lectern-transcode: error: {res.termination['reason']}" in res.stderr
    if out is not None:
        assert not out.exists()


# --- the encode's processes ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def nine_channels(tmp_path_factory) -> Path:
    """MPEG-4 video (must be encoded) with 9-channel PCM of no known layout: ffprobe and the
    video process are fine with it, the parallel audio process cannot downmix it to stereo."""
    path = tmp_path_factory.mktemp("nine") / "nine.mkv"
    merge = "".join(f"[a{i}]" for i in range(9))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=320x180:d=1:r=15",
                    "-f", "lavfi", "-i", "sine=d=1", "-filter_complex",
                    f"[1:a]aformat=channel_layouts=mono,asplit=9{merge};{merge}amerge=inputs=9[a]",
                    "-map", "0:v", "-map", "[a]", "-c:v", "mpeg4", "-c:a", "pcm_s16le", str(path)], check=True)
    return path


def test_only_the_parallel_audio_process_fails(nine_channels, run_cli, tmp_path):
    out = tmp_path / "out.mp4"
    res = run_cli(str(nine_channels), str(out))
    assert res.event("plan")["audio"] == "encode (parallel)"  # the failure is the audio process's own
    # The audio job fails at its first ffmpeg: the loudness measurement (transcoder/loudness.py),
    # or the audio encode itself when the track is not measured.
    assert_failed(res, 65, "ffmpeg (loudness) could not process the input: ", out)
    assert res.event("failed")["exitCode"] == 65


@pytest.fixture
def own_files(media, tmp_path) -> tuple[Path, Path]:
    """A video-only MP4 and an audio-only M4A as encode.run's parallel path leaves them for the mux."""
    src = media("mux-src.mp4")
    video, audio = tmp_path / "video.mp4", tmp_path / "audio.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-an", "-c", "copy", str(video)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-vn", "-c:a", "aac", str(audio)], check=True)
    return video, audio


def run_mux(video: Path, audio: Path, dst: Path, log: Path) -> None:
    procs = encode.Processes()
    try:
        encode.wait_for(procs, procs.start(encode.argv_mux(video, audio, dst), log), log, video, "ffmpeg (mux)")
    finally:
        procs.stop()


def test_mux_control_succeeds(own_files, tmp_path):
    run_mux(*own_files, tmp_path / "out.mp4", tmp_path / "mux.log")  # the same mux, nothing broken
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_mux_onto_a_full_disk_is_transient(own_files, tmp_path):
    # /dev/full answers every write with ENOSPC, as a full scratch volume does
    with pytest.raises(Transient, match=r"^ffmpeg \(mux\): no space left in the scratch directory$"):
        run_mux(*own_files, Path("/dev/full"), tmp_path / "mux.log")
    assert b"No space left on device" in (tmp_path / "mux.log").read_bytes()


def test_mux_whose_own_input_vanished_is_not_the_inputs_fault(own_files, tmp_path):
    # every file the mux reads is one this program wrote: its absence is our bug (exit 70,
    # for a person to look at), never "unusable input" (which would fail the lecture for good)
    video, audio = own_files
    audio.unlink()
    with pytest.raises(TranscodeError) as err:
        run_mux(video, audio, tmp_path / "out.mp4", tmp_path / "mux.log")
    assert type(err.value) is TranscodeError and err.value.exit_code == EXIT_BUG
    assert str(err.value).startswith("ffmpeg (mux) lost a file it wrote itself: ")
    assert not (tmp_path / "out.mp4").exists()


def test_rejected_command_line_is_a_bug(tmp_path, media):
    src = media("mux-src.mp4")
    log = tmp_path / "bad.log"
    procs = encode.Processes()
    proc = procs.start(["ffmpeg", "-nostdin", "-i", str(src), "-no-such-option", "1", "-f", "null", "-"], log)
    with pytest.raises(TranscodeError) as err:
        encode.wait_for(procs, proc, log, src, "ffmpeg")
    assert type(err.value) is TranscodeError and err.value.exit_code == EXIT_BUG
    assert str(err.value).startswith("ffmpeg rejected its command line: ")


def test_unreadable_input_is_unusable(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\xff" * 5000)  # an MP4 signature, then garbage
    log = tmp_path / "main.log"
    procs = encode.Processes()
    proc = procs.start(["ffmpeg", "-nostdin", "-v", "error", "-f", "mp4", "-i", str(src), "-f", "null", "-"], log)
    with pytest.raises(UnusableInput, match=r"^ffmpeg could not process the input: "):
        encode.wait_for(procs, proc, log, src, "ffmpeg")


def test_ffmpeg_crashing_is_transient(tmp_path):
    # a signal other than the OOM killer's SIGKILL: worth another try on another pod
    log = tmp_path / "main.log"
    procs = encode.Processes()
    proc = procs.start(["ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc=d=60",
                        "-f", "null", "-"], log)
    try:
        proc.send_signal(signal.SIGSEGV)
        with pytest.raises(Transient, match=r"^ffmpeg was killed by signal 11$"):
            encode.wait_for(procs, proc, log, tmp_path / "in.mp4", "ffmpeg")
    finally:
        procs.stop()


# --- the real CLI's exit codes 64 and 75 -----------------------------------------------------------

def test_bad_command_line_exits_64(run_cli, tmp_path):
    res = run_cli("only-one-argument")
    assert res.returncode == 64
    assert res.termination == {"exitCode": 64,
                               "reason": "bad command line: the following arguments are required: OUTPUT"}
    res = run_cli(str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), "--max-height", "100")
    assert_failed(res, 64, "--max-height 100 is outside 144–720")


class _Always503(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def test_cdn_down_every_time_exits_75(run_cli, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    _Always503.hits = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        out = tmp_path / "out.mp4"
        res = run_cli(f"http://127.0.0.1:{port}/raw.mp4", str(out), "--progress", "json",
                      env={"LECTERN_TEST_INSECURE_LOOPBACK": f"127.0.0.1:{port}"}, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert_failed(res, 75, f"download of 127.0.0.1:{port}/raw.mp4 failed after 6 attempts: HTTP 503", out)
    assert _Always503.hits == 6
    assert [e["reason"] for e in res.events if e["event"] == "retry"] == [f"HTTP 503 from 127.0.0.1:{port}"] * 5
