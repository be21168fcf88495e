"""What a container runs with: argv, environment and identity, combined from the image config
and the pod spec in the order a kubelet and a container runtime apply them, so a pod behaves here
as it would on a real node (and a misconfigured one fails here the same way)."""

from __future__ import annotations

import base64
import math
import pwd
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(Exception):
    """The kubelet's CreateContainerConfigError: the pod stays Pending and is retried."""


def parse_quantity(value: str | int | float) -> Decimal:
    text = str(value).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?", text)
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""])


def millicpu(value: str | int | float | None) -> int | None:
    return None if value is None else math.ceil(parse_quantity(value) * 1000)


def bytes_of(value: str | int | float | None) -> int | None:
    return None if value is None else math.ceil(parse_quantity(value))


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, undefined ones left as
    written, `$$` escapes a `$`."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append(text[i:])
                break
            name = text[i + 2:close]
            out.append(env[name] if name in env else f"$({name})")
            i = close + 1
        else:
            out.append(c + nxt)
            i += 2
    return "".join(out)


def field_value(pod: dict, path: str) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP") or "127.0.0.1", "status.hostIP": status.get("hostIP") or "127.0.0.1",
        "status.podIPs": status.get("podIP") or "127.0.0.1", "status.hostIPs": status.get("hostIP") or "127.0.0.1",
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path!r}")
    return simple[path]


def resource_value(container: dict, ref: dict, node_allocatable: dict[str, str]) -> str:
    """`resourceFieldRef`: a limit that is not set reads as the node's allocatable, as on a node."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None:
        raw = (resources.get("requests") or {}).get(name) if kind == "limits" else None
    if raw is None:
        raw = node_allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(raw) / divisor))


Fetch = Callable[[str, str], Awaitable[dict | None]]   # (kind "secrets"/"configmaps", name) -> object or None


def _data(kind: str, obj: dict) -> dict[str, str]:
    if kind == "secrets":
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


async def kube_env(pod: dict, container: dict, fetch: Fetch, service_env: dict[str, str],
                   node_allocatable: dict[str, str]) -> dict[str, str]:
    """The kubelet's part of the environment (service variables, envFrom, env), without the image's."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(service_env)
    for source in container.get("envFrom") or []:
        kind, ref = ("secrets", source["secretRef"]) if "secretRef" in source else ("configmaps", source.get("configMapRef") or {})
        obj = await fetch(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{"secret" if kind == "secrets" else "configmap"} "{ref["name"]}" not found')
        for key, value in _data(kind, obj).items():
            name = (source.get("prefix") or "") + key
            if _ENV_NAME.match(name):
                env[name] = value
    for var in container.get("env") or []:
        name, src = var["name"], var.get("valueFrom")
        if src is None:
            env[name] = expand(var.get("value") or "", env)
        elif "fieldRef" in src:
            env[name] = field_value(pod, src["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in src:
            env[name] = resource_value(container, src["resourceFieldRef"], node_allocatable)
        else:
            kind, ref = ("secrets", src["secretKeyRef"]) if "secretKeyRef" in src else ("configmaps", src["configMapKeyRef"])
            label = "secret" if kind == "secrets" else "configmap"
            obj = await fetch(kind, ref["name"])
            data = _data(kind, obj) if obj is not None else None
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                if data is None:
                    raise ConfigError(f'{label} "{ref["name"]}" not found')
                raise ConfigError(f'couldn\'t find key {ref["key"]} in {"Secret" if label == "secret" else "ConfigMap"} {ns}/{ref["name"]}')
            env[name] = data[ref["key"]]
    return env


def service_env(host: str, port: int) -> dict[str, str]:
    """The `kubernetes` Service's variables, pointing at the API server itself (no kube-proxy)."""
    prefix = f"KUBERNETES_PORT_{port}_TCP"
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{host}:{port}",
            prefix: f"tcp://{host}:{port}", f"{prefix}_PROTO": "tcp", f"{prefix}_PORT": str(port),
            f"{prefix}_ADDR": host}


def argv_of(container: dict, image: dict, env: dict[str, str]) -> list[str]:
    """Docker's rule: a pod `command` replaces the ENTRYPOINT and drops the image CMD; pod `args`
    replace the CMD. `$(VAR)` in both are expanded from the kubelet's environment."""
    command, args = container.get("command"), container.get("args")
    pod_args = [expand(a, env) for a in args] if args is not None else None
    if command:
        argv = [expand(a, env) for a in command] + (pod_args or [])
    else:
        argv = list(image.get("entrypoint") or []) + (pod_args if pod_args is not None else list(image.get("cmd") or []))
    if not argv:
        raise ConfigError("no command specified")
    return argv


@dataclass
class Identity:
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    home: str = "/"


def identity(pod: dict, container: dict, image: dict) -> Identity:
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = container.get("securityContext") or {}
    image_user, _, image_group = (image.get("user") or "").partition(":")
    uid_v = sc.get("runAsUser", pod_sc.get("runAsUser"))
    home = "/"
    if uid_v is None and image_user:
        if image_user.isdigit():
            uid_v = int(image_user)
        else:
            try:
                entry = pwd.getpwnam(image_user)
            except KeyError:
                raise ConfigError(f"unable to find user {image_user}: no matching entries in passwd file") from None
            uid_v, home = entry.pw_uid, entry.pw_dir
    uid = int(uid_v or 0)
    gid_v = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if gid_v is None:
        if image_group.isdigit():
            gid_v = int(image_group)
        else:
            try:
                gid_v, home = pwd.getpwuid(uid).pw_gid, pwd.getpwuid(uid).pw_dir
            except KeyError:
                gid_v = 0
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise ConfigError("container has runAsNonRoot and image will run as root")
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.insert(0, int(pod_sc["fsGroup"]))
    return Identity(uid, int(gid_v), groups, home)


def process_env(image: dict, kube: dict[str, str], pod_name: str, home: str) -> dict[str, str]:
    """The runtime's merge: image env, overridden by the kubelet's; HOSTNAME and HOME as a runtime
    sets them."""
    env = {"HOSTNAME": pod_name, **(image.get("env") or {}), **kube}
    env.setdefault("HOME", home)
    return env
