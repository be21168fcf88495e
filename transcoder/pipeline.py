"""One transcode from INPUT to OUTPUT: fetch, probe, encode, deliver, and always clean up.

Every intermediate file lives in one private temporary directory (mode 0700, under `TMPDIR`,
the pod's scratch `emptyDir`) that is removed in a `finally` on success, failure and SIGTERM,
after the ffmpeg children have been stopped. The OUTPUT appears atomically (a rename, or the
upload's final chunk) only once the result has been checked, so a failure never leaves a
partial file where the platform or a person would take it for the result."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import signal
import shutil
import tempfile
import threading
import time
from pathlib import Path

from lectern_transcoder import cgroup, encode, fetch, upload
from lectern_transcoder.cloudinary_url import is_cloudinary_video_url, rendition_url
from lectern_transcoder.errors import TranscodeError, UnusableInput, UsageError
from lectern_transcoder.probe import Probe, probe
from lectern_transcoder.progress import ProgressTracker

# Cloudinary answers these when it will not transform a (large) video on the fly; the raw
# file is then fetched as it is.
RENDITION_FALLBACK_STATUSES = {400, 413, 420, 423}
# An output shorter than this share of the input means the input's data ended early.
MIN_DURATION_SHARE = 0.9


@dataclasses.dataclass
class Options:
    input: str
    output: str
    lecture_id: str | None = None
    max_height: int = 720
    allowed_hosts: str | None = None
    max_bytes: int | None = None
    threads: int | None = None


@dataclasses.dataclass
class Result:
    video_url: str
    mode: str  # "transcode" or "remux"
    width: int
    height: int
    input_bytes: int
    output_bytes: int
    duration: float
    seconds: float
    input_probe: Probe
    plan: encode.Plan
    # Wall seconds per stage (downloading, probing, encoding, uploading): where a transcode's
    # time goes, and what the pipeline benchmark sets the rest of the system against.
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def is_url(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value))


def _safe_suffix(name: str) -> str:
    """Keep a short alphanumeric extension (a demuxer hint), nothing else of the user's name."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def stages_for(options: Options) -> list[str]:
    stages = ["downloading"] if is_url(options.input) else []
    stages += ["probing", "encoding"]
    if upload.is_cloudinary_output(options.output):
        stages.append("uploading")
    return stages


def _check_output(options: Options) -> Path | str:
    if upload.is_cloudinary_output(options.output):
        public_id = upload.public_id_of(options.output)
        upload.configure()
        return public_id
    dest = Path(options.output).expanduser().absolute()
    if dest.is_dir():
        raise UsageError(f"OUTPUT {options.output} is a directory; give a file name")
    if not dest.parent.is_dir():
        raise UsageError(f"OUTPUT's directory {dest.parent} does not exist")
    if not os.access(dest.parent, os.W_OK):
        raise UsageError(f"OUTPUT's directory {dest.parent} is not writable")
    return dest


def _local_input(path: str, work: Path) -> Path:
    """Give ffmpeg a name we generated: hard link (free) or copy the user's file into the
    temp dir; the user's name, whatever characters it has, never reaches an argv."""
    original = Path(path).expanduser()
    if not original.exists():
        raise UnusableInput(f"input file {path} does not exist")
    if not original.is_file():
        raise UnusableInput(f"input {path} is not a regular file")
    src = work / f"input{_safe_suffix(original.name)}"
    try:
        os.link(original.resolve(), src)
    except OSError:
        shutil.copyfile(original, src)
    return src


def _download(url: str, work: Path, options: Options, tracker: ProgressTracker, on_retry=None) -> Path:
    policy = fetch.FetchPolicy.from_env(options.allowed_hosts, options.max_bytes)
    src = work / "input"

    def on_bytes(have: int, total: int | None) -> None:
        tracker.update(have / total if total else None, bytes_downloaded=have)

    wanted = url
    if is_cloudinary_video_url(url):
        long_side = encode.bounds(2, 1, options.max_height)[0]
        wanted = rendition_url(url, long_side)
    try:
        fetch.download(wanted, src, policy, on_bytes, on_retry=on_retry)
    except fetch.HttpStatusError as exc:
        if wanted == url or exc.status not in RENDITION_FALLBACK_STATUSES:
            raise
        fetch.download(url, src, policy, on_bytes, on_retry=on_retry)  # no rendition: the raw file
    return src


