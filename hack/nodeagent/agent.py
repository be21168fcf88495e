"""The node agent's main loop: register the node, watch the pods bound to it, and keep one
PodWorker per pod, level-triggered (every pass compares the pods the API wants here with the
workers it has, so a missed event or a reconnect cannot leave a pod behind).

SIGTERM/SIGINT means the node goes away: every container is SIGKILLed, the cgroups are removed
and the agent exits without a word to the API, so the real node-lifecycle controller marks the
node NotReady and evicts its pods after their toleration. Started again, the agent treats what
the API says was running here as lost (ContainerStatusUnknown, exit 137, as a kubelet after a
reboot) and finalizes pods that were marked for deletion meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp

from hack.nodeagent import logs
from hack.nodeagent.api import Api, ApiError, ssl_from_kubeconfig
from hack.nodeagent.cgroups import Cgroups
from hack.nodeagent.containerconfig import service_env
from hack.nodeagent.images import load_images
from hack.nodeagent.node import Node
from hack.nodeagent.pods import PodWorker

log = logging.getLogger("nodeagent")


class Agent:
    def __init__(self, args: argparse.Namespace, api: Api):
        self.args, self.api = args, api
        self.node_name: str = args.node_name
        self.workdir = Path(args.workdir).resolve()
        self.images = load_images(Path(args.images))
        self.max_grace = float(args.max_grace)
        self.restart_backoff = float(args.restart_backoff)
        self.housekeeping = float(args.housekeeping)
        self.service_env = service_env(args.api_host, int(args.api_port))
        # One cgroup parent per node *and* workdir: several clusters on one machine (two test
        # sessions, a demo) must never sweep each other's pods at start-up.
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]
        self.cgroups = Cgroups(f"lectern-{args.node_name}-{digest}")
        self.node = Node(api, self.node_name, self.workdir, int(args.kubelet_port))
        self.allocatable = self.node.capacity
        self.workers: dict[str, PodWorker] = {}
        self.desired: dict[str, dict] = {}
        self._kick = asyncio.Event()
        self._first_pass = asyncio.Event()
        self._listed = False
        self._first_list = True

    # ----- API helpers used by the workers ------------------------------------------------------

    def fetcher(self, ns: str):
        async def fetch(kind: str, name: str) -> dict | None:
            try:
                return await self.api.get(f"/api/v1/namespaces/{ns}/{kind}/{name}")
            except ApiError as e:
                if e.status == 404:
                    return None
                raise
        return fetch

    def token_requester(self, pod: dict):
        meta = pod["metadata"]

        async def request(sa: str, audience: str | None, seconds: int) -> dict:
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": [audience] if audience else None, "expirationSeconds": seconds,
                             "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
            result = await self.api.post(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
            return result["status"]
        return request

    async def finalize_delete(self, worker: PodWorker) -> None:
        """Deletion done on the node's side: the object goes with grace 0, for this UID only."""
        if worker.deleted:
            return
        try:
            await self.api.delete(f"/api/v1/namespaces/{worker.ns}/pods/{worker.name}",
                                  {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                   "preconditions": {"uid": worker.uid}})
            log.info("pod %s deleted (grace 0, uid precondition)", worker.key)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s: delete failed: %s", worker.key, e)
                return
        worker.deleted = True

    def locate_log(self, ns: str, pod: str, container: str, previous: bool):
        for w in self.workers.values():
            if w.ns == ns and w.name == pod:
                return w.log_file(container, previous)
        return None

    # ----- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "pods").mkdir(exist_ok=True)
        if self.cgroups.check():
            self.cgroups.sweep()
        server = await logs.serve(self.locate_log, int(self.args.kubelet_port), self.args.tls_cert,
                                  self.args.tls_key, self.args.client_ca)
        await self._until_ok(self.node.register, "node registration")
        tasks = [asyncio.create_task(self.node.keep_alive(), name="keep-alive"),
                 asyncio.create_task(self._watch(), name="watch"),
                 asyncio.create_task(self._reconcile_loop(), name="reconcile")]
        await self._first_pass.wait()
        if self.args.ready_file:
            ready = Path(self.args.ready_file)
            tmp = ready.with_name(ready.name + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "node": self.node_name}))
            os.replace(tmp, ready)
        log.info("node %s ready", self.node_name)
        try:
            await asyncio.gather(*tasks)
        finally:
            await server.cleanup()

    async def _until_ok(self, fn, what: str) -> None:
        delay = 0.5
        while True:
            try:
                return await fn()
            except (ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                log.warning("%s failed: %s (retrying)", what, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def _watch(self) -> None:
        path = "/api/v1/pods"
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                listing = await self.api.get(path, fieldSelector=selector)
                self.desired = {p["metadata"]["uid"]: p for p in listing["items"]}
                rv = listing["metadata"]["resourceVersion"]
                self._listed = True
                self._kick.set()
                while True:
                    async for event in self.api.watch(path, {"fieldSelector": selector, "resourceVersion": rv,
                                                             "allowWatchBookmarks": "true", "timeoutSeconds": "300"}):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                raise _Relist()
                            raise ApiError(obj.get("code", 500), obj, "WATCH", path)
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            self.desired.pop(obj["metadata"]["uid"], None)
                        else:
                            self.desired[obj["metadata"]["uid"]] = obj
                        self._kick.set()
            except _Relist:
                log.info("watch expired (410): listing again")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("pod watch failed: %s (reconnecting)", e)
                await asyncio.sleep(1)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), 10)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            if not self._listed:
                continue
            self.reconcile()
            self._first_list = False
            self._first_pass.set()

    def reconcile(self) -> None:
        for uid, pod in self.desired.items():
            worker = self.workers.get(uid)
            if worker is None:
                phase = pod.get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    worker = PodWorker(self, pod)
                    worker.terminal = True
                    self.workers[uid] = worker
                    worker.update(pod)
                    continue
                lost = self._first_list and self._was_started(pod)
                worker = PodWorker(self, pod, lost=lost)
                self.workers[uid] = worker
                log.info("pod %s bound here: starting%s", worker.key, " (lost by a previous run)" if lost else "")
                worker.start()
                worker.update(pod)
            else:
                worker.update(pod)
        for uid in [u for u in self.workers if u not in self.desired]:
            worker = self.workers.pop(uid)
            log.info("pod %s is gone from the API: stopping and cleaning up", worker.key)
            worker.kill_now()
            asyncio.create_task(self._cleanup(worker))

    @staticmethod
    def _was_started(pod: dict) -> bool:
        return any("running" in (s.get("state") or {}) or s.get("lastState", {}).get("terminated")
                   for s in pod.get("status", {}).get("containerStatuses") or [])

    async def _cleanup(self, worker: PodWorker) -> None:
        if worker.main:
            try:
                await asyncio.wait_for(asyncio.shield(worker.main), 30)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                pass
        await worker.shutdown()
        if not self.args.keep_pod_dirs:
            await asyncio.to_thread(_rmtree, worker.dir)

    def shutdown(self) -> None:
        """The node goes away: SIGKILL everything, remove the groups, say nothing to the API."""
        log.info("node %s going away: killing %d pods' containers", self.node_name, len(self.workers))
        for worker in self.workers.values():
            worker.deleted = True
            for proc in worker.procs.values():
                from hack.nodeagent.runtime import signal_group
                signal_group(proc.pid, signal.SIGKILL)
            self.cgroups.remove(worker.group)
        self.cgroups.sweep()


