"""Which media URLs may be fetched: the one parser and rule set the intake (before a CR exists) and the
transcoder (before it connects) both apply, so a URL the intake accepts is one the
transcoder will fetch, and neither can drift from the other.

Pure standard library: the transcoder image and the operator image both import it."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

INSECURE_LOOPBACK_ENV = "LECTERN_TEST_INSECURE_LOOPBACK"
MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL may not be fetched; `str()` says why (it ends up in a BullMQ failedReason or
    the transcoder's exit-65 reason)."""


# Our own tables, not `ipaddress`'s is_global/is_private: those changed between patch releases
# (3.11.10, 3.12.4: gh-113171), and the verdict must not. IANA special-purpose registries.
_V4_NOT_PUBLIC = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")]
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NOT_PUBLIC = [ipaddress.IPv6Network(n) for n in (
    "2001::/23",       # IETF protocol assignments: Teredo, benchmarking, ORCHID, AMT...
    "2001:db8::/32",   # documentation
    "3fff::/20",       # documentation (RFC 9637)
)]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries, for the forms that reach it: IPv4-mapped
    `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
    `64:ff9b::a.b.c.d` and `64:ff9b:1::a.b.c.d` (the /96 layout; RFC 6052, 8215), 6to4
    `2002:AABB:CCDD::/48`."""
    n = int(ip)
    low = ipaddress.IPv4Address(n & 0xFFFFFFFF)
    if n >> 32 == 0xFFFF or n >> 32 == 0xFFFF0000 or (n >> 32 == 0 and n > 1):
        return low
    if n >> 32 == 0x0064FF9B << 64 or n >> 32 == ((0x0064FF9B << 16) | 1) << 48:
        return low
    if n >> 112 == 0x2002:
        return ipaddress.IPv4Address((n >> 80) & 0xFFFFFFFF)
    return None


def is_public(address: str | Address) -> bool:
    """False for loopback, private, link-local (the cloud metadata service), CGNAT, multicast,
    documentation and reserved ranges; IPv6 must be global unicast (2000::/3, so site-local
    fec0::/10, ULA, link-local and multicast are out), and an IPv6 form that embeds an IPv4
    address is judged by that address. A zone id (`fe80::1%eth0`) is never public. Decided by
    the tables above, the same on every Python release."""
    if isinstance(address, str):
        if "%" in address:
            return False
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
    else:
        ip = address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        v4 = embedded_ipv4(ip)
        if v4 is not None:
            return is_public(v4)
        if (int(ip) >> 96) == 0x0064FF9B or (int(ip) >> 80) == (0x0064FF9B << 16 | 1):
            return False  # a NAT64 prefix in a layout we do not decode
        return ip in _V6_GLOBAL_UNICAST and not any(ip in net for net in _V6_NOT_PUBLIC)
    return not any(ip in net for net in _V4_NOT_PUBLIC)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _split_entry(entry: str) -> tuple[str, str, str]:
    """An allow-list entry as (host, port, path prefix): `res.cloudinary.com`,
    `*.example.com`, `media.example.com:8443`, `[2001:db8::1]:443`, `res.cloudinary.com/acme`."""
    entry = entry.strip().rstrip("/")
    hostport, _, prefix = entry.partition("/")
    hostport = hostport.lower()
    if hostport.startswith("["):  # [v6]:port or [v6]
        name, _, rest = hostport[1:].partition("]")
        eport = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") > 1:  # a bare IPv6 address
        name, eport = hostport, ""
    else:
        name, _, eport = hostport.partition(":")
    return name.rstrip("."), eport, prefix.strip("/")


def _entry_matches_host(name: str, eport: str, host: str, port: int) -> bool:
    if eport:
        if not eport.isdigit() or int(eport) != port:
            return False
    elif port != 443:
        return False
    if name.startswith("*."):
        return host.endswith(name[1:]) and host != name[2:] and not _is_ip(host)
    return host == name


def host_allowed(host: str, port: int | None, allowed_hosts: Iterable[str]) -> bool:
    """`host` (lower case, no trailing dot) against the allow-list. Entries are exact host
    names (`res.cloudinary.com`) or `*.example.com` for any subdomain (never an IP literal),
    optionally with a port (`media.example.com:8443`); an entry without a port allows 443 only.
    An entry may name a path prefix too (`res.cloudinary.com/acme`: one Cloudinary cloud):
    then url_allowed() also checks the path."""
    port = port or 443
    return any(_entry_matches_host(name, eport, host, port)
               for name, eport, _ in map(_split_entry, allowed_hosts))


def url_allowed(host: str, port: int | None, path: str, allowed_hosts: Iterable[str]) -> bool:
    """host_allowed(), and for an entry with a path prefix, the path is under it
    (`/acme/...` for `res.cloudinary.com/acme`, compared segment by segment)."""
    port = port or 443
    for name, eport, prefix in map(_split_entry, allowed_hosts):
        if _entry_matches_host(name, eport, host, port) and (not prefix or path.startswith(f"/{prefix}/")):
            return True
    return False


# -- the one URL parser of the intake and the transcoder ------------------------------------------

# Control characters (C0, DEL, C1), every Unicode space and the invisible format characters
# (zero-width, bidi overrides): refused anywhere, also percent-encoded (C0 and DEL).
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\u00a0\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f"
                        r"\u3000\ufeff\ufff9-\ufffb]")
_BAD_ESCAPES = re.compile(r"%(?:[01][0-9a-fA-F]|7[fF])")
# Dot segments and encoded slashes/dots/backslashes in the path: a server may normalise them
# after our prefix check (`/acme/../other/`), so none is accepted.
_PATH_TRICKS = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|%2[eEfF]|%5[cC]")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
_CLOUDINARY_HOST = re.compile(r"^(?:res(?:-[0-9]+)?)\.cloudinary\.com$")
_DELIVERY = re.compile(r"^/(?:[^/]+/)?(image|video|raw)/([^/]+)/")
# Cloudinary delivery types that serve the account's own assets; every other one (`fetch`,
# `facebook`, `youtube`, ...) makes Cloudinary fetch a remote URL of the URL's choosing.
_OWN_DELIVERY_TYPES = {"upload", "authenticated", "private"}
_REMOTE_DELIVERY_TYPES = {"fetch", "facebook", "twitter", "twitter_name", "gravatar", "youtube", "hulu", "vimeo",
                          "animoto", "worldstarhiphop", "dailymotion"}


@dataclasses.dataclass(frozen=True)
class MediaUrl:
    scheme: str
    host: str  # lower case, no trailing dot, no brackets
    port: int
    path: str  # what goes on the request line: path + "?" + query
    address: Address | None  # when the host is an IP literal (in any spelling)
    insecure: bool = False  # the test-only loopback escape let it through


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """A host whose last label is numeric is an IPv4 address to a browser or curl (WHATWG URL):
    `2130706433`, `0x7f.1`, `0177.0.0.1`. Parsed here by that rule, not by the C library."""
    parts = host.split(".")
    if not parts or not _NUMERIC_LABEL.match(parts[-1]):
        return None
    if len(parts) > 4:
        raise UrlRefused(f"not a valid URL (host {host!r} is neither a name nor an IPv4 address)")
    values = []
    for p in parts:
        try:
            if p[:2] in ("0x", "0X"):
                values.append(int(p[2:] or "0", 16))
            elif len(p) > 1 and p.startswith("0"):
                values.append(int(p, 8))
            else:
                values.append(int(p, 10))
        except ValueError:
            raise UrlRefused(f"not a valid URL (host {host!r} is neither a name nor an IPv4 address)") from None
    if any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise UrlRefused(f"not a valid URL (IPv4 host {host!r} out of range)")
    n = values[-1]
    for i, v in enumerate(values[:-1]):
        n += v << (8 * (3 - i))
    return ipaddress.IPv4Address(n)


def parse_media_url(url: str, allowed_hosts: Iterable[str],
                    insecure_loopback: frozenset[tuple[str, int]] = frozenset()) -> MediaUrl:
    """Parse and judge a media URL by Lectern's rules, or raise UrlRefused saying why. The
    intake (before a CR exists) and the transcoder (before it connects) both call this; it
    uses no urllib.parse (whose stripping of tabs and leading controls changed between patch
    releases), only the rules below:

    https only; no user info; no control character, whitespace or NUL anywhere (nor
    percent-encoded C0/DEL); no backslash; a host that is a DNS name, a dotted IPv4 address
    (legacy spellings are decoded as browsers do) or a bracketed IPv6 address; an IP literal
    must be public (is_public); the host (and path prefix, for `host/cloud` entries) on the
    allow-list; no dot segments or encoded slashes in the path; Cloudinary's remote-fetching
    delivery types (`fetch`, ...) and `fetch:` layers refused."""
    allowed_hosts = list(allowed_hosts)
    if not isinstance(url, str):
        raise UrlRefused("is not a string")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"longer than {MAX_URL_LENGTH} characters")
    if _BAD_CHARS.search(url) or _BAD_ESCAPES.search(url):
        raise UrlRefused("contains whitespace or control characters")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", url)
    scheme = m.group(1).lower() if m else ""
    rest = url[m.end():] if m else url
    if scheme not in ("http", "https") or not rest.startswith("//"):
        raise UrlRefused(f"must be an https:// URL (got scheme {scheme or 'none'!r})")
    rest = rest[2:]
    cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        raise UrlRefused("must not carry credentials (user:password@)")
    if "\\" in url:
        raise UrlRefused("must not contain backslashes")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise UrlRefused("not a valid URL (unclosed IPv6 bracket)")
        host_text, port_text = authority[1:close], authority[close + 1:]
        if port_text and not port_text.startswith(":"):
            raise UrlRefused("not a valid URL (junk after the IPv6 address)")
        port_text = port_text[1:] if port_text else None
        if "%" in host_text:
            raise UrlRefused(f"points to a non-public address ({host_text}: an IPv6 zone is local)")
        try:
            address: Address | None = ipaddress.IPv6Address(host_text)
        except ValueError:
            raise UrlRefused(f"not a valid URL (bad IPv6 address {host_text!r})") from None
        host = str(address)
    else:
        host_text, sep, port_text = authority.partition(":")
        port_text = port_text if sep else None
        host = host_text.lower()
        if host.endswith("."):
            host = host[:-1]
        address = None
        if host:
            try:
                address = ipaddress.IPv4Address(host)
            except ValueError:
                address = _legacy_ipv4(host)
            if address is None and (len(host) > 253 or not all(_LABEL.match(label) for label in host.split("."))):
                raise UrlRefused(f"not a valid URL (host {host_text!r}: letters, digits, dots and dashes only)")
    if port_text is not None and not (port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) < 65536):
        raise UrlRefused(f"not a valid URL (port {port_text!r})")
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    if not host:
        raise UrlRefused("has no host")
    path, _, _fragment = tail.partition("#")
    if path.startswith("?") or not path:
        path = "/" + path
    if (address is not None and insecure_loopback
            and (str(address), port) in insecure_loopback):
        return MediaUrl(scheme, host, port, path, address, insecure=True)  # test-only: the local emulator
    if scheme != "https":
        raise UrlRefused(f"must be an https:// URL (got scheme {scheme!r})")
    if address is not None and not is_public(address):
        raise UrlRefused(f"points to a non-public address ({address}: private, loopback, link-local or reserved)")
    bare_path = path.partition("?")[0]
    if _PATH_TRICKS.search(bare_path):
        raise UrlRefused("path has dot segments or encoded slashes")
    if not host_allowed(host, port, allowed_hosts):
        raise UrlRefused(f"host {host!r} is not an allowed media host "
                         f"(allowed: {', '.join(allowed_hosts) or 'none'})")
    if not url_allowed(host, port, bare_path, allowed_hosts):
        raise UrlRefused(f"path {bare_path[:80]!r} is not under an allowed Cloudinary cloud or prefix "
                         f"(allowed: {', '.join(allowed_hosts)})")
    delivery = _DELIVERY.match(bare_path)
    if delivery:
        kind = delivery.group(2)
        if kind in _REMOTE_DELIVERY_TYPES or (_CLOUDINARY_HOST.match(host) and kind not in _OWN_DELIVERY_TYPES):
            raise UrlRefused(f"Cloudinary delivery type {kind!r} refused: it fetches remote content "
                             f"(only {', '.join(sorted(_OWN_DELIVERY_TYPES))})")
    if re.search(r"(?:^|[/,])[a-z]+_fetch:", bare_path):
        raise UrlRefused("Cloudinary remote-fetch layer (`*_fetch:`) refused")
    return MediaUrl(scheme, host, port, path, address)


def parse_insecure_loopback(value: str | None) -> frozenset[tuple[str, int]]:
    """`LECTERN_TEST_INSECURE_LOOPBACK` (`127.0.0.1:8123,[::1]:8124`): the test-only escape for
    the local Cloudinary emulator; http or https to exactly those loopback ports is let through.
    Anything but a loopback IP literal with a port raises ValueError."""
    entries: set[tuple[str, int]] = set()
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        try:
            ok = bool(sep) and ipaddress.ip_address(host).is_loopback and 0 < int(port) < 65536
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{INSECURE_LOOPBACK_ENV} entry {item!r} is not a loopback IP:port")
        entries.add((str(ipaddress.ip_address(host)), int(port)))
    return frozenset(entries)
