"""The fake transcoder image's `lectern-transcode` (tests/cluster_fixtures.py): the real one's
command line and contract -- PATCH `status.report` of its CR with the pod's ServiceAccount
token (in-cluster login), a JSON termination message in /dev/termination-log, exit codes 0 / 65
/ 75 -- with a scripted behaviour read from `$LECTERN_FAKE_PLANS/<lectureId>.json`:
{"progress": [..], "interval": s, "hang": s, "exit": code, "reason": "...", "videoUrl": "...",
"cpuSeconds": s} (cpuSeconds: the figure to report, so a test can check it is relayed as is).
No plan: success at once. For operator tests about Kubernetes, not about ffmpeg."""

import json
import os
import ssl
import sys
import time
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def main() -> int:
    args = sys.argv[1:]
    output = args[1]
    lecture = args[args.index("--lecture-id") + 1]
    report_cr = args[args.index("--report-cr") + 1]
    plan_file = os.path.join(os.environ.get("LECTERN_FAKE_PLANS", "/nonexistent"), f"{lecture}.json")
    plan = json.load(open(plan_file)) if os.path.exists(plan_file) else {}
    assert os.environ.get("CLOUDINARY_URL"), "CLOUDINARY_URL from the Secret"
    assert os.path.isdir(os.environ["TMPDIR"]), "TMPDIR is the scratch emptyDir"
    # In a pod: the API server and the projected token; by hand (tests/transcoder/test_contract.py),
    # LECTERN_KUBE_API_URL, as the real one's transcoder/report.py.
    server = os.environ.get("LECTERN_KUBE_API_URL") or \
        f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt") if server.startswith("https:") else None
    started = time.monotonic()

    def report(**fields):
        pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME")
        if pod:
            fields.setdefault("pod", pod)
        fields.setdefault("cpuSeconds", plan.get("cpuSeconds", round(time.process_time(), 3)))
        headers = {"Content-Type": "application/merge-patch+json"}
        if os.path.exists(f"{SA}/token"):
            headers["Authorization"] = "Bearer " + open(f"{SA}/token").read().strip()
        req = urllib.request.Request(server + report_cr + "/status", method="PATCH",
                                     data=json.dumps({"status": {"report": fields}}).encode(), headers=headers)
        try:
            urllib.request.urlopen(req, timeout=5, context=ctx).read()
        except Exception as exc:  # best-effort, as the real one
            print("report failed:", exc, flush=True)

    report(stage="downloading", progress=0, bytesDownloaded=0)
    for p in plan.get("progress", []):
        report(stage="encoding", progress=p, bytesDownloaded=4_000_000, inputDurationSeconds=120.0, speed=4.0)
        time.sleep(plan.get("interval", 0.05))
    if plan.get("hang"):
        time.sleep(plan["hang"])
    code = plan.get("exit", 0)
    video = None
    if code == 0:
        video = plan.get("videoUrl") or f"https://res.cloudinary.com/demo/video/upload/{output.split(':', 1)[1]}.mp4"
        report(stage="done", progress=100, videoUrl=video, bytesUploaded=1_000_000, speed=4.0,
               bytesDownloaded=4_000_000, inputDurationSeconds=120.0)
    elif code == 65:
        report(stage="failed")
    record = {"exitCode": code, "reason": plan.get("reason", "ok" if code == 0 else "error")}
    if video:
        record["videoUrl"] = video
    with open(os.environ.get("LECTERN_TERMINATION_LOG", "/dev/termination-log"), "w") as f:
        f.write(json.dumps(record) + "\n")
    print(f"done in {time.monotonic() - started:.2f}s exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
