"""Which media URLs may be fetched: the one rule set the intake (before a CR exists) and the
transcoder (before it connects) both apply, so a URL the intake accepts is one the
transcoder will fetch, and neither can drift from the other.

Pure standard library: the transcoder image and the operator image both import it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

INSECURE_LOOPBACK_ENV = "LECTERN_TEST_INSECURE_LOOPBACK"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: str | Address) -> bool:
    """False for loopback, private, link-local (the cloud metadata service), CGNAT, multicast
    and reserved ranges, also when spelled as an IPv4-mapped IPv6 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def host_allowed(host: str, port: int | None, allowed_hosts: Iterable[str]) -> bool:
    """`host` (lower case, no trailing dot) against the allow-list. Entries are exact host
    names (`res.cloudinary.com`) or `*.example.com` for any subdomain (never an IP literal),
    optionally with a port (`media.example.com:8443`); an entry without a port allows 443 only."""
    port = port or 443
    for entry in allowed_hosts:
        entry = entry.strip().lower().rstrip(".")
        if entry.startswith("["):  # [v6]:port or [v6]
            name, _, rest = entry[1:].partition("]")
            eport = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") > 1:  # a bare IPv6 address
            name, eport = entry, ""
        else:
            name, _, eport = entry.partition(":")
        if eport:
            if not eport.isdigit() or int(eport) != port:
                continue
        elif port != 443:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and host != name[2:] and not _is_ip(host):
                return True
        elif host == name:
            return True
    return False


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
