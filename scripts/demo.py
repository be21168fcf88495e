"""`make demo`: the whole Lectern pipeline on this machine, told as it happens. One lecture
video goes from the platform API's queue to a READY Lecture with a small 720p streaming MP4.

    .venv/bin/python scripts/demo.py [--video PATH] [--duration 30] [--size 1280x720]
    make demo [VIDEO=path/to/lecture.mp4]

Every component runs as its own process (tests/e2e/stack.py, `LocalStack`): redis-server,
MongoDB (FerretDB on SQLite), the Cloudinary emulator (https delivery on a throw-away CA), a real
Kubernetes v1.37.2 control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
built from their Go modules by hack/build.py) with our node agent as its one node, the chart
installed with the real `helm` (the operator and the intake run as its Deployments' pods), and
the real Node bullmq producer and QueueEvents listener the platform API uses. The Job's pod runs
the real `lectern-transcode`. The demo shows `kubectl get nodes` and the release's pods, does
what the API does (upload the raw video, insert the Lecture, `queue.add`), shows the progress as
the API, the cluster and MongoDB see it, then prints the Lecture, the output file (kept in
demo-output/), raw vs output, the notifications and `kubectl get videotranscodes -o wide`.
Everything is torn down at the end, also on Ctrl-C, SIGTERM or a failure."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from demo_common import DemoError, comparison, generate_sample, mb, probe  # scripts/, beside this file

ROOT = Path(__file__).resolve().parent.parent
# `tests.*` (the local stack) come from the checkout. Appended, not prepended: the repo root's
# `operator/` folder must never shadow the stdlib module.
sys.path.append(str(ROOT))

NS = "lectern"                  # the transcode namespace the chart watches
RELEASE_NS = "lectern-system"   # the chart's release namespace (operator, intake)
INSTRUCTOR = "instructor-42"
T0 = time.monotonic()

STAGES = {
    "downloading": "the raw upload, as a <=1280 px rendition Cloudinary scales on delivery (c_limit)",
    "probing": "ffprobe: is it a usable video?",
    "encoding": "ffmpeg -> 720p H.264 + AAC, +faststart",
    "uploading": "upload_large to Cloudinary",
    "done": "",
    "failed": "",
}


def say(msg: str = "", indent: int = 0) -> None:
    stamp = f"[{time.monotonic() - T0:6.1f}s] " if msg else ""
    print(f"{stamp}{' ' * indent}{msg}", flush=True)


def event(who: str, msg: str) -> None:
    say(f"{who:<9} {msg}", 2)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM (e.g. a CI timeout): stop the story, tear everything down."""


def _on_signal(*_: object) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second one must not cut the teardown short
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted


# ----- before anything starts ------------------------------------------------------------------
def check_video(path: Path) -> Path:
    """The user's file: it must exist, be readable and hold a video stream."""
    if not path.exists():
        raise DemoError(f"{path}: no such file")
    if not path.is_file():
        raise DemoError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise DemoError(f"{path}: cannot read it ({exc.strerror})") from None
    probe(path)
    return path.resolve()


def check_prerequisites() -> None:
    venv_bin = Path(sys.executable).parent
    missing = [tool for tool in ("ffmpeg", "ffprobe", "redis-server", "openssl", "node") if not shutil.which(tool)]
    missing += [s for s in ("lectern-transcode", "lectern-intake", "lectern-operator")
                if not (venv_bin / s).exists()]
    if not (ROOT / "tests" / "node" / "node_modules" / "bullmq").is_dir():
        missing.append("tests/node/node_modules")
    if missing:
        raise DemoError(f"missing: {', '.join(missing)} (`make demo` installs them)")


class Kubectl:
    """The real kubectl (hack/tools.py) against the local cluster, as its admin."""

    def __init__(self, stack) -> None:
        from hack.tools import ensure_tools

        self.bin = str(ensure_tools()["kubectl"])
        self.env = stack.tool_env()

    def show(self, *args: str, indent: int = 2) -> None:
        say(f"$ kubectl {' '.join(args)}", indent)
        try:
            proc = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True, timeout=30)
            text = proc.stdout if proc.returncode == 0 else proc.stderr
        except subprocess.TimeoutExpired:
            text = "(kubectl timed out)"
        for line in text.rstrip().splitlines():
            print(" " * (indent + 9) + line, flush=True)