class _Relist(Exception):
    pass


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodeagent", description="Lectern's node agent: a kubelet that runs pods as local processes.")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--kubelet-port", type=int, required=True)
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--client-ca", required=True)
    p.add_argument("--api-host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, required=True)
    p.add_argument("--max-grace", type=float, default=10.0)
    p.add_argument("--ready-file")
    p.add_argument("--restart-backoff", type=float, default=10.0,
                   help="first CrashLoopBackOff delay in seconds (kubelet: 10, doubling up to 30x = 5 min)")
    p.add_argument("--housekeeping", type=float, default=2.0, help="seconds between emptyDir usage checks")
    p.add_argument("--keep-pod-dirs", action="store_true", help="keep a deleted pod's folder (logs, volumes)")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    secrets_dir = workdir / ".kubeconfig"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    server, ctx = ssl_from_kubeconfig(Path(args.kubeconfig), secrets_dir)
    loop = asyncio.get_running_loop()
    async with Api(server, ctx) as api:
        agent = Agent(args, api)
        main = asyncio.create_task(agent.run())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        done, _ = await asyncio.wait([main, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        agent.shutdown()
        if main in done and main.exception():
            log.error("agent failed: %r", main.exception())
            return 1
        main.cancel()
        for w in agent.workers.values():
            for t in [w.main, *w._tasks]:
                if t:
                    t.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return asyncio.run(amain(parse_args(argv)))