def _verify(out: Path, src_probe: Probe, plan: encode.Plan) -> Probe:
    """The result is what we promise, or it is not delivered."""
    result = probe(out)
    v = result.video
    if v.codec != "h264" or v.pix_fmt != "yuv420p" or (v.width, v.height) != (plan.width, plan.height):
        raise TranscodeError(f"output check failed: {v.codec} {v.pix_fmt} {v.width}x{v.height}, "
                             f"planned h264 yuv420p {plan.width}x{plan.height}")
    if result.duration < src_probe.duration * MIN_DURATION_SHARE - 0.5:
        raise UnusableInput(f"input is truncated or corrupt: only {result.duration:.1f} s of "
                            f"{src_probe.duration:.1f} s could be decoded")
    return result


def _deliver_local(out: Path, dest: Path) -> None:
    """Atomic: rename within one file system, else copy to a hidden sibling and rename."""
    try:
        os.replace(out, dest)
        return
    except OSError:
        pass
    partial = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(4)}")
    try:
        shutil.copyfile(out, partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _deliver_cloudinary(out: Path, public_id: str, tracker: ProgressTracker, on_retry=None) -> str:
    """Upload in a worker thread: the SDK call blocks for minutes, and meanwhile the main
    thread keeps progress flowing and stays responsive to SIGTERM."""
    size = out.stat().st_size
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = upload.upload(out, public_id, on_bytes=lambda n: tracker.update(
                n / size if size else None, bytes_uploaded=n), on_retry=on_retry)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="cloudinary-upload", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
        tracker.update(None)
    if "error" in box:
        raise box["error"]
    return box["result"]["secure_url"]


def _cleanup(procs: encode.Processes, work: Path) -> None:
    """Stop ffmpeg, then remove the temp dir, with SIGTERM/SIGINT held back meanwhile so a
    signal arriving now cannot cut the cleanup short (it is delivered right after)."""
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT}) if in_main else None
    try:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run(options: Options, tracker: ProgressTracker, on_plan=None, on_retry=None) -> Result:
    started = time.monotonic()
    if options.max_height < 144 or options.max_height > 720:
        raise UsageError(f"--max-height {options.max_height} is outside 144–720")
    destination = _check_output(options)
    procs = encode.Processes()
    work = Path(tempfile.mkdtemp(prefix="lectern-"))  # 0700, under TMPDIR
    timings: dict[str, float] = {}
    clock = {"stage": None, "since": time.monotonic()}

    def stage(name: str) -> None:
        now = time.monotonic()
        if clock["stage"]:
            timings[clock["stage"]] = round(now - clock["since"], 3)
        clock.update(stage=name, since=now)
        if name != "done":
            tracker.start_stage(name)

    try:
        if is_url(options.input):
            stage("downloading")
            src = _download(options.input, work, options, tracker, on_retry)
        else:
            src = _local_input(options.input, work)
        input_bytes = src.stat().st_size
        stage("probing")
        info = probe(src)
        tracker.input_duration_seconds = info.duration
        threads = options.threads or cgroup.thread_count()
        plan = encode.plan(info, threads, options.max_height)
        if on_plan:
            on_plan(info, plan)
        stage("encoding")
        out = work / "output.mp4"
        encode.run(plan, info, src, out, work, procs,
                   on_progress=lambda frac, speed: tracker.update(frac, speed=speed))
        _verify(out, info, plan)
        output_bytes = out.stat().st_size
        if isinstance(destination, Path):
            _deliver_local(out, destination)
            video_url = str(destination)
        else:
            stage("uploading")
            video_url = _deliver_cloudinary(out, destination, tracker, on_retry)
        stage("done")
    finally:
        _cleanup(procs, work)
    return Result(video_url=video_url, mode=plan.mode, width=plan.width, height=plan.height,
                  input_bytes=input_bytes, output_bytes=output_bytes, duration=info.duration,
                  seconds=time.monotonic() - started, input_probe=info, plan=plan, stage_seconds=timings)
