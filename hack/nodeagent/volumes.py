"""Pod volumes as folders under the pod's directory, bind-mounted into each container's private
mount namespace by launch.py: emptyDir (0777 as the kubelet makes it, owned by fsGroup), secret,
configMap, downwardAPI and projected volumes (including the ServiceAccount token from the
TokenRequest API, bound to the pod and refreshed at 80 % of its lifetime by an atomic rename, as
the kubelet does). `medium: Memory` is a plain folder here (no tmpfs per pod); persistent
volumes and hostPath are not supported: such a pod stays ContainerCreating."""

from __future__ import annotations

import base64
import datetime
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hack.nodeagent.containerconfig import bytes_of, field_value, resource_value

log = logging.getLogger("nodeagent.volumes")

Fetch = Callable[[str, str], Awaitable[dict | None]]
TokenRequest = Callable[[str, str | None, int], Awaitable[dict]]   # (serviceaccount, audience, seconds)
SECRET_LIKE = ("secret", "configMap", "projected", "downwardAPI")


class VolumeError(Exception):
    """The kubelet's FailedMount: the pod stays ContainerCreating and the mount is retried."""


@dataclass
class Token:
    path: Path
    audience: str | None
    seconds: int
    issued: float = 0.0


@dataclass
class PodVolumes:
    root: Path
    dirs: dict[str, Path] = field(default_factory=dict)
    size_limits: dict[str, int] = field(default_factory=dict)       # emptyDir name -> bytes
    empty_dirs: list[str] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)

    def usage(self, name: str) -> int:
        """Bytes allocated under an emptyDir, as `du` counts them (the eviction manager's view)."""
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.dirs[name]):
            for entry in dirnames + filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, entry)).st_blocks * 512
                except OSError:
                    pass
        return total

    def leftovers(self) -> list[str]:
        """Files left in the emptyDirs (the records the e2e invariants read)."""
        out = []
        for name in self.empty_dirs:
            base = self.dirs[name]
            for dirpath, _, filenames in os.walk(base):
                out += [str(Path(dirpath, f).relative_to(base)) for f in filenames]
        return sorted(out)