# ----- the story -------------------------------------------------------------------------------
def run(args: argparse.Namespace, tmp: Path) -> int:
    from tests.e2e.stack import LocalStack

    # 1. The instructor's recording.
    if args.video:
        clip = args.video
        say(f"The lecture: {clip}")
    else:
        clip = tmp / "lecture-raw.mp4"
        say(f"Generating a {args.duration:g} s {args.size} lecture recording (slides, speaker inset, "
            "speech-like audio)...")
        generate_sample(clip, args.duration, args.size, preset="ultrafast")
    src = probe(clip)
    say(f"raw recording: {src['res']}, {src['duration']:.1f} s, {mb(src['size'])} ({src['kbps']} kbit/s, "
        f"{src['video']} / {src['audio']})", 2)

    # 2. Every process of the pipeline.
    print()
    say("Starting the pipeline, every component its own process:")
    stack_dir = tmp / "stack"
    stack = LocalStack(stack_dir, say=lambda m: say(m, 2), max_concurrent=2, job_ttl_seconds=600).__enter__()
    try:
        return story(args, stack, clip, src, tmp)
    except Exception as exc:  # noqa: BLE001 - say what broke, with the logs, then tear down
        if not isinstance(exc, DemoError):
            traceback.print_exc()
        print(f"\ndemo: {exc}\n\nthe logs of the services and pods (tails):", file=sys.stderr)
        try:
            print(stack.logs(), file=sys.stderr)
        except Exception as log_exc:  # noqa: BLE001 - the cluster may be what broke
            print(f"(cannot read them from the cluster: {log_exc})", file=sys.stderr)
            dump_log_files(stack_dir)
        return 1
    finally:
        say("Stopping every process...")
        try:
            stack.close()
        except Exception as exc:  # noqa: BLE001 - the rest was stopped; say what did not go quietly
            print(f"demo: while stopping: {type(exc).__name__}: {exc}", file=sys.stderr)


def story(args: argparse.Namespace, stack, clip: Path, src: dict, tmp: Path) -> int:
    from bson import ObjectId

    from tests.e2e.stack import LectureWatch

    try:
        kubectl: Kubectl | None = Kubectl(stack)
    except Exception as exc:  # noqa: BLE001 - the story goes on without it
        say(f"(kubectl is not available: {exc})", 2)
        kubectl = None
    if kubectl:
        print()
        say("The cluster, as its admin sees it (the real kube-apiserver):")
        kubectl.show("get", "nodes")
        kubectl.show("get", "pods", "-n", RELEASE_NS, "-o", "wide")

    # 3. What the platform API does with an upload.
    lecture_id = str(ObjectId())
    print()
    say("The platform API receives the upload:")
    raw_url = stack.upload_raw(clip, lecture_id)
    event("API", f"cloudinary.uploader.upload_large -> {raw_url}")
    stack.lectures.insert_one({"_id": ObjectId(lecture_id), "title": "Signals and Systems, lecture 7",
                               "instructorId": INSTRUCTOR, "status": "AWAITING_MEDIA", "rawVideoUrl": raw_url})
    event("MongoDB", f"Lecture {lecture_id} inserted: status AWAITING_MEDIA")
    watch = LectureWatch(stack.lectures, ObjectId(lecture_id), interval=0.05)
    job_id = stack.producer.add({"lectureId": lecture_id, "rawVideoUrl": raw_url, "instructorId": INSTRUCTOR})
    event("API", f"queue.add('transcode', {{lectureId, rawVideoUrl, instructorId}}) on video-queue -> "
                 f"BullMQ job {job_id}")
    print()
    say("What happens next, as the API, the cluster and MongoDB see it:")
    try:
        outcome, vt_name = follow(args, stack, kubectl, watch, job_id, lecture_id)
    finally:
        watch.stop()

    # 4. The result.
    doc = watch.last or stack.lectures.find_one({"_id": ObjectId(lecture_id)})
    print()
    say("The Lecture document in MongoDB:")
    for line in json.dumps(doc, indent=2, default=str).splitlines():
        print(" " * 11 + line)
    print()
    say(f"Notifications to {INSTRUCTOR} (Redis `notifications`, what the Socket.IO server relays):")
    notes = stack.notifications.of(lecture_id)
    for n in notes:
        print(f"{'':11}{n['type']:<17} {n['message']}")
    print()
    say("The VideoTranscode, as an operator sees it:")
    if kubectl:
        kubectl.show("get", "videotranscodes", "-n", NS, "-o", "wide")
    else:
        vt = stack.transcode(vt_name) or {}
        print(f"{'':11}{vt_name}: {json.dumps((vt.get('status') or {}).get('phase'))}")

    if outcome["event"] != "completed" or doc.get("status") != "READY":
        raise DemoError(f"the transcode failed: {outcome.get('failedReason') or doc.get('failureReason')}; "
                        f"Lecture {doc.get('status')}, the player falls back to {raw_url}")

    out_dir = args.output_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"{lecture_id}.mp4"
    out_file.write_bytes(stack.https_get(doc["videoUrl"]))  # what a student's player downloads
    out = probe(out_file)
    vt = stack.transcode(vt_name) or {}
    cost = (vt.get("status") or {}).get("cost") or {}
    cdn = stack.cloudinary.control.stats()
    print()
    say("What a student streams instead of the raw upload:")
    for line in comparison([("raw upload", src), ("Lectern", out)]):
        print(" " * 11 + line)
    print(f"{'':11}transcode: {cost.get('cpuSeconds') or 0:.1f} CPU-s, {cost.get('speed') or 0:.2f}x realtime, "
          f"{cost.get('wallSeconds') or 0:.1f} s in the pod; CDN: {cdn['requests'].get('upload', 0)} upload and "
          f"{cdn['requests'].get('delivery', 0)} delivery requests, {mb(cdn['bytes_served'])} served")
    if doc.get("hlsUrl"):
        from demo_ladder import describe_ladder

        print()
        say("The adaptive-streaming ladder beside it (what hls.js plays, switching by bandwidth):")
        for line in describe_ladder(doc["hlsUrl"], doc.get("posterUrl"), fetch=stack.https_get):
            print(" " * 11 + line)
    shown = out_file.relative_to(ROOT) if out_file.is_relative_to(ROOT) else out_file
    print()
    say(f"Lecture {lecture_id} is READY; the output file: {shown} ({mb(out['size'])}, kept)")
    return 0


