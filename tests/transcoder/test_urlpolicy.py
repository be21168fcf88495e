"""Issue 12, item 6: the one URL parser the intake and the transcoder share, and its gaps closed.

Every case runs through both callers (the intake's check_media_url and the transcoder's
fetch.check_url, no network: a resolver stub answers a public address), so a URL one accepts
the other accepts too."""

from __future__ import annotations

import pytest

from lectern_operator.intake.payload import check_media_url
from lectern_transcoder import fetch, urlpolicy
from lectern_transcoder.errors import UnusableInput
from lectern_transcoder.urlpolicy import UrlRefused, is_public, parse_media_url

ALLOWED = ["res.cloudinary.com/acme", "media.example.org"]
PUBLIC = lambda host, port: ["93.184.216.34"]  # noqa: E731


def verdicts(url: str, allowed=ALLOWED) -> tuple[str | None, str | None]:
    """(intake's refusal, transcoder's refusal); None where accepted."""
    try:
        check_media_url(url, allowed)
        intake = None
    except ValueError as exc:
        intake = str(exc)
    try:
        fetch.check_url(url, fetch.FetchPolicy(allowed_hosts=tuple(allowed), resolver=PUBLIC))
        transcoder = None
    except UnusableInput as exc:
        transcoder = exc.reason
    return intake, transcoder


def refused(url: str, why: str, allowed=ALLOWED) -> None:
    intake, transcoder = verdicts(url, allowed)
    assert intake is not None and why in intake, (url, intake)
    assert transcoder is not None and why in transcoder, (url, transcoder)


def accepted(url: str, allowed=ALLOWED) -> None:
    assert verdicts(url, allowed) == (None, None), url


GOOD = "https://res.cloudinary.com/acme/video/upload/v17/raw/l1.mov"


@pytest.mark.parametrize("url", [
    "https://res.cloudinary.com/acme/video/upload/v17/raw/l1.mov\t",
    "https://res.cloudinary.com/acme/video/up\tload/v17/raw/l1.mov",   # urlsplit deletes tabs
    "https://res.cloud\ninary.com/acme/video/upload/l1.mov",           # ... and newlines
    "\x01https://res.cloudinary.com/acme/video/upload/l1.mov",         # 3.11.4+ strips leading C0
    "https://res.cloudinary.com/acme/video/upload/l1.mov\x00.jpg",
    "https://res.cloudinary.com/acme/video/upload/l1%00.mov",
    "https://res.cloudinary.com/acme/video/upload/l1%0d%0aX-Injected:%201.mov",
    "https://res.cloudinary.com/acme/video/upload/l1\x7f.mov",
    "https://res.cloudinary.com/acme/video/upload/l1\x85.mov",
    "https://res.cloudinary.com/acme/video/upload/l1\u2028.mov",
    "https://res.cloudinary.com/acme/video/upload/l1\u00a0.mov",
    "https://res.cloudinary.com/acme/video/upload/\u202el1.vom",
    "https://res.cloudinary.com/acme/video/upload/l1\u200b.mov",
])
def test_control_characters_and_whitespace_refused_anywhere(url):
    refused(url, "whitespace or control characters")


@pytest.mark.parametrize("literal, embedded", [
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),          # NAT64 well-known prefix
    ("64:ff9b::7f00:1", "127.0.0.1"),
    ("64:ff9b:1::a00:1", "10.0.0.1"),                   # NAT64 local-use prefix
    ("::a9fe:a9fe", "169.254.169.254"),                 # IPv4-compatible
    ("::127.0.0.1", "127.0.0.1"),
    ("::ffff:0:a00:1", "10.0.0.1"),                     # IPv4-translated
    ("::ffff:169.254.169.254", "169.254.169.254"),      # IPv4-mapped
    ("2002:a9fe:a9fe::1", "169.254.169.254"),           # 6to4
    ("2002:c0a8:1::", "192.168.0.1"),
])
def test_ipv6_forms_are_judged_by_the_ipv4_they_embed(literal, embedded):
    assert not is_public(literal)
    assert urlpolicy.embedded_ipv4(__import__("ipaddress").IPv6Address(literal)) == \
        __import__("ipaddress").IPv4Address(embedded)
    refused(f"https://[{literal}]/a.mp4", "non-public address", allowed=[f"[{literal}]"])


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111",
                                     "8.8.8.8", "93.184.216.34"])
def test_public_addresses_stay_public(address):
    assert is_public(address)


@pytest.mark.parametrize("address", [
    "fec0::1", "fec0:1234::5", "feff::1",       # site-local (deprecated, still routed inside some sites)
    "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "ff02::1", "::", "::1", "100::1",
    "2001:db8::1", "2001::1", "3fff::1", "64:ff9b:1:ffff::1",
    "192.0.0.9", "192.88.99.1", "198.18.0.1", "240.0.0.1", "255.255.255.255", "100.64.0.1",
])
def test_non_public_ranges_are_decided_by_our_tables(address):
    # the same verdict on every Python patch release: is_global changed in 3.11.10 / 3.12.4
    assert not is_public(address)


