"""The ffmpeg command lines: what to do with a probed input, and running them.

`plan()` decides from the probe and the profile (`profile.py`, the only place quality and size
are tuned): the output size (fit 1280x720 landscape / 720x1280 portrait after rotation and
sample aspect ratio, never upscaled, even), whether the video can be copied (already H.264
8-bit 4:2:0 within bounds at a sane bitrate: a remux is ~20x faster than an encode and loses
nothing), whether the audio can be copied, and how many threads the CPU quota allows.
`argv_*()` turn a plan into argument lists; `run()` executes them with `-progress pipe:1`.

ffmpeg only ever receives paths inside our private temp dir, never a shell, and metadata is
dropped (`-map_metadata -1`): phone clips carry GPS positions that students need not see."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lectern_transcoder import cgroup, ffsafe, loudness, profile
from lectern_transcoder.errors import OutOfMemory, TranscodeError, Transient, UnusableInput
from lectern_transcoder.probe import AudioStream, Probe, last_line
from lectern_transcoder.progress import fraction_done, parse_progress, speed_of

COMPLIANT_H264_PROFILES = {"High", "Main", "Constrained Baseline"}
FPS_TOLERANCE = 0.5
KILL_GRACE_SECONDS = 2.0
# ffmpeg messages that mean our command line is wrong (a bug), not the input.
_OUR_FAULT = ("Unrecognized option", "Option not found", "Error splitting the argument list",
              "Error initializing output stream", "Error while opening encoder")


def even_floor(x: int) -> int:
    return max(2, x - x % 2)


def bounds(width: int, height: int, max_height: int = profile.MAX_SHORT_SIDE) -> tuple[int, int]:
    """The box to fit in: 1280x720 for landscape (and square), 720x1280 for portrait, scaled
    for a smaller `max_height` (the short side)."""
    long_side = even_floor(round(max_height * profile.MAX_LONG_SIDE / profile.MAX_SHORT_SIDE))
    return (long_side, max_height) if width >= height else (max_height, long_side)


def target_size(width: int, height: int, max_height: int = profile.MAX_SHORT_SIDE) -> tuple[int, int]:
    """Largest even size within the bounds with the input's aspect ratio; never larger than
    the input (a 320x180 clip stays 320x180, a 641x361 one becomes 640x360)."""
    bw, bh = bounds(width, height, max_height)
    scale = min(1.0, bw / width, bh / height)
    return (even_floor(min(bw, round(width * scale))), even_floor(min(bh, round(height * scale))))


@dataclasses.dataclass(frozen=True)
class Plan:
    width: int
    height: int
    copy_video: bool
    audio: AudioStream | None
    copy_audio: bool
    threads: int
    parallel_audio: bool
    gop: int
    why_encode: tuple[str, ...]  # why the video is not copied (empty when it is)
    content: str = profile.DEFAULT_CONTENT  # analyse.py's class: which CONTENT_SETTINGS apply

    @property
    def mode(self) -> str:
        return "remux" if self.copy_video else "transcode"

    @property
    def audio_mode(self) -> str:
        if self.audio is None:
            return "none"
        if self.copy_audio:
            return "copy"
        return "encode (parallel)" if self.parallel_audio else "encode"


def video_issues(p: Probe, max_height: int) -> list[str]:
    """Why the video stream cannot be copied as it is (an empty list means it can)."""
    v = p.video
    issues = []
    if v.codec != "h264":
        issues.append(f"codec {v.codec}")
    elif v.profile not in COMPLIANT_H264_PROFILES:
        issues.append(f"H.264 profile {v.profile}")
    if v.pix_fmt != profile.PIX_FMT:
        issues.append(f"pixel format {v.pix_fmt}")
    if v.rotation:
        issues.append(f"rotated {v.rotation}°")
    if v.sar != 1:
        issues.append(f"non-square pixels {v.sar}")
    if (v.width, v.height) != target_size(v.width, v.height, max_height):
        issues.append(f"size {v.width}x{v.height}")
    if v.fps is None or v.fps > profile.MAX_FPS + FPS_TOLERANCE:
        issues.append(f"frame rate {v.fps}")
    rate = p.video_bit_rate
    if rate is None or rate > profile.REMUX_MAX_VIDEO_KBPS * 1000:
        issues.append(f"bitrate {rate and rate // 1000} kbit/s")
    elif v.fps and rate / (v.width * v.height * v.fps) > profile.REMUX_MAX_BITS_PER_PIXEL:
        issues.append(f"bitrate {rate // 1000} kbit/s ({rate / (v.width * v.height * v.fps):.2f} bits per pixel)")
    return issues


def plan(p: Probe, threads: int, max_height: int = profile.MAX_SHORT_SIDE,
         parallel_audio: bool = profile.PARALLEL_AUDIO, content: str = profile.DEFAULT_CONTENT) -> Plan:
    """What to do with the input; `content` is analyse.py's class of the source (its x264
    settings: profile.CONTENT_SETTINGS)."""
    settings = profile.CONTENT_SETTINGS[content]
    dw, dh = p.video.display_size
    width, height = target_size(dw, dh, max_height)
    issues = video_issues(p, max_height)
    audio = p.default_audio
    copy_audio = (audio is not None and audio.codec == "aac" and audio.channels <= profile.AUDIO_COPY_MAX_CHANNELS
                  and audio.bit_rate is not None and audio.bit_rate <= profile.AUDIO_COPY_MAX_KBPS * 1000)
    fps = min(p.video.fps or profile.MAX_FPS, settings["max_fps"])
    # The audio is measured (loudness.py) before it is copied or encoded, so it always has its
    # own job beside the video (also on the remux path: a copy of the video, then a mux).
    return Plan(width=width, height=height, copy_video=not issues, audio=audio, copy_audio=copy_audio,
                threads=max(1, threads), gop=max(1, round(fps * settings["gop_seconds"])),
                parallel_audio=audio is not None, why_encode=tuple(issues), content=content)


_COMMON = ["-nostdin", "-hide_banner", "-loglevel", "error"]
_PROGRESS = ["-progress", "pipe:1", "-stats_period", "0.5", "-nostats"]
_STRIP = ["-map_metadata", "-1", "-map_chapters", "-1", "-sn", "-dn"]


def _audio_codec_args(a: AudioStream, copy: bool, measured: loudness.Measurement | None = None,
                      headroom_db: float = 0.0) -> list[str]:
    """Copy, or AAC: speech mono at AUDIO_BITRATE_KBPS (normalised when `measured` says so),
    music in up to AUDIO_MUSIC_CHANNELS at AUDIO_MUSIC_BITRATE_KBPS, its level untouched."""
    if copy:
        return ["-c:a", "copy"]
    music = measured is not None and measured.kind == "music"
    channels = max(1, min(a.channels, profile.AUDIO_MUSIC_CHANNELS if music else profile.AUDIO_CHANNELS))
    kbps = profile.AUDIO_MUSIC_BITRATE_KBPS if music and channels > 1 else profile.AUDIO_BITRATE_KBPS
    rate = a.sample_rate if a.sample_rate in (44100, 48000) else profile.AUDIO_SAMPLE_RATE
    chain = loudness.filters(measured, headroom_db, rate) if measured is not None else []
    args = (["-af", ",".join(chain)] if chain else []) + ["-c:a", profile.AUDIO_CODEC, "-b:a", f"{kbps}k",
                                                           "-ac", str(channels)]
    if a.sample_rate not in (44100, 48000):
        args += ["-ar", str(profile.AUDIO_SAMPLE_RATE)]
    return args


def _video_codec_args(pl: Plan, p: Probe) -> list[str]:
    if pl.copy_video:
        return ["-c:v", "copy"]
    v = p.video
    filters = []
    if (pl.width, pl.height) != v.display_size or (v.width, v.height) != v.display_size or v.width % 2 or v.height % 2:
        filters.append(f"scale={pl.width}:{pl.height}")
    settings = profile.CONTENT_SETTINGS[pl.content]
    if settings["max_fps"] < profile.MAX_FPS and (v.fps or profile.MAX_FPS) > settings["max_fps"]:
        # drop frames before the scaler, so the dropped ones are never scaled
        filters.insert(0, f"fps={settings['max_fps']}")
    filters += [*settings["filters"], "setsar=1", f"format={profile.PIX_FMT}"]
    tune = ["-tune", settings["tune"]] if settings["tune"] else []
    return ["-vf", ",".join(filters), "-fpsmax", str(profile.MAX_FPS),
            "-c:v", profile.VIDEO_CODEC, "-preset", profile.X264_PRESET, *tune,
            "-x264-params", profile.X264_PARAMS, "-crf", str(settings["crf"]),
            "-profile:v", profile.X264_PROFILE, "-pix_fmt", profile.PIX_FMT,
            "-maxrate", f"{profile.MAXRATE_KBPS}k", "-bufsize", f"{profile.BUFSIZE_KBPS}k",
            "-g", str(pl.gop), "-threads", str(pl.threads)]


def argv_main(pl: Plan, p: Probe, src: Path, dst: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    """The one ffmpeg that reads the input for the video (and the audio unless it goes to a
    parallel process). Its output is final (with +faststart) unless audio is muxed later."""
    argv = [ffmpeg, *_COMMON, "-threads", str(pl.threads), *source_args(p, src), "-map", f"0:{p.video.index}"]
    argv += _video_codec_args(pl, p)
    if pl.audio is not None and not pl.parallel_audio:
        argv += ["-map", f"0:{pl.audio.index}", *_audio_codec_args(pl.audio, pl.copy_audio)]
    else:
        argv += ["-an"]
    argv += _STRIP
    if not pl.parallel_audio:
        argv += ["-movflags", "+faststart"]
    return argv + [*_PROGRESS, "-f", "mp4", "-y", str(dst)]


def source_args(p: Probe, src: Path) -> list[str]:
    """`-i` of the untrusted input, pinned to the probed demuxer, `file` only, frame size and
    duration capped (ffsafe.input_args)."""
    return [*ffsafe.input_args(p.demuxer, p.max_seconds), "-i", ffsafe.input_url(src)]


def own_input(path: Path) -> list[str]:
    """`-i` of a file this program wrote (an MP4 or fragmented MP4)."""
    return [*ffsafe.own_args("mov"), "-i", ffsafe.input_url(path)]


def argv_measure(audio: AudioStream, p: Probe, src: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    """The loudness measurement of the audio track (loudness.py): ebur128's log on stderr."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", *source_args(p, src),
            "-map", f"0:{audio.index}", "-vn", "-sn", "-dn", "-af", loudness.measure_filters(), "-f", "null", "-"]


