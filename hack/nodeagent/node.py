"""The Node object and its liveness signals, as a kubelet keeps them: registration (or update of
the object a previous run left), a Lease in kube-node-lease renewed every 10 s (what the node
lifecycle controller watches), and a status heartbeat. Stopping both is how a node "goes away"."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from hack.nodeagent.api import MERGE, Api, ApiError

log = logging.getLogger("nodeagent.node")

KUBELET_VERSION = "v1.37.2"
LEASE_SECONDS = 40


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def capacity(workdir: Path) -> dict[str, str]:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{mem_kib}Ki",
            "ephemeral-storage": str(shutil.disk_usage(workdir).total), "pods": "110"}


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


class Node:
    def __init__(self, api: Api, name: str, workdir: Path, kubelet_port: int):
        self.api, self.name, self.workdir, self.port = api, name, workdir, kubelet_port
        self.capacity = capacity(workdir)
        self.uid = ""
        self._ready_since = _now()

    def _status(self) -> dict[str, Any]:
        t = _now()

        def cond(type_: str, status: str, reason: str, message: str) -> dict:
            return {"type": type_, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": t, "lastTransitionTime": self._ready_since}
        return {
            "capacity": self.capacity, "allocatable": self.capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {"machineID": _read("/etc/machine-id"), "systemUUID": _read("/etc/machine-id"),
                         "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": platform.release(),
                         "osImage": "lectern node agent (processes on the host)", "containerRuntimeVersion": "lectern://0.1.0",
                         "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": _arch()},
        }

    async def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                                                           "kubernetes.io/arch": _arch(), "beta.kubernetes.io/os": "linux",
                                                           "beta.kubernetes.io/arch": _arch()}},
                "spec": {}, "status": self._status()}
        try:
            node = await self.api.post("/api/v1/nodes", body)
            log.info("registered node %s (cpu %s, memory %s)", self.name, self.capacity["cpu"], self.capacity["memory"])
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.api.get(f"/api/v1/nodes/{self.name}")
            log.info("node %s exists (a previous run): updating it", self.name)
        self.uid = node["metadata"]["uid"]
        await self.heartbeat()
        await self.renew_lease()

    async def heartbeat(self) -> None:
        await self.api.patch(f"/api/v1/nodes/{self.name}/status", {"status": self._status()})

    async def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            await self.api.patch(path, {"spec": spec}, content_type=MERGE)
        except ApiError as e:
            if e.status != 404:
                raise
            await self.api.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}]},
                "spec": spec})
            log.info("lease kube-node-lease/%s created", self.name)

    async def keep_alive(self, lease_every: float = 10.0, status_every: float = 30.0) -> None:
        last_status = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(lease_every)
            try:
                await self.renew_lease()
                if asyncio.get_running_loop().time() - last_status >= status_every:
                    await self.heartbeat()
                    last_status = asyncio.get_running_loop().time()
            except Exception as e:   # keep trying: a restarting API server must not kill the node
                log.warning("heartbeat failed: %s", e)
