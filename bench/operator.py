"""Operator benchmark: N VideoTranscodes against the API-server emulator.

    .venv/bin/python -m bench.operator [--count 2000] [--cap 100]

The operator runs as its own process (`lectern-operator`, so its RSS is its own) against the
emulator, real Redis and FerretDB. The driver plays kubelet + transcoder: for every Job that
appears it patches a progress report into the CR (timing report -> notification on the
`notifications` channel), then the final report and the Job's Complete condition. Measured:
time until every Job existed and every CR Succeeded, the most Jobs running at once (must never
exceed the cap), the operator's peak RSS (VmHWM) and the report -> notification lag.
Results go to stdout and, with --write, to bench/OPERATOR_RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymongo
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.standins.kube import KubeEmulator  # noqa: E402
from tests.standins.services import MongoServer, RedisServer  # noqa: E402

NS = "lectern"


def rss_peak_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--cap", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the servers on kill

    work = Path(tempfile.mkdtemp(prefix="lectern-bench-"))
    kube = KubeEmulator(record_requests=False).start()
    redis_srv = RedisServer(workdir=work / "redis", appendonly=False)
    (work / "redis").mkdir()
    mongo = MongoServer(workdir=work / "mongo")
    (work / "mongo").mkdir()
    redis_srv.start()
    mongo.start()
    op = None
    try:
        kube.register_crd(ROOT / "crds" / "videotranscodes.media.lectern.dev.yaml")
        kube.ensure_namespace(NS)
        coll = pymongo.MongoClient(mongo.url)["lectern"]["lectures"]
        coll.insert_many([{"_id": f"lec{i:05d}", "status": "AWAITING_MEDIA",
                           "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/lec{i:05d}.mov"}
                          for i in range(args.count)])
        env = {**os.environ, "LECTERN_KUBE_API_URL": kube.url, "LECTERN_NAMESPACES": NS,
               "LECTERN_STANDALONE": "true", "LECTERN_MAX_CONCURRENT": str(args.cap),
               "LECTERN_MONGO_URL": mongo.url, "LECTERN_REDIS_URL": redis_srv.url,
               "LECTERN_METRICS_PORT": "0", "LECTERN_HEALTH_PORT": "0", "LECTERN_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
               "PYTHONUNBUFFERED": "1"}
        log = open(work / "operator.log", "wb")
        op = subprocess.Popen([str(Path(sys.executable).with_name("lectern-operator"))], env=env,
                              stdout=log, stderr=subprocess.STDOUT)

        # Notifications subscriber (what the Socket.IO server runs).
        r = redis.Redis.from_url(redis_srv.url)
        ps = r.pubsub()
        ps.subscribe("notifications")
        progress_seen: dict[str, float] = {}
        finals: dict[str, int] = {}
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                m = ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if m and m["type"] == "message":
                    msg = json.loads(m["data"])
                    if msg["type"] == "VIDEO_PROGRESS" and msg["progress"] == 50:
                        progress_seen.setdefault(msg["lectureId"], time.monotonic())
                    elif msg["type"] in ("VIDEO_READY", "VIDEO_FAILED"):
                        finals[msg["lectureId"]] = finals.get(msg["lectureId"], 0) + 1
        threading.Thread(target=listen, daemon=True).start()

        new_jobs: queue.Queue = queue.Queue()
        kube.subscribe(lambda etype, obj, old: new_jobs.put(obj) if etype == "ADDED" and obj.get("kind") == "Job" else None)

        time.sleep(2)  # operator up
        t0 = time.monotonic()
        for i in range(args.count):
            kube.create({"apiVersion": "media.lectern.dev/v1alpha1", "kind": "VideoTranscode",
                         "metadata": {"name": f"vt-{i:05d}", "namespace": NS},
                         "spec": {"lectureId": f"lec{i:05d}", "instructorId": "bench",
                                  "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/lec{i:05d}.mov"}})
        t_created = time.monotonic() - t0

        reported: dict[str, tuple[float, str, str]] = {}   # lecture -> (t_report, cr, job)
        finished: set[str] = set()
        jobs_seen = 0
        t_all_jobs = None
        max_active = 0
        active: set[str] = set()
        deadline = time.monotonic() + args.timeout
        while len(finished) < args.count and time.monotonic() < deadline:
            while True:
                try:
                    job = new_jobs.get_nowait()
                except queue.Empty:
                    break
                jobs_seen += 1
                cr = job["metadata"]["labels"]["media.lectern.dev/transcode"]
                lid = job["metadata"]["labels"]["media.lectern.dev/lecture-id"]
                active.add(lid)
                max_active = max(max_active, len(active))
                kube.patch("vt", cr, {"status": {"report": {"stage": "encoding", "progress": 50}}}, NS, subresource="status")
                reported[lid] = (time.monotonic(), cr, job["metadata"]["name"])
                if jobs_seen == args.count:
                    t_all_jobs = time.monotonic() - t0
            now = time.monotonic()
            for lid, (t_rep, cr, job_name) in list(reported.items()):
                if lid in finished:
                    continue
                if lid in progress_seen or now - t_rep > 5:
                    kube.patch("vt", cr, {"status": {"report": {"stage": "done", "progress": 100, "cpuSeconds": 60.0,
                                                                "videoUrl": f"https://res.cloudinary.com/demo/video/upload/{lid}.mp4"}}},
                               NS, subresource="status")
                    kube.patch("jobs", job_name, {"status": {"conditions": [{"type": "Complete", "status": "True"}],
                                                             "succeeded": 1}}, NS, subresource="status")
                    finished.add(lid)
                    active.discard(lid)
            time.sleep(0.02)
        # wait for the operator to mark them all Succeeded
        while time.monotonic() < deadline:
            phases = [o["status"].get("phase") for o in kube.list("vt", NS)]
            if phases.count("Succeeded") == args.count:
                break
            time.sleep(0.5)
        t_done = time.monotonic() - t0
        time.sleep(3)
        hwm, rss = rss_peak_mb(op.pid)
        lags = sorted(progress_seen[l] - reported[l][0] for l in progress_seen if l in reported)
        dup_finals = sum(1 for v in finals.values() if v > 1)
        ready_docs = coll.count_documents({"status": "READY"})
        result = {
            "count": args.count, "cap": args.cap,
            "create_seconds": round(t_created, 1),
            "all_jobs_seconds": round(t_all_jobs, 1) if t_all_jobs else None,
            "all_succeeded_seconds": round(t_done, 1),
            "jobs_created": jobs_seen, "max_jobs_running_at_once": max_active,
            "operator_peak_rss_mb": round(hwm, 1), "operator_rss_end_mb": round(rss, 1),
            "lag_p50_s": round(statistics.median(lags), 3) if lags else None,
            "lag_p95_s": round(lags[int(len(lags) * 0.95) - 1], 3) if lags else None,
            "lag_max_s": round(lags[-1], 3) if lags else None,
            "progress_notifications_measured": len(lags),
            "final_notifications": len(finals), "duplicate_finals": dup_finals,
            "lectures_ready": ready_docs,
        }
        print(json.dumps(result, indent=2))
        if args.write:
            write_results(result)
        stop.set()
        ok = (jobs_seen == args.count and max_active <= args.cap and dup_finals == 0)
        return 0 if ok else 1
    finally:
        if op is not None:
            op.terminate()
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()
        kube.stop()
        redis_srv.stop()
        mongo.stop()


def write_results(r: dict) -> None:
    path = ROOT / "bench" / "OPERATOR_RESULTS.md"
    cpu = os.cpu_count()
    path.write_text(f"""# Operator benchmark

