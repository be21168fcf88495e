"""`lectern-transcode INPUT OUTPUT`: the command people run and the Job's container entrypoint.

On a terminal it shows a progress bar; otherwise (a pod's log) it prints JSON lines, one per
progress change, so that logs stay greppable and machine-readable. With `--report-cr` it also
reports into the VideoTranscode's `status.report`. On exit it writes the termination-log line
the operator reads, and exits with the code the Job's pod failure policy acts on
(0 ok, 65 unusable input, 71 ffmpeg killed for memory, 75 transient, 143 SIGTERM, 70 bug;
64 bad command line)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from lectern_transcoder import pipeline
from lectern_transcoder.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, Terminated, TranscodeError, UsageError
from lectern_transcoder.progress import ProgressTracker, Snapshot

TERMINATION_LOG_ENV = "LECTERN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 64 (EX_USAGE) with the termination log written
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        write_termination_log(64, f"bad command line: {message}")
        sys.exit(64)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lectern-transcode",
                description="Turn a lecture video into a small, streamable MP4 (H.264/AAC, 720p max, +faststart).")
    p.add_argument("input", metavar="INPUT", help="a local file, an https:// URL or a Cloudinary delivery URL")
    p.add_argument("output", metavar="OUTPUT", help="a local file, or cloudinary:<public_id> to upload")
    p.add_argument("--lecture-id", help="the Lecture this transcode is for (logged and reported)")
    p.add_argument("--report-cr", metavar="API_PATH",
                   help="VideoTranscode to report progress to, e.g. "
                        "/apis/media.lectern.dev/v1alpha1/namespaces/NS/videotranscodes/NAME")
    p.add_argument("--max-height", type=int, default=720,
                   help="short side limit in pixels, 144–720 (default 720: fit 1280x720 / 720x1280)")
    p.add_argument("--allowed-hosts", metavar="HOSTS",
                   help="comma-separated hosts INPUT URLs may come from (default $LECTERN_ALLOWED_HOSTS "
                        "or res.cloudinary.com; *.example.com allows subdomains; host:port for other ports)")
    p.add_argument("--max-bytes", type=int,
                   help="largest download in bytes (default $LECTERN_MAX_DOWNLOAD_BYTES or 4 GiB)")
    p.add_argument("--max-duration", type=float, metavar="SECONDS",
                   help="longest input accepted, in seconds (default $LECTERN_MAX_INPUT_SECONDS or 21600, 6 h)")
    p.add_argument("--threads", type=int, help="ffmpeg threads (default: the cgroup CPU quota)")
    p.add_argument("--hls", metavar="DEST",
                   help="also write an HLS ladder (1080p/720p/480p as the source allows, master.m3u8, a poster.jpg): "
                        "a local directory, or cloudinary:<folder> to upload the set there")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="progress display: a bar on a terminal, JSON lines otherwise (default auto)")
    return p


def write_termination_log(code: int, reason: str, video_url: str | None = None, **urls: str | None) -> None:
    """One JSON line for the operator (`state.terminated.message`); best-effort."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    target = Path(path) if path else (DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.exists() else None)
    if target is None:
        return
    record: dict = {"exitCode": code, "reason": reason[:1000]}
    if video_url:
        record["videoUrl"] = video_url
    record.update({k: v for k, v in urls.items() if v})  # hlsUrl, posterUrl
    try:
        with open(target, "w") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        print(f"lectern-transcode: warning: cannot write termination log {target}: {exc.strerror}", file=sys.stderr)


class _JsonLines:
    def __init__(self, lecture_id: str | None) -> None:
        self.lecture_id = lecture_id

    def emit(self, event: str, **fields) -> None:
        record = {"event": event, "ts": round(time.time(), 3)}  # when: lag and timing analysis
        if self.lecture_id:
            record["lectureId"] = self.lecture_id
        record.update({k: v for k, v in fields.items() if v is not None})
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    def __call__(self, s: Snapshot) -> None:
        self.emit("progress", stage=s.stage, progress=s.progress, speed=s.speed,
                  bytesDownloaded=s.bytes_downloaded or None, bytesUploaded=s.bytes_uploaded or None)


