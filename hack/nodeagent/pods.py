"""One pod on this node: its containers' lives from image "pull" to the last exit, restarts with
back-off, probes, eviction, termination on deletion, and the status the kubelet would write.

Each regular container runs as a process (init and sidecar containers are not supported: a pod
with initContainers stays Pending with a message saying so). Pods share the host network, as
with `hostNetwork: true`: two pods listening on one port conflict, and probes and podIP are
127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from hack.nodeagent import containerconfig as cc
from hack.nodeagent import runtime, status
from hack.nodeagent.api import ApiError
from hack.nodeagent.cgroups import PodGroup
from hack.nodeagent.images import image_id, repository_of
from hack.nodeagent.logs import tail
from hack.nodeagent.status import ContainerRecord, now
from hack.nodeagent.volumes import PodVolumes, VolumeError, prepare, refresh_token, token_due

if TYPE_CHECKING:
    from hack.nodeagent.agent import Agent

log = logging.getLogger("nodeagent.pods")
UNKNOWN = {"reason": "ContainerStatusUnknown", "exitCode": 137,
           "message": "The container could not be located when the pod was terminated"}


class PodWorker:
    def __init__(self, agent: "Agent", pod: dict, lost: bool = False):
        self.agent, self.pod = agent, pod
        meta = pod["metadata"]
        self.uid, self.ns, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.key = f"{self.ns}/{self.name}"
        self.dir = agent.workdir / "pods" / self.uid
        self.policy = pod["spec"].get("restartPolicy") or "Always"
        self.records = [ContainerRecord(c["name"], c["image"]) for c in pod["spec"]["containers"]]
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.group: PodGroup | None = None
        self.volumes: PodVolumes | None = None
        self.sandbox_ready = False
        self.terminal = False
        self.stopping = asyncio.Event()
        self.stop_grace = 0.0
        self.delete_requested = False
        self.deleted = False
        self.evicted: tuple[str, str] | None = None
        self.disruption: dict | None = None
        self.start_time = pod.get("status", {}).get("startTime") or now()
        self._dirty = asyncio.Event()
        self._written = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._specs: dict[str, dict] = {}      # container -> its current launch spec (exec probes reuse it)
        self._oom_baseline = 0
        self._lost = lost
        self.main: asyncio.Task | None = None

    # ----- what the agent calls ---------------------------------------------------------------

    def start(self) -> None:
        self.main = asyncio.create_task(self._run(), name=f"pod {self.key}")
        self._tasks.append(asyncio.create_task(self._status_writer(), name=f"status {self.key}"))

    def update(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.delete_requested:
            self.delete_requested = True
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            log.info("pod %s marked for deletion (grace %ss, capped at %ss)", self.key, grace, self.agent.max_grace)
            self.request_stop(min(float(grace), self.agent.max_grace))
            if self.main is None or self.main.done():      # already finished: just delete it
                asyncio.create_task(self.agent.finalize_delete(self))

    def request_stop(self, grace: float) -> None:
        if not self.stopping.is_set():
            self.stop_grace = grace
            self.stopping.set()
            for name, proc in list(self.procs.items()):
                asyncio.create_task(runtime.stop(proc, grace), name=f"stop {self.key}/{name}")

    async def evict(self, message: str) -> None:
        """The kubelet's own termination: DisruptionTarget first, so a Job's podFailurePolicy
        can tell it from a crash, then Failed/Evicted."""
        if self.evicted or self.terminal:
            return
        log.info("evicting pod %s: %s", self.key, message)
        self.evicted = ("Evicted", message)
        self.disruption = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                           "message": message, "lastTransitionTime": now(), "lastProbeTime": None}
        await self._write_status()
        self.request_stop(min(2.0, self.agent.max_grace))

    def kill_now(self) -> None:
        """The pod is gone from the API (force-deleted): nothing to report, just stop it."""
        self.deleted = True
        self.request_stop(0)

    def log_file(self, container: str, previous: bool) -> tuple[Path, Any] | None:
        rec = next((r for r in self.records if r.name == container), None)
        if rec is None:
            return None
        run = rec.restart_count - (1 if previous else 0)
        path = self.dir / "logs" / container / f"{run}.log"
        if not path.exists():
            return None
        return path, (lambda: container in self.procs and not previous)

    async def shutdown(self) -> None:
        """The node goes away: no API calls, kill everything now."""
        self.deleted = True
        for t in [self.main, *self._tasks]:
            if t:
                t.cancel()
        for proc in self.procs.values():
            runtime.signal_group(proc.pid, 9)
        self.agent.cgroups.remove(self.group)

    # ----- the pod's life ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._lost:
                self._adopt_lost()
                if self.terminal:
                    self._mark_dirty()
                    await self._finish()
                    return
            if self.pod["spec"].get("initContainers"):
                for r in self.records:
                    r.state = {"waiting": {"reason": "CreateContainerConfigError",
                                           "message": "init containers are not supported by this node agent"}}
                self._mark_dirty()
                await self.stopping.wait()
                self.terminal = True
                self._mark_dirty()
                await self._finish()
                return
            self._mark_dirty()
            if await self._prepare():
                self._tasks.append(asyncio.create_task(self._housekeeping(), name=f"housekeeping {self.key}"))
                await asyncio.gather(*(self._container_loop(i) for i in range(len(self.records))))
            self.terminal = True
            self.sandbox_ready = False
            self._mark_dirty()
            await self._finish()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s: unexpected error", self.key)

    def _adopt_lost(self) -> None:
        """After an agent restart: a container the API saw running is gone, as after a reboot."""
        old = {s["name"]: s for s in self.pod.get("status", {}).get("containerStatuses") or []}
        for r in self.records:
            s = old.get(r.name)
            if not s:
                continue
            r.restart_count, r.image_id = s.get("restartCount", 0), s.get("imageID", "")
            r.last_state = s.get("lastState") or {}
            if "running" in (s.get("state") or {}) or "waiting" in (s.get("state") or {}) and r.last_state:
                r.restart_count += 1
                lost = {"terminated": dict(UNKNOWN)}
                if self.policy == "Never":
                    r.state = lost
                else:
                    r.last_state = lost
                    r.state = {"waiting": {"reason": "ContainerCreating"}}
                log.info("pod %s container %s was running before the agent restarted: %s", self.key, r.name, UNKNOWN["reason"])
            elif "terminated" in (s.get("state") or {}):
                r.state = s["state"]
        if self.policy == "Never" and all(r.kind() == "terminated" for r in self.records):
            self.terminal = True

    async def _finish(self) -> None:
        await self._flush()
        self.agent.cgroups.remove(self.group)
        self.group = None
        if self.delete_requested:
            await self.agent.finalize_delete(self)

    def _set_waiting(self, reason: str, message: str) -> None:
        for r in self.records:
            if r.kind() != "terminated":
                r.state = {"waiting": {"reason": reason, "message": message}}
        self._mark_dirty()

    async def _prepare(self) -> bool:
        """Image, config and volumes, retried with back-off as the kubelet's sync loop does;
        False when the pod is stopped first."""
        delay, pulls = 1.0, 0
        while not self.stopping.is_set():
            try:
                for r, c in zip(self.records, self.pod["spec"]["containers"]):
                    image = self.agent.images.get(repository_of(c["image"]))
                    if image is None:
                        pulls += 1
                        raise _Waiting("ErrImagePull" if pulls == 1 or pulls % 2 else "ImagePullBackOff",
                                       f'Failed to pull image "{c["image"]}": repository {repository_of(c["image"])} '
                                       "is not in this node's image list" if pulls == 1 or pulls % 2 else
                                       f'Back-off pulling image "{c["image"]}"')
                    r.image_id = image_id(repository_of(c["image"]), image)
                if self.volumes is None:
                    try:
                        self.volumes = await prepare(self.pod, self.dir, self.agent.fetcher(self.ns),
                                                     self.agent.token_requester(self.pod), self.agent.allocatable)
                    except VolumeError as e:
                        raise _Waiting("ContainerCreating", str(e)) from None
                if self.group is None:
                    self.group = self._make_group()
                self.sandbox_ready = True
                self._mark_dirty()
                return True
            except _Waiting as w:
                if w.reason in ("ErrImagePull", "ImagePullBackOff") or delay <= 1:
                    log.info("pod %s waiting: %s", self.key, w.reason)
                self._set_waiting(w.reason, w.message)
            except (ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                log.info("pod %s waiting: ContainerCreating (%s)", self.key, e)
                self._set_waiting("ContainerCreating", f"failed to set up the pod: {e}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = min(delay * 2, 10.0)
        return False

    def _make_group(self) -> PodGroup | None:
        limits = {"cpu": None, "mem": None, "req": None}
        cpu_l = cpu_r = mem = 0
        all_cpu = all_mem = True
        for c in self.pod["spec"]["containers"]:
            res = c.get("resources") or {}
            lim, req = res.get("limits") or {}, res.get("requests") or {}
            if "cpu" in lim:
                cpu_l += cc.millicpu(lim["cpu"]) or 0
            else:
                all_cpu = False
            if "memory" in lim:
                mem += cc.bytes_of(lim["memory"]) or 0
            else:
                all_mem = False
            cpu_r += cc.millicpu(req.get("cpu") or lim.get("cpu")) or 0
        limits.update(cpu=cpu_l if all_cpu else None, mem=mem if all_mem else None, req=cpu_r or None)
        group = self.agent.cgroups.create(self.uid, limits["cpu"], limits["req"], limits["mem"])
        if group:
            self._oom_baseline = group.oom_kills()
        return group

    async def _container_spec(self, index: int, rec: ContainerRecord) -> tuple[dict, Path, Path]:
        container = self.pod["spec"]["containers"][index]
        image = self.agent.images[repository_of(container["image"])]
        kube = await cc.kube_env(self.pod, container, self.agent.fetcher(self.ns), self.agent.service_env,
                                 self.agent.allocatable)
        ident = cc.identity(self.pod, container, image)
        argv = cc.argv_of(container, image, kube)
        env = cc.process_env(image, kube, self.name, ident.home)
        logs = self.dir / "logs" / rec.name
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{rec.restart_count}.log"
        term = self.dir / "termination" / f"{rec.name}.{rec.restart_count}"
        term.parent.mkdir(exist_ok=True)
        term.write_bytes(b"")
        os.chown(term, ident.uid, ident.gid)
        os.chmod(term, 0o660)
        mounts = []
        assert self.volumes is not None
        for vm in container.get("volumeMounts") or []:
            base = self.volumes.dirs.get(vm["name"])
            if base is None:
                raise cc.ConfigError(f'volume "{vm["name"]}" not found')
            src = base / vm["subPath"] if vm.get("subPath") else base
            if vm.get("subPath") and not src.exists():
                src.mkdir(parents=True)
            vol = next(v for v in self.pod["spec"].get("volumes") or [] if v["name"] == vm["name"])
            ro = bool(vm.get("readOnly")) or any(k in vol for k in ("secret", "configMap", "projected", "downwardAPI"))
            mounts.append({"source": str(src), "target": vm["mountPath"], "readOnly": ro})
        mounts.append({"source": str(term), "target": container.get("terminationMessagePath") or "/dev/termination-log"})
        sc = container.get("securityContext") or {}
        spec = {"argv": argv, "env": env, "uid": ident.uid, "gid": ident.gid, "groups": ident.groups,
                "workingDir": container.get("workingDir") or image.get("workingDir") or "/",
                "mounts": mounts, "readOnlyRoot": bool(sc.get("readOnlyRootFilesystem")),
                "imagePaths": list(image.get("paths") or []),
                "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
                "cgroups": self.group.procs_files if self.group else []}
        return spec, log_path, term

    async def _container_loop(self, index: int) -> None:
        rec = self.records[index]
        container = self.pod["spec"]["containers"][index]
        backoff = self.agent.restart_backoff
        if rec.kind() == "terminated":          # adopted as finished
            return
        while not self.stopping.is_set():
            try:
                spec, log_path, term = await self._container_spec(index, rec)
                self._specs[rec.name] = spec
            except (cc.ConfigError, ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                message = str(e) if isinstance(e, cc.ConfigError) else f"failed to prepare the container: {e}"
                log.info("pod %s container %s: CreateContainerConfigError: %s", self.key, rec.name, message)
                rec.state = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}
                self._mark_dirty()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 2.0)
                continue
            rec.container_id = f"lectern://{os.urandom(16).hex()}"
            started_at = now()
            started = time.monotonic()
            try:
                proc = await runtime.spawn(spec, log_path)
            except runtime.StartError as e:
                log.info("pod %s container %s: StartError", self.key, rec.name)
                code, reason, message, finished = 128, "StartError", str(e), now()
                returncode = None
            else:
                self.procs[rec.name] = proc
                log.info("pod %s container %s started: pid %s, uid %s, argv[0] %s", self.key, rec.name, proc.pid,
                         spec["uid"], os.path.basename(spec["argv"][0]))
                rec.state = {"running": {"startedAt": started_at}}
                rec.started = not container.get("startupProbe")
                rec.ready = not container.get("readinessProbe") and rec.started
                self._mark_dirty()
                if self.stopping.is_set():   # a stop that came while starting
                    asyncio.create_task(runtime.stop(proc, self.stop_grace))
                probes = asyncio.create_task(self._probe(container, rec, proc))
                returncode = await proc.wait()
                probes.cancel()
                self.procs.pop(rec.name, None)
                finished = now()
                code = runtime.exit_code(returncode)
                oom = self.group is not None and self.group.oom_kills() > self._oom_baseline
                if oom:
                    self._oom_baseline = self.group.oom_kills()   # type: ignore[union-attr]
                reason = "OOMKilled" if oom and code == 137 else ("Completed" if code == 0 else "Error")
                policy = container.get("terminationMessagePolicy") or "File"
                message = status.termination_message(term.read_bytes() if term.exists() else b"", policy, code,
                                                     tail(log_path, status.FALLBACK_LINES))
                log.info("pod %s container %s exited: code %s, reason %s", self.key, rec.name, code, reason)
            rec.ready = False
            rec.started = False
            rec.state = status.terminated(code, reason, message, started_at, finished, rec.container_id)
            self._record(rec, code, reason)
            restart = self.policy == "Always" or (self.policy == "OnFailure" and code != 0)
            if self.stopping.is_set() or not restart:
                self._mark_dirty()
                return
            if time.monotonic() - started > 600:
                backoff = self.agent.restart_backoff
            rec.last_state = rec.state
            rec.restart_count += 1
            delay = 0.0 if rec.restart_count == 1 else backoff
            if delay:
                rec.state = {"waiting": {"reason": "CrashLoopBackOff",
                                         "message": f"back-off {delay:g}s restarting failed container={rec.name} "
                                                    f"pod={self.name}_{self.ns}({self.uid})"}}
                backoff = min(backoff * 2, self.agent.restart_backoff * 30)
            self._mark_dirty()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
        if rec.kind() == "waiting" and rec.last_state.get("terminated"):
            rec.state = rec.last_state
            rec.last_state = {}
            rec.restart_count -= 1

    def _record(self, rec: ContainerRecord, code: int, reason: str) -> None:
        entry = {"pod": self.name, "namespace": self.ns, "uid": self.uid, "container": rec.name,
                 "exitCode": code, "reason": reason, "files": self.volumes.leftovers() if self.volumes else []}
        with (self.agent.workdir / "records.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")

    # ----- probes --------------------------------------------------------------------------

    async def _probe(self, container: dict, rec: ContainerRecord, proc: asyncio.subprocess.Process) -> None:
        startup, readiness, liveness = (container.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe"))
        if startup:
            if not await self._probe_until(startup, container, proc, True):
                await self._fail_probe(container, rec, proc, "startup", startup)
                return
            rec.started = True
            rec.ready = not readiness
            self._mark_dirty()
        tasks = []
        if readiness:
            tasks.append(self._readiness(readiness, container, rec, proc))
        if liveness:
            tasks.append(self._liveness(liveness, container, rec, proc))
        await asyncio.gather(*tasks)

    async def _probe_until(self, probe: dict, container: dict, proc: Any, want: bool) -> bool:
        """Probe until `successThreshold` successes (True) or `failureThreshold` failures (False)."""
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        ok_n = fail_n = 0
        while True:
            if await self._probe_once(probe, container, proc):
                ok_n, fail_n = ok_n + 1, 0
                if ok_n >= probe.get("successThreshold", 1):
                    return True
            else:
                ok_n, fail_n = 0, fail_n + 1
                if fail_n >= probe.get("failureThreshold", 3):
                    return False
            await asyncio.sleep(probe.get("periodSeconds", 10))

    async def _readiness(self, probe: dict, container: dict, rec: ContainerRecord, proc: Any) -> None:
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        ok_n = fail_n = 0
        while True:
            if await self._probe_once(probe, container, proc):
                ok_n, fail_n = ok_n + 1, 0
                if ok_n >= probe.get("successThreshold", 1) and not rec.ready:
                    rec.ready = True
                    log.info("pod %s container %s ready", self.key, rec.name)
                    self._mark_dirty()
            else:
                ok_n, fail_n = 0, fail_n + 1
                if fail_n >= probe.get("failureThreshold", 3) and rec.ready:
                    rec.ready = False
                    log.info("pod %s container %s not ready (readiness probe)", self.key, rec.name)
                    self._mark_dirty()
            await asyncio.sleep(probe.get("periodSeconds", 10))

    async def _liveness(self, probe: dict, container: dict, rec: ContainerRecord, proc: Any) -> None:
        if not await self._probe_until({**probe, "successThreshold": 10**9}, container, proc, False):
            await self._fail_probe(container, rec, proc, "liveness", probe)

    async def _fail_probe(self, container: dict, rec: ContainerRecord, proc: Any, kind: str, probe: dict) -> None:
        grace = probe.get("terminationGracePeriodSeconds", self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        log.info("pod %s container %s failed its %s probe, will be restarted", self.key, rec.name, kind)
        await runtime.stop(proc, min(float(grace), self.agent.max_grace))

    async def _probe_once(self, probe: dict, container: dict, proc: Any) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                scheme = (h.get("scheme") or "HTTP").lower()
                url = f"{scheme}://{h.get('host') or '127.0.0.1'}:{self._port(container, h['port'])}{h.get('path') or '/'}"
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                async with aiohttp.ClientSession() as s, s.get(url, headers=headers, ssl=ctx if scheme == "https" else None,
                                                                 timeout=aiohttp.ClientTimeout(total=timeout),
                                                                 allow_redirects=False) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe:
                t = probe["tcpSocket"]
                _, w = await asyncio.wait_for(asyncio.open_connection(t.get("host") or "127.0.0.1",
                                                                      self._port(container, t["port"])), timeout)
                w.close()
                return True
            if "exec" in probe:
                spec = {**self._specs[container["name"]], "argv": probe["exec"]["command"], "join_pid": proc.pid,
                        "mounts": [], "readOnlyRoot": False}
                p = await runtime.spawn(spec, None)
                try:
                    return await asyncio.wait_for(p.wait(), timeout) == 0
                except asyncio.TimeoutError:
                    runtime.signal_group(p.pid, 9)
                    return False
            return True       # grpc probes are not supported: counted as success
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError, runtime.StartError, cc.ConfigError):
            return False

    @staticmethod
    def _port(container: dict, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise OSError(f"no port named {port}")

    # ----- eviction and tokens ---------------------------------------------------------------

    async def _housekeeping(self) -> None:
        assert self.volumes is not None
        pod_sc = self.pod["spec"].get("securityContext") or {}
        run_as = (self.pod["spec"]["containers"][0].get("securityContext") or {}).get("runAsUser", pod_sc.get("runAsUser"))
        fs_group = int(pod_sc["fsGroup"]) if pod_sc.get("fsGroup") is not None else -1
        while not self.terminal:
            await asyncio.sleep(self.agent.housekeeping)
            for name, limit in self.volumes.size_limits.items():
                used = await asyncio.to_thread(self.volumes.usage, name)
                if used > limit and self.procs:
                    await self.evict(f'Usage of EmptyDir volume "{name}" exceeds the limit "{_quantity(limit)}". ')
            for token in self.volumes.tokens:
                if token_due(token):
                    with contextlib.suppress(VolumeError):
                        await refresh_token(self.pod, token, self.agent.token_requester(self.pod), run_as, fs_group)

    # ----- status ------------------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._written.clear()
        self._dirty.set()

    async def _flush(self) -> None:
        if self.deleted:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._written.wait(), 30)

    def api_status(self) -> dict[str, Any]:
        phase = status.phase(self.records, self.policy, self.terminal)
        if self.evicted and self.terminal:
            phase = "Failed"
        previous = self.pod.get("status", {}).get("conditions") or []
        conds = status.conditions(self.records, phase, self.sandbox_ready, previous)
        if self.disruption:
            conds.append(self.disruption)
        body: dict[str, Any] = {"phase": phase, "conditions": conds, "hostIP": "127.0.0.1",
                                "hostIPs": [{"ip": "127.0.0.1"}], "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                                "startTime": self.start_time,
                                "containerStatuses": [r.to_api() for r in self.records]}
        if self.evicted:
            body["reason"], body["message"] = self.evicted
        return body

    async def _write_status(self) -> None:
        body = {"metadata": {"uid": self.uid}, "status": self.api_status()}
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status"
        self.pod = await self.agent.api.patch(path, body)

    async def _status_writer(self) -> None:
        delay = 0.5
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.deleted:
                self._written.set()
                continue
            try:
                await self._write_status()
                delay = 0.5
                if not self._dirty.is_set():
                    self._written.set()
            except ApiError as e:
                if e.status in (404, 409, 422):     # gone, or a new pod with this name (uid precondition)
                    log.info("pod %s: status not written (%s): the pod is gone", self.key, e.status)
                    self.deleted = True
                    self._written.set()
                    continue
                log.warning("pod %s: status write failed: %s", self.key, e)
                self._dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                log.warning("pod %s: status write failed: %s", self.key, e)
                self._dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
            await asyncio.sleep(0.05)   # coalesce bursts


class _Waiting(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def _quantity(n: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)
