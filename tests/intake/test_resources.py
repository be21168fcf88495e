"""CR naming and body: deterministic per job, DNS-1123, labels that select by lecture."""

from __future__ import annotations

import re

import pytest

from lectern_operator.api.v1alpha1 import VideoTranscodeSpec
from lectern_operator.intake import resources as res
from lectern_operator.intake.payload import parse_payload

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
Q = "bull:video-queue"


def payload(lecture="65f1c0ffee0123456789abcd", url="https://res.cloudinary.com/d/video/upload/v1/a.mp4"):
    return parse_payload({"lectureId": lecture, "rawVideoUrl": url, "instructorId": "u1"}, ["res.cloudinary.com"])


@pytest.mark.parametrize("lecture,job_id", [
    ("65f1c0ffee0123456789abcd", "1"), ("L", "123456789012345678901234567890"),
    ("A" * 63, "x" * 200), ("lec_ture--1_", "custom:job/id with spaces"), ("a-", "-"), ("9", "0"),
])
def test_names_are_dns1123_and_short(lecture, job_id):
    name = res.cr_name(lecture, job_id, 1712000000000, Q)
    assert DNS1123_LABEL.match(name) and len(name) <= res.MAX_NAME, name
    assert name == res.cr_name(lecture, job_id, 1712000000000, Q)  # deterministic


def test_names_distinguish_what_slugs_merge():
    names = {
        res.cr_name("Lecture1", "1", 1, Q), res.cr_name("lecture1", "1", 1, Q),
        res.cr_name("lecture1", "2", 1, Q), res.cr_name("lecture1", "1", 2, Q),  # id reused after a wipe
        res.cr_name("lecture1", "1", 1, "bull:other-queue"),
    }
    assert len(names) == 5
    assert res.cr_name("65f1c0ffee0123456789abcd", "17", 5, Q).startswith("vt-65f1c0ffee0123456789abcd-17-")


@pytest.mark.parametrize("value", ["65f1c0ffee0123456789abcd", "abc-", "_x", "a" * 63, "a" * 64, "job:1/2", ""])
def test_label_values_always_valid_and_stable(value):
    v = res.label_value(value)
    assert LABEL_VALUE.match(v) and len(v) <= 63
    assert v == res.label_value(value)
    if LABEL_VALUE.match(value) and len(value) <= 63:
        assert v == value


def test_body_labels_annotations_spec():
    p = payload()
    name = res.cr_name(p.lecture_id, "7", 1712000000123, Q)
    body = res.cr_body(p, name=name, namespace="media", job_id="7", job_timestamp=1712000000123, queue=Q)
    assert body["apiVersion"] == "media.lectern.dev/v1alpha1" and body["kind"] == "VideoTranscode"
    meta = body["metadata"]
    assert meta["name"] == name and meta["namespace"] == "media"
    assert meta["labels"]["media.lectern.dev/lecture-id"] == p.lecture_id
    assert meta["labels"]["media.lectern.dev/queue-job-id"] == "7"
    assert meta["annotations"]["media.lectern.dev/queue"] == Q
    assert meta["annotations"]["media.lectern.dev/queue-job-id"] == "7"
    assert meta["annotations"]["media.lectern.dev/queue-job-timestamp"] == "1712000000123"
    spec = VideoTranscodeSpec.model_validate(body["spec"])
    assert (spec.lecture_id, spec.instructor_id, spec.raw_video_url) == (p.lecture_id, "u1", p.raw_video_url)
    assert res.belongs_to(body, p, "7", Q)
    assert not res.belongs_to(body, p, "8", Q)
    assert not res.belongs_to(body, payload(url="https://res.cloudinary.com/d/other.mp4"), "7", Q)


def test_upload_order():
    p = payload()
    older = res.cr_body(p, name="a", namespace="n", job_id="9", job_timestamp=1000, queue=Q)
    newer = res.cr_body(p, name="b", namespace="n", job_id="10", job_timestamp=1000, queue=Q)
    later = res.cr_body(p, name="c", namespace="n", job_id="2", job_timestamp=2000, queue=Q)
    assert res.upload_order(older) < res.upload_order(newer) < res.upload_order(later)
    assert res.job_order(1000, "10") == res.upload_order(newer)


def test_body_leaves_outputs_to_the_operator_default():
    """The intake writes no spec.outputs: the chart's transcode.hls.enabled decides (issue 15)."""
    p = payload()
    body = res.cr_body(p, name="a", namespace="n", job_id="1", job_timestamp=1, queue=Q)
    assert "outputs" not in body["spec"]
    assert VideoTranscodeSpec.model_validate(body["spec"]).wants_hls(True)
    assert not VideoTranscodeSpec.model_validate(body["spec"]).wants_hls(False)


HLS = "https://res.cloudinary.com/d/raw/upload/v2/lectern/lectures/l1/abc-hls/master.m3u8"
POSTER = "https://res.cloudinary.com/d/image/upload/v2/lectern/lectures/l1/abc-hls/poster.jpg"
VIDEO = "https://res.cloudinary.com/d/video/upload/v2/lectern/lectures/l1/abc.mp4"


@pytest.mark.parametrize("status,result", [
    ({"phase": "Succeeded", "videoUrl": VIDEO}, {"lectureId": "l1", "videoUrl": VIDEO}),  # HLS off: as before
    ({"phase": "Succeeded", "videoUrl": VIDEO, "hlsUrl": None, "posterUrl": ""}, {"lectureId": "l1", "videoUrl": VIDEO}),
    ({"phase": "Succeeded", "videoUrl": VIDEO, "hlsUrl": HLS, "posterUrl": POSTER},
     {"lectureId": "l1", "videoUrl": VIDEO, "hlsUrl": HLS, "posterUrl": POSTER}),
    ({"phase": "Succeeded", "videoUrl": VIDEO, "hlsUrl": HLS}, {"lectureId": "l1", "videoUrl": VIDEO, "hlsUrl": HLS}),
    ({"phase": "Succeeded", "hlsUrl": HLS}, None),  # no videoUrl yet: keep waiting
])
def test_job_result_shape(status, result):
    assert res.job_result("l1", status) == result
    if result:
        assert list(result)[:2] == ["lectureId", "videoUrl"]