def follow(args: argparse.Namespace, stack, kubectl: Kubectl | None, watch, job_id: str,
           lecture_id: str) -> tuple[dict, str]:
    """Prints what happens until the BullMQ job is completed or failed, then until the Lecture
    and the final notification follow. Returns (the BullMQ outcome event, the CR's name)."""
    deadline = time.monotonic() + args.timeout
    seen_events = seen_notes = seen_statuses = 0
    vt_name: str | None = None
    phase = stage = None
    pod_lines: dict[str, int] = {}
    outcome: dict | None = None
    settle_until: float | None = None

    def pods() -> None:
        for job in {st.get("jobName")} - {None}:
            for pod in stack.recorder.pods_for(job):
                name = pod["metadata"]["name"]
                lines = stack.pod_log(pod).splitlines()
                if name not in pod_lines:
                    pod_lines[name] = 0
                    event("node", f"pod {name} runs lectern-transcode")
                for line in lines[pod_lines[name]:]:
                    show_pod_line(line)
                pod_lines[name] = max(pod_lines[name], len(lines))

    st: dict = {}
    while True:
        now = time.monotonic()
        if now > deadline:
            raise DemoError(f"no result within {args.timeout:g} s (--timeout)")
        if vt_name is None:
            items = stack.transcodes(f"media.lectern.dev/queue-job-id={job_id}")
            if items:
                vt_name = items[0]["metadata"]["name"]
                event("intake", f"VideoTranscode {vt_name} created (media.lectern.dev/v1alpha1)")
        if vt_name is not None:
            try:
                st = (stack.transcode(vt_name) or {}).get("status") or {}
            except OSError:  # a slow answer: the next pass asks again
                pass
            if st.get("phase") and st["phase"] != phase:
                phase = st["phase"]
                job = f", Job {st['jobName']}" if st.get("jobName") and phase == "Running" else ""
                event("operator", f"VideoTranscode phase {phase}{job}"
                      + (f": {st['message']}" if st.get("message") and phase != "Running" else ""))
                if phase == "Running" and kubectl:
                    kubectl.show("get", "videotranscodes", "-n", NS, indent=12)
            report = st.get("report") or {}
            if report.get("stage") and report["stage"] != stage:
                stage = report["stage"]
                why = STAGES.get(stage, "")
                event("pod", f"status.report stage {stage}" + (f" ({why})" if why else ""))
            pods()
        for status in watch.statuses[seen_statuses:]:
            if seen_statuses or status != "AWAITING_MEDIA":
                event("MongoDB", f"Lecture status -> {status}")
            seen_statuses += 1
        events = stack.events.of(job_id)
        for e in events[seen_events:]:
            if e["event"] == "progress" and isinstance(e.get("data"), int):
                p = e["data"]
                event("BullMQ", f"progress {p:>3}% {'#' * (p // 5):<20}|")
            elif e["event"] == "active":
                event("BullMQ", f"job {job_id} active (lectern-intake took it)")
            elif e["event"] == "completed":
                event("BullMQ", f"job {job_id} completed: {json.dumps(e['returnvalue'])}")
                outcome = e
            elif e["event"] == "failed":
                event("BullMQ", f"job {job_id} failed: {e.get('failedReason')}")
                outcome = e
        seen_events = len(events)
        notes = stack.notifications.of(lecture_id)
        for n in notes[seen_notes:]:
            event("notify", f"{n['type']} -> {n['userId']}: {n['message']}")
        seen_notes = len(notes)
        if outcome is not None:
            # The Lecture write and the final notification follow the CR: wait for them a little.
            final = "READY" if outcome["event"] == "completed" else "FAILED"
            done = (watch.statuses and watch.statuses[-1] == final
                    and stack.notifications.of(lecture_id, f"VIDEO_{final}"))
            settle_until = settle_until or now + 30
            if done or now > settle_until:
                if vt_name:
                    pods()  # the pod's last lines (its `done`)
                return outcome, vt_name or "?"
        time.sleep(0.1)