def write_atomic(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _items(data: dict[str, bytes], items: list[dict] | None, optional: bool, what: str) -> dict[str, tuple[bytes, int | None]]:
    if not items:
        return {k: (v, None) for k, v in data.items()}
    out = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise VolumeError(f"{what}: key {item['key']} not found")
        out[item["path"]] = (data[item["key"]], item.get("mode"))
    return out


def _decoded(kind: str, obj: dict) -> dict[str, bytes]:
    if kind == "secrets":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


async def _object_files(fetch: Fetch, kind: str, src: dict, what: str) -> dict[str, tuple[bytes, int | None]]:
    name = src.get("secretName") or src.get("name")
    obj = await fetch(kind, name)
    if obj is None:
        if src.get("optional"):
            return {}
        raise VolumeError(f'{what}: {"secret" if kind == "secrets" else "configmap"} "{name}" not found')
    return _items(_decoded(kind, obj), src.get("items"), bool(src.get("optional")), what)


def _downward_files(pod: dict, src: dict, allocatable: dict[str, str]) -> dict[str, tuple[bytes, int | None]]:
    out = {}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for item in src.get("items") or []:
        if "fieldRef" in item:
            path = item["fieldRef"]["fieldPath"]
            if path in ("metadata.labels", "metadata.annotations"):
                values = pod["metadata"].get(path.split(".")[1]) or {}
                value = "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
            else:
                value = field_value(pod, path)
        else:
            ref = item["resourceFieldRef"]
            value = resource_value(containers[ref.get("containerName") or pod["spec"]["containers"][0]["name"]], ref, allocatable)
        out[item["path"]] = (value.encode(), item.get("mode"))
    return out


def _write_files(base: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int, gid: int) -> None:
    for rel, (data, mode) in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        file_mode = mode if mode is not None else default_mode
        if gid != -1:
            file_mode |= 0o440
        write_atomic(path, data, file_mode, -1, gid)


async def prepare(pod: dict, root: Path, fetch: Fetch, token_request: TokenRequest,
                  allocatable: dict[str, str]) -> PodVolumes:
    spec = pod["spec"]
    pod_sc = spec.get("securityContext") or {}
    fs_group = int(pod_sc["fsGroup"]) if pod_sc.get("fsGroup") is not None else -1
    run_as = (spec["containers"][0].get("securityContext") or {}).get("runAsUser", pod_sc.get("runAsUser"))
    volumes = PodVolumes(root)
    for vol in spec.get("volumes") or []:
        name = vol["name"]
        base = root / "volumes" / name
        volumes.dirs[name] = base
        if "emptyDir" in vol:
            fresh = not base.exists()
            base.mkdir(parents=True, exist_ok=True)
            if fresh:
                os.chmod(base, 0o777)
                if fs_group != -1:
                    os.chown(base, -1, fs_group)
                    os.chmod(base, 0o2777)
            volumes.empty_dirs.append(name)
            limit = (vol["emptyDir"] or {}).get("sizeLimit")
            if limit:
                volumes.size_limits[name] = bytes_of(limit) or 0
            continue
        kind = next((k for k in SECRET_LIKE if k in vol), None)
        if kind is None:
            raise VolumeError(f'volume "{name}": type {sorted(set(vol) - {"name"})} is not supported on this node')
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        src = vol[kind] or {}
        default_mode = src.get("defaultMode", 0o644)
        what = f'MountVolume.SetUp failed for volume "{name}"'
        if kind == "secret":
            _write_files(base, await _object_files(fetch, "secrets", src, what), default_mode, fs_group)
        elif kind == "configMap":
            _write_files(base, await _object_files(fetch, "configmaps", src, what), default_mode, fs_group)
        elif kind == "downwardAPI":
            _write_files(base, _downward_files(pod, src, allocatable), default_mode, fs_group)
        else:
            for source in src.get("sources") or []:
                if "secret" in source:
                    _write_files(base, await _object_files(fetch, "secrets", source["secret"], what), default_mode, fs_group)
                elif "configMap" in source:
                    _write_files(base, await _object_files(fetch, "configmaps", source["configMap"], what), default_mode, fs_group)
                elif "downwardAPI" in source:
                    _write_files(base, _downward_files(pod, source["downwardAPI"], allocatable), default_mode, fs_group)
                elif "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    token = Token(base / sat["path"], sat.get("audience") or None, max(600, int(sat.get("expirationSeconds") or 3600)))
                    volumes.tokens.append(token)
                    await refresh_token(pod, token, token_request, run_as, fs_group, default_mode)
                else:
                    raise VolumeError(f"{what}: projected source {sorted(source)} is not supported on this node")
    return volumes


async def refresh_token(pod: dict, token: Token, token_request: TokenRequest, run_as: Any, fs_group: int,
                        default_mode: int = 0o644) -> None:
    sa = pod["spec"].get("serviceAccountName") or "default"
    try:
        status = await token_request(sa, token.audience, token.seconds)
    except Exception as e:
        raise VolumeError(f"failed to fetch token for serviceaccount {sa}: {e}") from None
    token.path.parent.mkdir(parents=True, exist_ok=True)
    # The kubelet gives the token to the pod's runAsUser alone when there is one (0600).
    if run_as is not None:
        write_atomic(token.path, status["token"].encode(), 0o600, int(run_as), fs_group)
    else:
        write_atomic(token.path, status["token"].encode(), default_mode | (0o440 if fs_group != -1 else 0), -1, fs_group)
    token.issued = time.time()
    log.info("token for %s/%s (serviceaccount %s, %ss) written to %s", pod["metadata"]["namespace"],
             pod["metadata"]["name"], sa, token.seconds, token.path.name)


def token_due(token: Token, now: float | None = None) -> bool:
    """The kubelet's rule: refresh past 80 % of the lifetime, or after 24 h."""
    age = (now or time.time()) - token.issued
    return age > 0.8 * token.seconds or age > 24 * 3600


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
