"""Job data validation: what the API may enqueue, and what it must never get past the intake."""

from __future__ import annotations

import pytest

from lectern_operator.intake.payload import InvalidPayload, check_media_url, host_allowed, parse_payload

ALLOWED = ["res.cloudinary.com", "*.media.example.org", "uploads.example.net:8443"]
GOOD = {
    "lectureId": "65f1c0ffee0123456789abcd",
    "rawVideoUrl": "https://res.cloudinary.com/demo/video/upload/v1712/raw/lecture.mp4",
    "instructorId": "instructor_42",
}


def reason(data) -> str:
    with pytest.raises(InvalidPayload) as info:
        parse_payload(data, ALLOWED)
    return str(info.value)


def test_valid_payload_and_extra_keys_ignored():
    p = parse_payload({**GOOD, "title": "Week 1"}, ALLOWED)
    assert (p.lecture_id, p.raw_video_url, p.instructor_id) == (GOOD["lectureId"], GOOD["rawVideoUrl"], GOOD["instructorId"])


@pytest.mark.parametrize("field", ["lectureId", "rawVideoUrl", "instructorId"])
def test_missing_field_is_named(field):
    data = {k: v for k, v in GOOD.items() if k != field}
    r = reason(data)
    assert r.startswith("invalid job data: ")
    assert f"{field}: required field is missing" in r


@pytest.mark.parametrize("field,value,kind", [
    ("lectureId", 42, "number"), ("instructorId", None, "null"), ("rawVideoUrl", ["https://x"], "array"),
    ("lectureId", {"$oid": "65f1"}, "object"), ("instructorId", True, "boolean"),
])
def test_wrong_types_are_named(field, value, kind):
    assert f"{field}: must be a string (got {kind})" in reason({**GOOD, field: value})


def test_all_bad_fields_reported_together():
    r = reason({"lectureId": 1, "instructorId": "ok"})
    assert "lectureId" in r and "rawVideoUrl" in r and "instructorId" not in r


@pytest.mark.parametrize("data", [None, "x", [GOOD], 7])
def test_not_an_object(data):
    assert "expected an object {lectureId, rawVideoUrl, instructorId}" in reason(data)


@pytest.mark.parametrize("lecture", ["", "-abc", "a b", "a/../b", "x" * 64, "é"])
def test_bad_ids(lecture):
    assert "lectureId: must be 1-63 letters" in reason({**GOOD, "lectureId": lecture})


@pytest.mark.parametrize("url,why", [
    ("http://res.cloudinary.com/a.mp4", "must be an https:// URL"),
    ("ftp://res.cloudinary.com/a.mp4", "must be an https:// URL"),
    ("file:///etc/passwd", "must be an https:// URL"),
    ("res.cloudinary.com/a.mp4", "must be an https:// URL"),
    ("https://user:pw@res.cloudinary.com/a.mp4", "credentials"),
    ("https://res.cloudinary.com@evil.example/a.mp4", "credentials"),
    ("https://evil.example/a.mp4", "not an allowed media host"),
    ("https://res.cloudinary.com.evil.example/a.mp4", "not an allowed media host"),
    ("https://127.0.0.1/a.mp4", "non-public address"),
    ("https://10.1.2.3/a.mp4", "non-public address"),
    ("https://192.168.0.10:8080/a.mp4", "non-public address"),
    ("https://169.254.169.254/latest/meta-data/", "non-public address"),
    ("https://[::1]/a.mp4", "non-public address"),
    ("https://[fe80::1]/a.mp4", "non-public address"),
    ("https://[::ffff:10.0.0.1]/a.mp4", "non-public address"),
    ("https://2130706433/a.mp4", "non-public address"),
    ("https://0x7f.1/a.mp4", "non-public address"),
    ("https://0.0.0.0/a.mp4", "non-public address"),
    ("https://8.8.8.8/a.mp4", "not an allowed media host"),
    ("https://res.cloudinary.com/a b.mp4", "whitespace"),
    (" https://res.cloudinary.com/a.mp4", "whitespace"),
    ("https://res.cloudinary.com\\@evil.example/a.mp4", "credentials"),
    ("https://media.example.org/a.mp4", "not an allowed media host"),  # wildcard needs a subdomain
    ("https://uploads.example.net/a.mp4", "not an allowed media host"),  # port-bound entry
    ("https://res.cloudinary.com:99999/a.mp4", "not a valid URL"),
    ("https://res.cloudinary.com/" + "a" * 2100, "longer than 2048"),
])
def test_rejected_urls_name_the_field(url, why):
    r = reason({**GOOD, "rawVideoUrl": url})
    assert r.startswith("invalid job data: rawVideoUrl: "), r
    assert why in r, r