def argv_audio(pl: Plan, p: Probe, src: Path, dst: Path, ffmpeg: str = "ffmpeg",
               measured: loudness.Measurement | None = None, copy: bool = False, headroom_db: float = 0.0) -> list[str]:
    assert pl.audio is not None
    return [ffmpeg, *_COMMON, *source_args(p, src), "-map", f"0:{pl.audio.index}", "-vn", "-sn", "-dn",
            *_audio_codec_args(pl.audio, copy, measured, headroom_db), "-map_metadata", "-1", "-f", "mp4", "-y",
            str(dst)]


def argv_true_peak(path: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    """The true peak of an audio file this program wrote (ebur128 summary on stderr)."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", *own_input(path),
            "-map", "0:a:0", "-af", loudness.true_peak_filters(), "-f", "null", "-"]


def argv_mux(video: Path, audio: Path, dst: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    return [ffmpeg, *_COMMON, *own_input(video), *own_input(audio), "-map", "0:v:0", "-map", "1:a:0",
            "-c", "copy", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", "-y", str(dst)]


def _classify(returncode: int, stderr: bytes, src: Path, what: str,
              procs: "Processes | None" = None) -> TranscodeError:
    reason = last_line(stderr, src)
    text = stderr.decode("utf-8", "replace")
    if returncode == -signal.SIGKILL and (procs is None or procs.oom_killed() is not False):
        # The kernel's OOM killer (the cgroup counts it), or SIGKILL where no counter can be
        # read: not transient, the same input under the same limit is killed again.
        limit = cgroup.memory_limit()
        within = f" of {limit // 2**20} MiB" if limit else ""
        return OutOfMemory(f"{what} was killed by the kernel for lack of memory: this input needs more than "
                           f"the transcode's memory limit{within}")
    if returncode < 0:
        return Transient(f"{what} was killed by signal {-returncode}")
    if "No space left on device" in text:
        return Transient(f"{what}: no space left in the scratch directory")
    if "No such file or directory" in text:
        # Every path ffmpeg is given is one this program made in its private temp dir (the
        # input is linked or downloaded there first): a missing one is our bug, not the input's.
        return TranscodeError(f"{what} lost a file it wrote itself: {reason}")
    if any(marker in text for marker in _OUR_FAULT):
        return TranscodeError(f"{what} rejected its command line: {reason}")
    return UnusableInput(f"{what} could not process the input: {reason}")


class Processes:
    """The ffmpeg children of one run; `stop()` (from `finally` and the SIGTERM path) makes
    sure none outlives us and keeps writing into a directory being removed."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._oom_baseline = cgroup.oom_kills()
        self._timers: dict[int, threading.Thread] = {}
        # Wall seconds of each ffmpeg from start to exit, by its log's name (video, audio, mux,
        # hls, ...): what the pipeline benchmark counts as ffmpeg's own time, the rest of a
        # stage (waiting for the audio, the mux, the probes) being Lectern's. Timed by a waiter
        # thread, as a process may be reaped long after it exited (the audio, after the video).
        self.seconds: dict[str, float] = {}

    def oom_killed(self) -> bool | None:
        """Whether the kernel OOM-killed a process of our cgroup since we started (None: no
        counter to read)."""
        now = cgroup.oom_kills()
        if now is None or self._oom_baseline is None:
            return None
        return now > self._oom_baseline

    def start(self, argv: list[str], stderr_path: Path, stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen:
        """Start one ffmpeg: no shell, no stdin, only ffsafe.child_env() (no credentials), and
        first in line for the OOM killer."""
        with open(stderr_path, "wb") as err, self._lock:
            if self._stopped:  # the audio job's thread must not start one after the cleanup
                raise Transient("stopping: no new ffmpeg started")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err,
                                    close_fds=True, text=False, env=ffsafe.child_env())
            ffsafe.oom_first(proc.pid)
            self._procs.append(proc)
            timer = threading.Thread(target=self._time, args=(proc, stderr_path.stem, time.monotonic()),
                                     name=f"ffmpeg-timer-{proc.pid}", daemon=True)
            self._timers[proc.pid] = timer
        timer.start()
        return proc

    def _time(self, proc: subprocess.Popen, name: str, started: float) -> None:
        proc.wait()
        with self._lock:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)

    def wait(self, proc: subprocess.Popen) -> int:
        """Reap one ffmpeg (its wall time is then in `seconds`)."""
        code = proc.wait()
        with self._lock:
            timer = self._timers.pop(proc.pid, None)
        if timer is not None:
            timer.join()
        return code

    def stop(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
            self._stopped = True
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


ProgressCallback = Callable[[float | None, float | None], None]


def wait_for(procs: Processes, proc: subprocess.Popen, log: Path, src: Path, what: str) -> None:
    """Wait for one ffmpeg; a failure raises as `_classify` says (input, transient or bug)."""
    procs.wait(proc)
    if proc.returncode != 0:
        raise _classify(proc.returncode, log.read_bytes(), src, what, procs)


def run_with_progress(procs: Processes, argv: list[str], log: Path, src: Path, what: str,
                      duration: float | None, on_progress: ProgressCallback | None) -> None:
    """Run the ffmpeg that encodes (`-progress pipe:1`), relaying its progress as it goes."""
    proc = procs.start(argv, log, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for block in parse_progress(line.decode("ascii", "replace") for line in proc.stdout):
        if on_progress:
            on_progress(fraction_done(block, duration), speed_of(block))
    wait_for(procs, proc, log, src, what)


@dataclasses.dataclass(frozen=True)
class AudioOutcome:
    """What the audio job did: the measurement, and whether the track was copied."""

    measured: loudness.Measurement
    copied: bool

    @property
    def mode(self) -> str:
        if self.copied:
            return "copy"
        return "normalised" if self.measured.normalise else f"encode ({self.measured.kind}, level kept)"


def measure_audio(procs: Processes, audio: AudioStream, p: Probe, src: Path, workdir: Path) -> loudness.Measurement:
    log = loudness.log_path(workdir)
    wait_for(procs, procs.start(argv_measure(audio, p, src), log), log, src, "ffmpeg (loudness)")
    try:
        return loudness.parse(log.read_text("utf-8", "replace"))
    except ValueError as exc:
        raise UnusableInput(f"the audio track's loudness could not be measured: {exc}") from exc


class AudioJob:
    """measure -> copy or encode, in a thread beside the video encode (no wall time added);
    `result()` waits and re-raises its error."""

    def __init__(self, work: Callable[[], AudioOutcome]) -> None:
        self._box: dict = {}
        self._thread = threading.Thread(target=self._run, args=(work,), name="audio-job", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], AudioOutcome]) -> None:
        try:
            self._box["result"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            self._box["error"] = exc

    def result(self) -> AudioOutcome:
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]