def show_pod_line(line: str) -> None:
    """The pod's own JSON log lines: what it decided to do, what it retried, how it ended."""
    try:
        e = json.loads(line)
    except ValueError:
        return
    if not isinstance(e, dict):
        return
    if e.get("event") == "plan":
        event("pod", f"plan: {e.get('mode')} {e.get('codec')} {e.get('input')} -> h264 {e.get('output')} "
                     f"({e.get('why')}; audio {e.get('audio')}, {e.get('threads')} threads)")
    elif e.get("event") == "retry":
        event("pod", f"retry in {e.get('stage')}: {e.get('reason')}")
    elif e.get("event") == "done":
        event("pod", f"done: {e.get('mode')} {e.get('width')}x{e.get('height')}, {mb(e.get('outputBytes') or 0)} "
                     f"in {e.get('seconds')} s")
    elif e.get("event") == "failed":
        event("pod", f"failed (exit {e.get('exitCode')}): {e.get('reason')}")


def dump_log_files(workdir: Path) -> None:
    """The tails of the log files the processes left (when the stack itself did not come up)."""
    for log in sorted(workdir.rglob("*.log")):
        text = log.read_text(errors="replace")[-2000:].strip()
        if text:
            print(f"----- {log.relative_to(workdir)} -----\n{text}", file=sys.stderr)


# ----- entry -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, help="your own lecture video instead of a generated one")
    p.add_argument("--duration", type=float, default=30, help="seconds of generated lecture (default 30)")
    # 720p at a camera's bitrate: the CDN's <=1280 px rendition is the original, so the pod
    # downloads it all and Lectern's own ffmpeg encode does the work. (A 1080p upload arrives
    # as Cloudinary's H.264 rendition, which is usually compliant already and only remuxed.)
    p.add_argument("--size", default="1280x720", help="WxH of the generated lecture (default 1280x720)")
    p.add_argument("--output-dir", type=Path, default=ROOT / "demo-output",
                   help="where the transcoded MP4 is kept (default demo-output/)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the result (default 300)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.video is not None:
            args.video = check_video(args.video)
        check_prerequisites()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print("Lectern, the whole pipeline on this machine: API upload + queue.add -> intake -> VideoTranscode "
          "-> operator -> Job -> lectern-transcode -> Cloudinary -> Lecture READY + notifications\n", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="lectern-demo-"))
    try:
        return run(args, tmp)
    except DemoError as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        dump_log_files(tmp)
        return 1
    except (Interrupted, KeyboardInterrupt):
        print("\ndemo: interrupted; tearing down", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - say what broke, with the logs, then clean up
        traceback.print_exc()
        dump_log_files(tmp)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # let the clean-up finish
            signal.signal(sig, signal.SIG_IGN)
        shutil.rmtree(tmp, ignore_errors=True)
        say("Everything stopped; temporary files removed.")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # the story and the errors interleave in order
    sys.exit(main())