@pytest.mark.parametrize("url", [
    "https://res.cloudinary.com/demo/video/upload/v1/x.mp4",
    "https://RES.Cloudinary.com/demo/x.mp4",
    "https://res.cloudinary.com./demo/x.mp4",
    "https://cdn1.media.example.org/x.mov?sig=abc&t=1",
    "https://uploads.example.net:8443/x.mkv",
])
def test_accepted_urls(url):
    assert parse_payload({**GOOD, "rawVideoUrl": url}, ALLOWED).raw_video_url == url


def test_private_ip_refused_even_when_listed_like_the_transcoder():
    with pytest.raises(ValueError, match="non-public"):
        check_media_url("https://127.0.0.1:9443/x.mp4", ["127.0.0.1:9443"])
    with pytest.raises(ValueError, match="non-public"):
        check_media_url("https://[::ffff:169.254.169.254]/x.mp4", ["[::ffff:169.254.169.254]"])
    assert not host_allowed("10.0.0.1", None, ["*.0.0.1"])
    assert check_media_url("https://8.8.8.8/x.mp4", ["8.8.8.8"])  # a public literal, listed


def test_port_rules_match_the_transcoder():
    assert host_allowed("res.cloudinary.com", None, ["res.cloudinary.com"])
    assert host_allowed("res.cloudinary.com", 443, ["res.cloudinary.com"])
    assert not host_allowed("res.cloudinary.com", 8443, ["res.cloudinary.com"])  # no port: 443 only
    assert host_allowed("media.local", 8443, ["media.local:8443"])
    assert not host_allowed("media.local", None, ["media.local:8443"])
    assert host_allowed("a.b.example.org", None, ["*.example.org"])
    assert not host_allowed("example.org", None, ["*.example.org"])


def test_test_only_insecure_loopback_escape():
    from lectern_transcoder.urlpolicy import parse_insecure_loopback
    loop = parse_insecure_loopback("127.0.0.1:8123, [::1]:9")
    assert loop == {("127.0.0.1", 8123), ("::1", 9)}
    url = "http://127.0.0.1:8123/demo/video/upload/raw/x.mp4"
    assert parse_payload({**GOOD, "rawVideoUrl": url}, ALLOWED, loop).raw_video_url == url
    with pytest.raises(InvalidPayload, match="rawVideoUrl: must be an https"):
        parse_payload({**GOOD, "rawVideoUrl": "http://127.0.0.1:8124/x.mp4"}, ALLOWED, loop)
    with pytest.raises(InvalidPayload, match="non-public"):
        parse_payload({**GOOD, "rawVideoUrl": "https://127.0.0.1:8124/x.mp4"}, ALLOWED, loop)
    for bad in ("10.0.0.1:80", "localhost:80", "127.0.0.1", "example.com:443"):
        with pytest.raises(ValueError, match="not a loopback IP:port"):
            parse_insecure_loopback(bad)


def test_no_allowed_hosts_rejects_everything():
    with pytest.raises(InvalidPayload, match="rawVideoUrl: host 'res.cloudinary.com' is not an allowed"):
        parse_payload(GOOD, [])
