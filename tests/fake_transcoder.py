"""A stand-in for `lectern-transcode` run by the local kubelet: same arguments and contract
(PATCH status.report on the CR, a JSON termination message, the exit codes), scripted by a
JSON plan: {"progress": [..], "interval": s, "hang": s, "exit": code, "reason": "..."}."""

import json
import os
import sys
import time
import urllib.request


def main() -> int:
    plan = json.loads(sys.argv[1])
    args = sys.argv[2:]
    output = args[1]
    report_cr = args[args.index("--report-cr") + 1]
    api = os.environ.get("LECTERN_KUBE_API_URL", "")
    assert os.environ.get("CLOUDINARY_URL"), "CLOUDINARY_URL from the Secret"
    assert os.path.isdir(os.environ["TMPDIR"]), "TMPDIR is the scratch emptyDir"
    started = time.monotonic()

    def report(**fields):
        fields.setdefault("pod", os.environ.get("POD_NAME"))
        fields.setdefault("cpuSeconds", round(time.process_time() + 1.0, 3))
        body = json.dumps({"status": {"report": fields}}).encode()
        req = urllib.request.Request(api + report_cr + "/status", data=body, method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json"})
        try:
            urllib.request.urlopen(req, timeout=5).read()
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
        video = f"https://res.cloudinary.com/demo/video/upload/{output.split(':', 1)[1]}.mp4"
        report(stage="done", progress=100, videoUrl=video, bytesUploaded=1_000_000, speed=4.0,
               bytesDownloaded=4_000_000, inputDurationSeconds=120.0)
    elif code == 65:
        report(stage="failed")
    with open(os.environ["LECTERN_TERMINATION_LOG"], "w") as f:
        f.write(json.dumps({"exitCode": code, "reason": plan.get("reason", "ok" if code == 0 else "error"),
                            "videoUrl": video}))
    print(f"done in {time.monotonic() - started:.2f}s exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