`python -m bench.operator --count {r['count']} --cap {r['cap']} --write` ({time.strftime('%Y-%m-%d')}, {cpu} CPUs shared,
operator as its own process with default settings, against the API-server emulator
(tests/standins/kube.py), real Redis and FerretDB). The driver finishes every Job as it appears
(progress report 50 % -> waits for the progress notification -> final report + Job Complete).

| figure | value | target |
| --- | --- | --- |
| CRs created | {r['count']} in {r['create_seconds']} s | |
| every Job created (within the cap) | {r['all_jobs_seconds']} s | |
| every CR `Succeeded` | {r['all_succeeded_seconds']} s | |
| Jobs running at once, max | {r['max_jobs_running_at_once']} (cap {r['cap']}) | ≤ cap |
| operator peak RSS (VmHWM) | {r['operator_peak_rss_mb']} MB (end: {r['operator_rss_end_mb']} MB) | ≤ 200 MB |
| report → notification lag p50 / p95 / max | {r['lag_p50_s']} / {r['lag_p95_s']} / {r['lag_max_s']} s ({r['progress_notifications_measured']} measured) | ≤ 2 s |
| final notifications / duplicates | {r['final_notifications']} / {r['duplicate_finals']} | one each |
| Lectures READY | {r['lectures_ready']} | {r['count']} |

The lag is bounded by `LECTERN_RECONCILE_INTERVAL_SECONDS` (default 1 s: a running transcode's
report is read at most that long after it changed) plus the API round trips.
""")


if __name__ == "__main__":
    raise SystemExit(main())