def run(pl: Plan, p: Probe, src: Path, dst: Path, workdir: Path, procs: Processes,
        on_progress: ProgressCallback | None = None) -> AudioOutcome | None:
    """Produce `dst` from `src` following the plan. Raises UnusableInput, Transient or a
    TranscodeError (bug) with ffmpeg's last error line. Returns what became of the audio."""
    main_out = workdir / "video.mp4" if pl.parallel_audio else dst
    audio_out = workdir / "audio.m4a"
    job = None
    if pl.parallel_audio:
        assert pl.audio is not None
        audio = pl.audio

        def audio_work() -> AudioOutcome:
            measured = measure_audio(procs, audio, p, src, workdir)
            copy = pl.copy_audio and not measured.normalise
            log = workdir / "audio.log"
            headroom = 0.0
            for attempt in range(loudness.PEAK_RETRIES + 1):
                wait_for(procs, procs.start(argv_audio(pl, p, src, audio_out, measured=measured, copy=copy,
                                                       headroom_db=headroom), log), log, src, "ffmpeg (audio)")
                if not measured.normalise or attempt == loudness.PEAK_RETRIES:
                    break
                # AAC can push peaks over the limiter's ceiling: check, and lower it by the excess
                peak_log = workdir / "peak.log"
                wait_for(procs, procs.start(argv_true_peak(audio_out), peak_log), peak_log, src, "ffmpeg (peak)")
                excess = loudness.parse_true_peak(peak_log.read_text("utf-8", "replace")) - loudness.MAX_TRUE_PEAK_DBTP
                if excess <= 0:
                    break
                headroom += excess + 0.5
            return AudioOutcome(measured, copy)

        job = AudioJob(audio_work)
    # A failed video encode raises here; the caller's Processes.stop() then ends the audio job's
    # ffmpeg and refuses it a new one.
    run_with_progress(procs, argv_main(pl, p, src, main_out), workdir / "video.log", src, "ffmpeg",
                      p.duration, on_progress)
    if job is not None:
        outcome = job.result()
        wait_for(procs, procs.start(argv_mux(main_out, audio_out, dst), workdir / "mux.log"),
                 workdir / "mux.log", src, "ffmpeg (mux)")
        os.unlink(main_out)
        os.unlink(audio_out)
        return outcome
    return None