class _Bar:
    """A rich progress bar on stderr (stdout stays free for a person's pipes)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=self.console)
        self.task = self.progress.add_task("starting", total=100, speed="")
        self.progress.start()

    def __call__(self, s: Snapshot) -> None:
        self.progress.update(self.task, completed=s.progress, description=s.stage,
                             speed=f"{s.speed:.2f}x" if s.speed else "")

    def stop(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


def _install_signal_handlers() -> None:
    def handler(signum, _frame):
        # Ignore repeats so the cleanup this starts is not itself interrupted; Kubernetes
        # SIGKILLs after the grace period anyway.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if signum == signal.SIGTERM:
            raise Terminated("terminated by SIGTERM")
        raise Terminated("interrupted", EXIT_INTERRUPTED)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _install_signal_handlers()
    mode = args.progress if args.progress != "auto" else ("bar" if sys.stderr.isatty() else "json")
    json_out = _JsonLines(args.lecture_id) if mode == "json" else None
    bar = None
    hooks = []
    if mode == "bar":
        bar = _Bar()
        hooks.append(bar)
    elif json_out:
        hooks.append(json_out)
    reporter = None
    code, reason, video_url = EXIT_BUG, "unexpected error", None
    hls_url = poster_url = None
    try:
        if args.report_cr:
            from lectern_transcoder.report import CrReporter

            try:
                reporter = CrReporter.from_env(args.report_cr)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if reporter:
            hooks.append(lambda s: reporter.update(
                stage=s.stage, progress=s.progress, speed=s.speed, bytes_downloaded=s.bytes_downloaded,
                bytes_uploaded=s.bytes_uploaded, input_duration_seconds=s.input_duration_seconds))
        options = pipeline.Options(input=args.input, output=args.output, lecture_id=args.lecture_id,
                                   max_height=args.max_height, allowed_hosts=args.allowed_hosts,
                                   max_bytes=args.max_bytes, threads=args.threads, hls=args.hls,
                                   max_duration=args.max_duration)
        tracker = ProgressTracker(pipeline.stages_for(options), hooks)

        def on_plan(info, plan) -> None:
            v = info.video
            why = "already compliant" if plan.copy_video else ", ".join(plan.why_encode)
            if json_out:
                json_out.emit("plan", mode=plan.mode, audio=plan.audio_mode, input=f"{v.width}x{v.height}", output=f"{plan.width}x{plan.height}",
                              codec=v.codec, duration=round(info.duration, 3), threads=plan.threads, why=why)
            elif bar:
                bar.console.print(f"{plan.mode}: {v.codec} {v.width}x{v.height} → h264 {plan.width}x{plan.height} "
                                  f"({why}; audio {plan.audio_mode}; {plan.threads} threads)", highlight=False)

        def on_retry(reason: str) -> None:  # the download and upload retry transient failures
            stage = tracker.snapshot().stage
            if json_out:
                json_out.emit("retry", stage=stage, reason=reason)
            elif bar:
                bar.console.print(f"{stage}: retrying after {reason}", highlight=False)

        def on_ladder(lp) -> None:
            rungs = [f"{r.name} {r.width}x{r.height}" + (" (= the MP4)" if r.shared else "") for r in lp.rungs]
            if json_out:
                json_out.emit("ladder", rungs=[{"name": r.name, "width": r.width, "height": r.height,
                                                "sharedWithMp4": r.shared} for r in lp.rungs],
                              segmentSeconds=lp.segment_seconds, audio=lp.audio is not None)
            elif bar:
                bar.console.print(f"HLS ladder: {', '.join(rungs)}; {lp.segment_seconds} s segments", highlight=False)

        result = pipeline.run(options, tracker, on_plan=on_plan, on_retry=on_retry, on_ladder=on_ladder)
        video_url, hls_url, poster_url = result.video_url, result.hls_url, result.poster_url
        if reporter:  # in one update: the operator sees the three URLs together
            reporter.update(video_url=video_url, hls_url=hls_url, poster_url=poster_url)
        tracker.finish("done")
        code, reason = EXIT_OK, f"{result.mode} done: {result.width}x{result.height}, {result.output_bytes} bytes"
        if bar:
            bar.stop()
            ratio = result.output_bytes / result.input_bytes if result.input_bytes else 0
            bar.console.print(f"{result.mode} done: {video_url} {result.width}x{result.height}, "
                              f"{result.output_bytes / 1e6:.2f} MB ({ratio:.1%} of the input) in {result.seconds:.1f} s",
                              highlight=False)
            if result.ladder:
                for r in result.ladder.video:
                    peak, avg = result.ladder.variant_bandwidth(r)
                    bar.console.print(f"  HLS {r.name:>6} {r.width}x{r.height} {r.codecs}: {avg / 1000:.0f} kbit/s "
                                      f"average, {peak / 1000:.0f} peak (with audio), {r.segments} segments, "
                                      f"{r.bytes / 1e6:.2f} MB", highlight=False)
                bar.console.print(f"  HLS {hls_url}\n  poster {poster_url}", highlight=False)
        if json_out:
            json_out.emit("done", videoUrl=video_url, mode=result.mode, width=result.width, height=result.height,
                          inputBytes=result.input_bytes, outputBytes=result.output_bytes,
                          seconds=round(result.seconds, 2), stageSeconds=result.stage_seconds,
                          ffmpegSeconds=result.ffmpeg_seconds,
                          hlsUrl=hls_url, posterUrl=poster_url,
                          hls=result.ladder.as_json() if result.ladder else None,
                          hlsBytes=result.hls_bytes if result.ladder else None,
                          analysis=result.analysis.as_json() if result.analysis else None,
                          audio=({"mode": result.audio.mode, **result.audio.measured.as_json()}
                                 if result.audio else None))
    except TranscodeError as exc:
        code, reason = exc.exit_code, exc.reason
    except Exception as exc:  # a bug: say so, with the traceback on stderr for the pod log
        traceback.print_exc()
        code, reason = EXIT_BUG, f"internal error: {type(exc).__name__}: {exc}"
    finally:
        if bar:
            bar.stop()
    if code != EXIT_OK:
        print(f"lectern-transcode: error: {reason}", file=sys.stderr)
        if json_out:
            json_out.emit("failed", exitCode=code, reason=reason)
        if reporter:
            reporter.update(stage="failed")
    if reporter:
        reporter.close()
    write_termination_log(code, reason, video_url, hlsUrl=hls_url, posterUrl=poster_url)
    return code


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
