"""The invariants every end-to-end scenario must hold, and the fault matrix they fill in.

    row = MATRIX.row("operator killed mid-encode", request)
    ...                                     # the scenario
    check = Invariants(stack, [Upload(lecture_id, job_id, raw_url, expect="READY")])
    check.all()                             # raises AssertionError naming the broken invariant
    row.done("READY, 1 Job, restarted operator adopted it", check.names)

The invariants (the failure model of docs/architecture.md):

* **no lost job**: every BullMQ job the API added ends `completed` or `failed` as expected;
* **no duplicate CR / Job**: at most one VideoTranscode per job and one Job per VideoTranscode
  ever (the recorder sees Jobs that the TTL already deleted);
* **one final notification**: exactly one `VIDEO_READY`/`VIDEO_FAILED` per finished lecture on
  pub/sub (when the subscriber was connected) and in `notifications:stream`;
* **no leaked temp file**: every transcoder container that exited on its own (not SIGKILLed)
  left its scratch volume empty (the node agent records what each container exit left in its
  emptyDirs, `records.jsonl`), and the CDN holds no half-finished upload;
* **Lecture never regressed**: the statuses it went through follow the state machine, and a
  transcode only ever wrote the Lecture for the raw upload it processed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.e2e.stack import NAMESPACE, LocalStack

# The operator's transitions. The API's own write when an instructor uploads again (whatever
# the status was, the Lecture goes back to AWAITING_MEDIA with the new rawVideoUrl) is allowed
# only for a lecture the scenario uploaded more than once: anywhere else it is a regression.
OPERATOR_STEPS = {("AWAITING_MEDIA", "PROCESSING"), ("PROCESSING", "READY"), ("PROCESSING", "FAILED"),
                  ("READY", "PROCESSING"), ("FAILED", "PROCESSING")}
REUPLOAD_STEPS = {("PROCESSING", "AWAITING_MEDIA"), ("READY", "AWAITING_MEDIA"), ("FAILED", "AWAITING_MEDIA")}
FINALS = ("VIDEO_READY", "VIDEO_FAILED")


@dataclass
class Row:
    test: str
    fault: str
    outcome: str = "did not finish"
    invariants: list[str] = field(default_factory=list)
    held: bool | None = None

    def done(self, outcome: str, invariants: list[str]) -> None:
        self.outcome, self.invariants, self.held = outcome, list(invariants), True


class Matrix(list):
    def row(self, fault: str, request) -> Row:
        r = Row(request.node.nodeid, fault)
        self.append(r)
        return r

    def table(self) -> list[str]:
        head = ("fault", "outcome", "invariants held")
        ordered = sorted(self, key=lambda r: not r.fault.startswith("none"))  # the happy path first
        rows = [(r.fault, r.outcome, ("yes: " + ", ".join(r.invariants)) if r.held else "NO (test failed)")
                for r in ordered]
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(2)]
        fmt = f"{{:<{widths[0]}}} | {{:<{widths[1]}}} | {{}}"
        return [fmt.format(*head), "-" * (widths[0] + widths[1] + 24)] + [fmt.format(*r) for r in rows]


MATRIX = Matrix()


@dataclass
class Upload:
    """One `queue.add` of the scenario and how it must end."""
    lecture_id: str
    job_id: str
    raw_url: str
    expect: str                      # "completed" | "failed"
    expect_cr: bool = True           # False: refused before a CR (bad payload, SSRF)
    superseded: bool = False         # a newer upload of the same lecture took over
    statuses: list[str] | None = None  # the Lecture statuses a LectureWatch saw


class Invariants:
    def __init__(self, stack: LocalStack, uploads: list[Upload], *, pubsub_complete: bool = True) -> None:
        self.stack, self.uploads, self.pubsub_complete = stack, uploads, pubsub_complete
        self.names: list[str] = []

    def all(self) -> list[str]:
        for check in (self.no_lost_job, self.no_duplicate_cr_or_job, self.one_final_notification,
                      self.no_leaked_temp_file, self.lecture_never_regressed):
            check()
        return self.names

    def no_lost_job(self) -> None:
        for u in self.uploads:
            job = self.stack.producer.job(u.job_id)
            assert job is not None, f"lost job: BullMQ job {u.job_id} is gone"
            assert job["state"] == u.expect, f"job {u.job_id}: {job['state']} != {u.expect}: {job.get('failedReason')}"
            ends = [e["event"] for e in self.stack.events.of(u.job_id) if e["event"] in ("completed", "failed")]
            assert ends[-1:] == [u.expect] and ends.count("completed") <= 1, f"job {u.job_id} events {ends}"
        self.names.append("no lost job")

    def no_duplicate_cr_or_job(self) -> None:
        for u in self.uploads:
            crs = self.stack.transcodes(f"media.lectern.dev/queue-job-id={u.job_id}")
            if not u.expect_cr or u.superseded:
                assert len(crs) == 0, f"job {u.job_id}: {len(crs)} VideoTranscodes left"
            else:
                assert len(crs) == 1, f"job {u.job_id}: {len(crs)} VideoTranscodes"
                jobs = self.stack.recorder.jobs_for(crs[0]["metadata"]["name"])
                assert len(jobs) == 1, f"{crs[0]['metadata']['name']}: {len(jobs)} Jobs ever created"
        self.names.append("no duplicate CR/Job")

    def one_final_notification(self) -> None:
        for lecture_id in {u.lecture_id for u in self.uploads if u.expect_cr}:
            ups = [u for u in self.uploads if u.lecture_id == lecture_id and not u.superseded]
            stream = [m["type"] for m in self.stack.finals_in_stream(lecture_id)]
            assert len(stream) == len(ups), f"lecture {lecture_id}: finals in the stream {stream}"
            pubsub = [m["type"] for m in self.stack.notifications.of(lecture_id) if m["type"] in FINALS]
            assert len(pubsub) <= len(ups) and (len(pubsub) == len(ups) or not self.pubsub_complete), \
                f"lecture {lecture_id}: finals on pub/sub {pubsub}"
        self.names.append("one final notification")

    def no_leaked_temp_file(self) -> None:
        left = [r for r in self.stack.leftovers() if r["files"] and r["exitCode"] != 137]
        assert not left, f"temp files left in scratch volumes: {left}"
        stats = self.stack.cloudinary.control.stats()
        assert not stats.get("temp_files") and not stats.get("uploads_in_progress"), f"CDN leftovers: {stats}"
        self.names.append("no leaked temp file")

    def lecture_never_regressed(self) -> None:
        for u in self.uploads:
            if u.statuses is None:
                continue
            reuploaded = sum(1 for other in self.uploads if other.lecture_id == u.lecture_id) > 1
            allowed = OPERATOR_STEPS | (REUPLOAD_STEPS if reuploaded else set())
            steps = list(zip(u.statuses, u.statuses[1:]))
            bad = [s for s in steps if s not in allowed]
            assert not bad, f"lecture {u.lecture_id}: transitions {bad} in {u.statuses}"
        for lecture_id in {u.lecture_id for u in self.uploads}:
            doc = self.stack.lectures.find_one({"_id": _key(lecture_id)})
            if doc is None:
                continue
            latest = [u for u in self.uploads if u.lecture_id == lecture_id][-1]
            assert doc["rawVideoUrl"] == latest.raw_url, f"lecture {lecture_id}: rawVideoUrl rolled back"
            if doc.get("status") == "READY":
                transcode = self.stack.transcode_for(latest.job_id)
                assert doc["videoUrl"] == transcode["status"]["videoUrl"], "videoUrl from another upload"
        self.names.append("Lecture never regressed")


def _key(lecture_id: str):
    from bson import ObjectId
    return ObjectId(lecture_id) if ObjectId.is_valid(lecture_id) else lecture_id


__all__ = ["MATRIX", "Invariants", "Upload", "NAMESPACE"]
