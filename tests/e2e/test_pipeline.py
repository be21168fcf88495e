"""The happy path through every process of the pipeline, and kubectl against the local stack.

The API's Node bullmq producer -> `lectern-intake` (the chart's Deployment's pod) ->
VideoTranscode -> `lectern-operator` (likewise) -> Job -> the real `lectern-transcode` in a pod
the node agent runs, downloading from and uploading to the Cloudinary emulator over https -> CR
status -> Lecture document, notifications, the BullMQ job's result; then the Job goes away by
the real TTL controller. The Kubernetes control plane is real (tests/e2e/stack.py); Cloudinary
and the node's container runtime stand in, MongoDB is FerretDB."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from bson import ObjectId

from tests.e2e.invariants import MATRIX, Invariants, Upload
from tests.e2e.stack import CLOUDINARY_FOLDER, NAMESPACE, RELEASE_NAMESPACE, ROOT, LectureWatch
from tests.standins.services import wait_until
from tests.transcoder.conftest import assert_streamable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

INSTRUCTOR = "instructor-42"


def api_uploads(stack, lecture_id: str, raw_url: str) -> None:
    """What the platform API does before it enqueues: the Lecture is AWAITING_MEDIA."""
    stack.lectures.update_one({"_id": ObjectId(lecture_id)},
                              {"$set": {"title": "Signals and Systems, lecture 7", "instructorId": INSTRUCTOR,
                                        "status": "AWAITING_MEDIA", "rawVideoUrl": raw_url}}, upsert=True)


def table_row(header: str, row: str) -> dict[str, str]:
    """One row of a kubectl table by its header's column offsets (headers such as `VIDEO URL`
    hold a space)."""
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [header[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
    return {n: row[a:b].strip() for n, a, b in zip(names, starts, starts[1:] + [None])}


def test_lecture_is_transcoded_end_to_end(stack, lecture_clip, tmp_path, request):
    row = MATRIX.row("none (happy path)", request)
    lecture_id = str(ObjectId())
    raw_url = stack.upload_raw(lecture_clip, lecture_id)
    assert raw_url.startswith(f"https://{stack.loopback}/")
    api_uploads(stack, lecture_id, raw_url)
    watch = LectureWatch(stack.lectures, ObjectId(lecture_id))
    uploads_before = stack.cloudinary.control.stats()["requests"].get("upload", 0)
    try:
        job_id = stack.producer.add({"lectureId": lecture_id, "rawVideoUrl": raw_url, "instructorId": INSTRUCTOR})

        # --- BullMQ: integer progress rising to 100, then completed with {lectureId, videoUrl}
        done = stack.events.wait(job_id, "completed", timeout=60)[0]
        video_url = done["returnvalue"]["videoUrl"]
        result = done["returnvalue"]  # the contract's two fields (the HLS ladder may add hlsUrl, posterUrl)
        assert {k: result[k] for k in ("lectureId", "videoUrl")} == {"lectureId": lecture_id, "videoUrl": video_url}
        assert all(result[k].startswith("https://") for k in set(result) - {"lectureId"}), result
        progress = stack.events.progress(job_id)
        assert progress and all(type(p) is int and 0 <= p <= 100 for p in progress), progress
        assert progress == sorted(set(progress)), progress  # strictly increasing: sent on change only
        assert progress[-1] == 100 and any(0 < p < 100 for p in progress), progress
        job = stack.producer.job(job_id)
        assert job["state"] == "completed" and job["attemptsMade"] == 1 and job["progress"] == 100

        # --- the Lecture: AWAITING_MEDIA -> PROCESSING -> READY, videoUrl set, raw kept
        doc = watch.wait_status("READY", 15)
    finally:
        statuses = watch.stop()
    assert statuses == ["AWAITING_MEDIA", "PROCESSING", "READY"], statuses
    assert doc["videoUrl"] == video_url and doc["rawVideoUrl"] == raw_url

    # --- the HLS ladder beside it (the chart's default): the same URLs in the Lecture, the
    # job's result and the CR; the master playlist and the poster served over https
    assert doc["hlsUrl"] == result["hlsUrl"] and doc["posterUrl"] == result["posterUrl"], doc
    master = stack.https_get(doc["hlsUrl"]).decode()
    assert master.startswith("#EXTM3U") and master.count("#EXT-X-STREAM-INF") == 2, master  # 720p, 480p
    assert "RESOLUTION=1280x720" in master and "RESOLUTION=854x480" in master, master
    assert stack.https_get(doc["posterUrl"])[:3] == b"\xff\xd8\xff"  # a JPEG

    # --- notifications: processing, progress..., exactly one VIDEO_READY, to the instructor
    ready = stack.notifications.wait(lecture_id, "VIDEO_READY", 15)
    msgs = stack.notifications.of(lecture_id)
    types = [m["type"] for m in msgs]
    assert types[0] == "VIDEO_PROCESSING" and types[-1] == "VIDEO_READY", types
    assert types.count("VIDEO_READY") == 1 and set(types[1:-1]) <= {"VIDEO_PROGRESS"}, types
    assert all(m["userId"] == INSTRUCTOR and m.get("message") for m in msgs), msgs
    assert ready["videoUrl"] == video_url and ready["hlsUrl"] == doc["hlsUrl"]
    assert [m["type"] for m in stack.finals_in_stream(lecture_id)] == ["VIDEO_READY"]

    # --- the VideoTranscode: Succeeded, 100 %, the transcoder's figures
    vt = stack.transcode_for(job_id)
    st = vt["status"]
    assert st["phase"] == "Succeeded" and st["progress"] == 100 and st["attempts"] == 1, st
    assert st["videoUrl"] == video_url and vt["spec"]["rawVideoUrl"] == raw_url
    report = st["report"]
    assert report["stage"] == "done" and report["videoUrl"] == video_url
    assert report["bytesDownloaded"] == lecture_clip.stat().st_size  # 720p: the c_limit rendition is the original
    assert abs(report["inputDurationSeconds"] - 4.0) < 0.5

    # --- the output: served at videoUrl over https, <=720p H.264/AAC faststart MP4, small
    assert f"/{CLOUDINARY_FOLDER}/{lecture_id}/" in video_url
    out = tmp_path / "out.mp4"
    out.write_bytes(stack.https_get(video_url))
    assert report["bytesUploaded"] >= out.stat().st_size  # the MP4, and the HLS ladder when there is one
    assert stack.cloudinary.control.stats()["requests"].get("upload", 0) - uploads_before >= 1
    info = assert_streamable(out)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"], video["codec_name"]) == (1280, 720, "h264")
    assert [s["codec_name"] for s in info["streams"] if s["codec_type"] == "audio"] == ["aac"]
    assert out.stat().st_size < lecture_clip.stat().st_size / 5

    # --- one pod, which ran the full transcode and left its scratch volume empty
    pods = stack.recorder.pods_for(st["jobName"])
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    log = stack.pod_log(pods[0])
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [e["mode"] for e in events if e.get("event") == "done"] == ["transcode"], log[-2000:]
    exits = [(r["exitCode"], r["files"]) for r in stack.leftovers() if r["pod"] == pods[0]["metadata"]["name"]]
    assert exits == [(0, [])], exits

    # --- the Job (and its pod) are deleted by ttlSecondsAfterFinished; the CR keeps the result
    job_uid = stack.recorder.jobs_for(vt["metadata"]["name"])[0]["metadata"]["uid"]
    wait_until(lambda: stack.recorder.job_deleted(job_uid), stack.job_ttl_seconds + 10, 0.1, "the Job's TTL")
    wait_until(lambda: not stack.pods_of(st["jobName"]), 10, 0.1, "the pod's garbage collection")
    assert stack.transcode_for(job_id)["status"]["phase"] == "Succeeded"

    check = Invariants(stack, [Upload(lecture_id, job_id, raw_url, "completed", statuses=statuses)])
    row.done(f"READY, 1 pod, {out.stat().st_size / lecture_clip.stat().st_size:.1%} of the raw size, "
             f"Job gone by TTL", check.all())


def test_kubectl_drives_the_local_stack(stack, lecture_clip):
    """The real kube-apiserver serves the chart's pods and the CRD: `kubectl get pods -n
    lectern-system` shows the operator and the intake Running; `kubectl apply` starts a
    transcode; `get` shows the printer columns with live values; `describe` shows the
    operator's events."""
    def kubectl(*args: str, stdin: str | None = None, namespace: str = NAMESPACE) -> str:
        proc = stack.kubectl("--namespace", namespace, *args, input=stdin, check=False)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    header, *rows = kubectl("get", "pods", namespace=RELEASE_NAMESPACE).splitlines()
    assert header.split()[:3] == ["NAME", "READY", "STATUS"], header
    running = {r.split()[0].rsplit("-", 2)[0]: r.split()[1:3] for r in rows}
    assert running == {"lectern-operator": ["1/1", "Running"], "lectern-intake": ["1/1", "Running"]}, rows
    nodes = kubectl("get", "nodes")
    assert re.search(rf"^{stack.cluster.node_name}\s+Ready\s", nodes, re.M), nodes
    assert "Server Version: v1.37.2" in kubectl("version"), "not the real kube-apiserver"

    lecture_id = str(ObjectId())
    raw_url = stack.upload_raw(lecture_clip, lecture_id)
    api_uploads(stack, lecture_id, raw_url)
    manifest = yaml.safe_load((ROOT / "examples" / "videotranscode.yaml").read_text())
    manifest["metadata"] = {"name": f"lecture-{lecture_id}", "labels": {"media.lectern.dev/lecture-id": lecture_id}}
    manifest["spec"].update(lectureId=lecture_id, instructorId=INSTRUCTOR, rawVideoUrl=raw_url)
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    name = manifest["metadata"]["name"]

    seen_running = []

    def phase() -> str:
        table = kubectl("get", "videotranscodes", name)
        seen_running.append(table)
        return table.split()[len(table.splitlines()[0].split()) + 2]  # the row's Phase cell
    wait_until(lambda: phase() == "Succeeded", 60, 0.3, f"{name} Succeeded")

    header, row = kubectl("get", "videotranscodes", name).splitlines()
    assert header.split() == ["NAME", "LECTURE", "PHASE", "PROGRESS", "ATTEMPTS", "AGE"], header
    cells = row.split()
    assert cells[:5] == [name, lecture_id, "Succeeded", "100", "1"], row
    wide_header, wide_row = kubectl("get", "vt", name, "-o", "wide").splitlines()
    wide = table_row(wide_header, wide_row)
    assert list(wide)[:8] == ["NAME", "LECTURE", "PHASE", "PROGRESS", "ATTEMPTS", "AGE", "JOB", "VIDEO URL"], wide_header
    video_url = stack.lectures.find_one({"_id": ObjectId(lecture_id)})["videoUrl"]
    assert wide["VIDEO URL"] == video_url and wide["JOB"] == stack.transcode(name)["status"]["jobName"], wide
    # The example lists only an mp4 output: HLS off, as before the ladder existed.
    assert wide["HLS URL"] in ("", "<none>"), wide
    assert "hlsUrl" not in stack.lectures.find_one({"_id": ObjectId(lecture_id)})
    assert "hlsUrl" not in stack.transcode(name)["status"]
    assert any(t.split()[len(t.splitlines()[0].split()) + 2] == "Running" for t in seen_running), seen_running

    described = kubectl("describe", "videotranscode", name)
    assert "Events:" in described
    for reason in ("Queued", "Started", "LectureUpdated", "Succeeded", "Notified"):
        assert f" {reason} " in described.split("Events:")[1], described[-2500:]