def test_site_local_literal_refused():
    refused("https://[fec0::1]/a.mp4", "non-public address", allowed=["[fec0::1]"])


@pytest.mark.parametrize("url", [
    GOOD,
    "https://res.cloudinary.com/acme/video/upload/c_limit,w_1280,h_1280/v17/raw/l1.mov",
    "https://res.cloudinary.com/acme/video/authenticated/s--AbC123--/v17/l1.mov",
    "https://media.example.org/anything/x.mkv?sig=1",
])
def test_accepted(url):
    accepted(url)


@pytest.mark.parametrize("url", [
    "https://res.cloudinary.com/other/video/upload/v1/x.mov",
    "https://res.cloudinary.com/acmeevil/video/upload/v1/x.mov",
    "https://res.cloudinary.com/acme",
])
def test_the_allow_list_can_name_a_cloud(url):
    refused(url, "not under an allowed Cloudinary cloud")


@pytest.mark.parametrize("url", [
    "https://res.cloudinary.com/acme/../other/video/upload/v1/x.mov",
    "https://res.cloudinary.com/acme/%2e%2e/other/video/upload/v1/x.mov",
    "https://res.cloudinary.com/acme%2f..%2fother/video/upload/v1/x.mov",
    "https://res.cloudinary.com/acme/./video/upload/v1/x.mov",
])
def test_no_escaping_the_cloud_with_dot_segments(url):
    refused(url, "dot segments or encoded slashes")


@pytest.mark.parametrize("url", [
    "https://res.cloudinary.com/acme/video/fetch/https://evil.example/x.mp4",
    "https://res.cloudinary.com/acme/image/fetch/f_auto/https://169.254.169.254/x",
    "https://res.cloudinary.com/acme/video/youtube/dQw4w9WgXcQ",
    "https://res.cloudinary.com/acme/video/list/tag.json",
    "https://media.example.org/video/fetch/https://evil.example/x.mp4",
])
def test_cloudinary_remote_fetch_delivery_refused(url):
    refused(url, "delivery type")


def test_cloudinary_fetch_layer_refused():
    refused("https://res.cloudinary.com/acme/video/upload/l_fetch:aHR0cHM6Ly9ldmlsLmV4YW1wbGU=/v1/x.mov",
            "remote-fetch layer")


@pytest.mark.parametrize("url, why", [
    ("https://res.cloudinary.com\\@evil.example/acme/x.mov", "credentials"),
    ("https://res.cloudinary.com\\evil.example/acme/x.mov", "backslashes"),
    ("https://evil.example#@res.cloudinary.com/acme/x.mov", "not an allowed media host"),
    ("https://evil.example?@res.cloudinary.com/acme/x.mov", "not an allowed media host"),
    ("https://0x7f.0.0.1/a.mp4", "non-public address"),
    ("https://017700000001/a.mp4", "non-public address"),
    ("https://1.2.3.4.5/a.mp4", "not a valid URL"),
    ("https://res.cloudinary.com:0/acme/x.mov", "not a valid URL"),
    ("https://res.cloudinary.com:+443/acme/x.mov", "not a valid URL"),
    ("https://rés.cloudinary.com/acme/x.mov", "not a valid URL"),
    ("https://res_cloudinary.com/acme/x.mov", "not a valid URL"),
    ("https:/res.cloudinary.com/acme/x.mov", "must be an https:// URL"),
    ("https://RES.CLOUDINARY.COM/acme/video/upload/x.mov", None),
])
def test_parser_differentials(url, why):
    if why is None:
        accepted(url)
    else:
        refused(url, why)


def test_the_intake_and_the_transcoder_call_the_same_parser(monkeypatch):
    calls = []
    real = urlpolicy.parse_media_url

    def spy(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    import lectern_operator.intake.payload as payload
    monkeypatch.setattr(payload, "parse_media_url", spy)
    monkeypatch.setattr(fetch, "parse_media_url", spy)
    assert verdicts(GOOD) == (None, None)
    assert calls == [GOOD, GOOD]


def test_parse_result():
    u = parse_media_url("https://res.cloudinary.com./acme/video/upload/x.mov?a=1#frag", ALLOWED)
    assert (u.scheme, u.host, u.port, u.path, u.address) == ("https", "res.cloudinary.com", 443,
                                                             "/acme/video/upload/x.mov?a=1", None)
    with pytest.raises(UrlRefused):
        parse_media_url("https://[::ffff:7f00:1]/x", ["[::ffff:7f00:1]"])
