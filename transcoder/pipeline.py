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

from lectern_transcoder import analyse, cgroup, encode, fetch, hls, upload
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
    # The HLS ladder's destination: a local directory, or cloudinary:<folder> (None: no ladder).
    hls: str | None = None
    # The longest input accepted, in seconds (None: $LECTERN_MAX_INPUT_SECONDS or 6 h).
    max_duration: float | None = None


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
    # Wall seconds of each ffmpeg process (encode.Processes.seconds): inside a stage, what was
    # ffmpeg's own work and what was waiting, muxing and probing around it.
    ffmpeg_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    # With --hls: the master playlist's URL (or path), the poster's, and what was measured.
    hls_url: str | None = None
    poster_url: str | None = None
    ladder: hls.Ladder | None = None
    ladder_plan: hls.LadderPlan | None = None
    hls_bytes: int = 0
    # What the source analysis found (None: remux or ladder) and what became of the audio.
    analysis: analyse.Analysis | None = None
    audio: encode.AudioOutcome | None = None


def is_url(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value))


def _safe_suffix(name: str) -> str:
    """Keep a short alphanumeric extension (a demuxer hint), nothing else of the user's name."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def stages_for(options: Options) -> list[str]:
    stages = ["downloading"] if is_url(options.input) else []
    stages += ["probing", "encoding"]
    if upload.is_cloudinary_output(options.output) or (options.hls and upload.is_cloudinary_output(options.hls)):
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


def _check_hls(options: Options) -> Path | str | None:
    """Where the ladder goes, checked before any work: a Cloudinary folder, or a local
    directory that is new, empty, or holds an earlier ladder (its master.m3u8), replaced whole."""
    if not options.hls:
        return None
    if upload.is_cloudinary_output(options.hls):
        folder = upload.public_id_of(options.hls)
        upload.configure()
        return folder
    dest = Path(options.hls).expanduser().absolute()
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"--hls {options.hls} exists and is not a directory")
        if any(dest.iterdir()) and not (dest / hls.MASTER).is_file():
            raise UsageError(f"--hls {options.hls} is a directory with other files in it (give a new or empty one, "
                             f"or one with an earlier ladder)")
    if not dest.parent.is_dir():
        raise UsageError(f"--hls directory's parent {dest.parent} does not exist")
    if not os.access(dest.parent, os.W_OK):
        raise UsageError(f"--hls directory's parent {dest.parent} is not writable")
    return dest


def _deliver_dir(src: Path, dest: Path) -> None:
    """Put the ladder in place: copied beside `dest` under a hidden name, then renamed over
    it (an earlier ladder is moved aside first and removed after), so DEST never holds a half
    set."""
    tag = secrets.token_hex(4)
    partial = dest.with_name(f".{dest.name}.partial-{tag}")
    old = dest.with_name(f".{dest.name}.old-{tag}")
    try:
        try:
            os.rename(src, partial)
        except OSError:
            shutil.copytree(src, partial)
        os.chmod(partial, 0o755)
        if dest.exists() and any(dest.iterdir()):
            os.rename(dest, old)
        os.rename(partial, dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _upload_ladder(ladder_dir: Path, folder: str, tracker: ProgressTracker, done_bytes: int, total_bytes: int,
                   on_retry=None) -> tuple[str, str]:
    """Upload the set under `folder`: media files, then the rendition playlists, the poster,
    and the master playlist last, so its URL never points at a file not yet there. Raw
    resources keep their names (`<folder>/720p.m3u8`), so the playlists' relative URIs
    resolve; the poster is an image resource (the CDN can then resize it). Returns the master
    playlist's and the poster's secure URLs."""
    files = sorted(p for p in ladder_dir.iterdir() if p.is_file())
    order = ([p for p in files if p.suffix in (".mp4", ".m4s")] + [p for p in files if p.suffix == ".m3u8" and p.name != hls.MASTER]
             + [ladder_dir / hls.POSTER, ladder_dir / hls.MASTER])
    urls: dict[str, str] = {}
    sent = done_bytes
    for path in order:
        base = sent
        image = path.name == hls.POSTER
        result = upload.upload(path, f"{folder}/{path.stem}" if image else f"{folder}/{path.name}",
                               resource_type="image" if image else "raw", filename=path.name,
                               on_bytes=lambda n, base=base: tracker.update(
                                   (base + n) / total_bytes if total_bytes else None, bytes_uploaded=base + n),
                               on_retry=on_retry)
        urls[path.name] = result["secure_url"]
        sent += path.stat().st_size
    return urls[hls.MASTER], urls[hls.POSTER]


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
    result = probe(out, demuxer="mov")
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


def _deliver_cloudinary(out: Path, public_id: str, tracker: ProgressTracker, on_retry=None, *,
                        total: int | None = None, then=None) -> tuple[str, object]:
    """Upload in a worker thread: the SDK call blocks for minutes, and meanwhile the main
    thread keeps progress flowing and stays responsive to SIGTERM. `then` (the HLS set's
    upload) runs in the same thread afterwards; `total` is the bytes of both."""
    size = out.stat().st_size
    total = total or size

    def work() -> tuple[str, object]:
        result = upload.upload(out, public_id, on_bytes=lambda n: tracker.update(
            n / total if total else None, bytes_uploaded=n), on_retry=on_retry)
        return result["secure_url"], (then() if then is not None else None)

    return _run_in_thread(work, tracker)


def _run_in_thread(fn, tracker: ProgressTracker):
    """`fn()` in a worker thread, the main thread keeping progress flowing and staying
    responsive to SIGTERM; its exception is raised here."""
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, name="cloudinary-upload", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
        tracker.update(None)
    if "error" in box:
        raise box["error"]
    return box["result"]


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


def run(options: Options, tracker: ProgressTracker, on_plan=None, on_retry=None, on_ladder=None) -> Result:
    started = time.monotonic()
    if options.max_height < 144 or options.max_height > 720:
        raise UsageError(f"--max-height {options.max_height} is outside 144–720")
    destination = _check_output(options)
    hls_destination = _check_hls(options)
    ladder = lplan = None
    hls_url = poster_url = None
    hls_bytes = 0
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
        info = probe(src, max_seconds=options.max_duration)
        tracker.input_duration_seconds = info.duration
        threads = options.threads or cgroup.thread_count()
        plan = encode.plan(info, threads, options.max_height)
        analysis = None
        if not plan.copy_video and hls_destination is None:
            # the ladder keeps one set of settings (its rungs share the MP4's encode)
            analysis = analyse.analyse(info, src)
            plan = encode.plan(info, threads, options.max_height, content=analysis.content)
        if hls_destination is not None:
            lplan = hls.plan_ladder(info, plan)
        if on_plan:
            on_plan(info, plan)
        if on_ladder and lplan is not None:
            on_ladder(lplan)
        stage("encoding")
        out = work / "output.mp4"
        audio_outcome = None
        if lplan is None:
            audio_outcome = encode.run(plan, info, src, out, work, procs,
                                       on_progress=lambda frac, speed: tracker.update(frac, speed=speed))
        else:
            ladder_dir = work / "hls"
            shared = lplan.shared is not None
            if not shared:  # the MP4 is a remux (seconds): then every rung is encoded
                encode.run(plan, info, src, out, work, procs,
                           on_progress=lambda frac, speed: tracker.update(None if frac is None else 0.05 * frac))
            hls.run(lplan, info, src, ladder_dir, work, procs, out if shared else None,
                    on_progress=lambda frac, speed: tracker.update(
                        None if frac is None else (frac if shared else 0.05 + 0.95 * frac), speed=speed))
        _verify(out, info, plan)
        if lplan is not None:
            ladder = hls.finish(lplan, ladder_dir, info.duration)
            hls.make_poster(out, ladder_dir / hls.POSTER, work, procs, plan.width, plan.height)
            for leftover in ladder_dir.glob("*.tmp"):
                leftover.unlink()
            hls_bytes = sum(p.stat().st_size for p in ladder_dir.iterdir())
        output_bytes = out.stat().st_size
        ladder_upload = None
        if isinstance(hls_destination, str):
            total_upload = hls_bytes + (output_bytes if not isinstance(destination, Path) else 0)
            offset = output_bytes if not isinstance(destination, Path) else 0
            ladder_upload = lambda: _upload_ladder(ladder_dir, hls_destination, tracker, offset,  # noqa: E731
                                                   total_upload, on_retry)
        if isinstance(destination, Path):
            _deliver_local(out, destination)
            video_url = str(destination)
        if isinstance(hls_destination, Path):
            _deliver_dir(ladder_dir, hls_destination)
            hls_url, poster_url = str(hls_destination / hls.MASTER), str(hls_destination / hls.POSTER)
        if not isinstance(destination, Path):
            stage("uploading")
            video_url, uploaded = _deliver_cloudinary(out, destination, tracker, on_retry,
                                                      total=output_bytes + (hls_bytes if ladder_upload else 0),
                                                      then=ladder_upload)
            if uploaded:
                hls_url, poster_url = uploaded
        elif ladder_upload is not None:
            stage("uploading")
            hls_url, poster_url = _run_in_thread(ladder_upload, tracker)
        stage("done")
    finally:
        _cleanup(procs, work)
    return Result(video_url=video_url, mode=plan.mode, width=plan.width, height=plan.height,
                  input_bytes=input_bytes, output_bytes=output_bytes, duration=info.duration,
                  seconds=time.monotonic() - started, input_probe=info, plan=plan, stage_seconds=timings,
                  ffmpeg_seconds=dict(procs.seconds), hls_url=hls_url, poster_url=poster_url, ladder=ladder,
                  ladder_plan=lplan, hls_bytes=hls_bytes, analysis=analysis, audio=audio_outcome)
