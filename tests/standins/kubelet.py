"""A local kubelet + Job controller for the API-server emulator (tests/standins/kube.py).

The Job controller follows the real one (pkg/controller/job, Kubernetes 1.31+ semantics) for
NonIndexed Jobs: it creates pods (`<job>-xxxxx`, owner reference to the Job, the template's
labels plus `batch.kubernetes.io/job-name`/`job-name`/controller-uid, the
`batch.kubernetes.io/job-tracking` finalizer), counts terminated pods into `status.succeeded` /
`status.failed` and then releases their finalizer, keeps `active`, `ready`, `terminating`,
`startTime`, `completionTime` and the conditions (`FailureTarget`/`SuccessCriteriaMet` at once,
`Failed`/`Complete` once no pod is left running), retries with exponential backoff up to
`backoffLimit`, evaluates `podFailurePolicy` rules in order (FailJob / Ignore / Count, on exit
codes or pod conditions), enforces `activeDeadlineSeconds`, honours `spec.suspend`, follows
`podReplacementPolicy` and deletes finished Jobs after `ttlSecondsAfterFinished`.

The kubelet binds every unscheduled pod to its node and runs the pod's container
(`command` + `args`, `$(VAR)` expanded) as a local subprocess in its own session:

* env: literal values, `valueFrom.secretKeyRef` / `configMapKeyRef` (a missing, non-optional
  one keeps the pod Pending in `CreateContainerConfigError`, as the real kubelet does),
  `fieldRef` (metadata.name/namespace/uid/labels/annotations, spec.nodeName, status.podIP),
  `envFrom`; plus PATH (the venv's bin first), HOME, `LECTERN_TERMINATION_LOG` (a file whose
  content becomes `state.terminated.message`, `FallbackToLogsOnError` honoured) and — when a
  service-account token would be mounted — `LECTERN_KUBE_API_URL` (the in-cluster API server
  stand-in). Extra variables: `Kubelet(extra_env=...)`.
* `emptyDir` volumes are per-pod scratch directories; any env value, command or arg that
  starts with a mount path is rewritten to the scratch directory (so `TMPDIR=/scratch` works);
  `sizeLimit` is enforced like the kubelet's eviction (pod Failed, reason Evicted).
* status: Pending -> Running -> Succeeded/Failed with `containerStatuses` (running /
  terminated with exitCode, reason Completed/Error/StartError, message, timestamps) and the
  PodScheduled/Initialized/ContainersReady/Ready conditions.
* deleting a pod (by anyone: a watchdog, GC, the Job controller) sends SIGTERM to the process
  group, SIGKILL after the grace period (capped by `max_grace`), marks the pod Failed (exit
  code 128+signal unless the process exits by itself) and lets the Job controller count it.
* `evict(pod)` goes through the emulator's Eviction API (DisruptionTarget=True,
  EvictionByEvictionAPI, graceful delete): a policy rule `Ignore` on DisruptionTarget then
  retries without spending the backoff budget. `kill(pod, signal)` only signals the process.

Test hooks: `override_command(fn)` (fn(job, pod, container) -> argv or None for the real
command), `fake(exit_code, message, sleep)` builds such an argv, `auto_run=False` plus
`finish(job, exit_code, message)` drive completion by hand, `logs(pod)`, `scratch_dir(pod)`,
`wait_for_pod(job)`.

Not emulated: CPU/memory limits (processes are not throttled), init/sidecar containers, probes,
images (a container without `command` runs `image_entrypoints[image]` or fails with
StartError), Indexed Jobs, successPolicy, backoffLimitPerIndex, restartPolicy OnFailure
restarts are in-place retries without CrashLoopBackOff status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tests.standins.kube import ApiError, KubeEmulator, now_iso

TRACKING = "batch.kubernetes.io/job-tracking"
CommandHook = Callable[[dict | None, dict, dict], list[str] | None]


def _ts(text: str) -> float:
    return datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()


def _cond(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    t = now_iso()
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": t, "lastTransitionTime": t}


def _has_cond(obj: dict, type_: str, status: str = "True") -> bool:
    return any(c.get("type") == type_ and c.get("status") == status for c in obj.get("status", {}).get("conditions") or [])


def _owner_job(pod: dict) -> tuple[str | None, str] | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return (pod["metadata"].get("namespace"), ref["name"])
    return None


class _PodRun:
    """One pod's container process on this node."""

    def __init__(self, ns: str | None, name: str, uid: str, root: pathlib.Path):
        self.ns, self.name, self.uid, self.root = ns, name, uid, root
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self.manual: asyncio.Future | None = None   # auto_run=False: (exit_code, message)
        self.signalled: int | None = None
        self.evicted_for: str | None = None
        self.deleting = False
        self.log_path = root / "container.log"
        self.termination_log = root / "termination-log"


class Kubelet:
    def __init__(self, kube: KubeEmulator, *, auto_run: bool = True, node_name: str = "lectern-local",
                 backoff: tuple[float, float] = (0.1, 1.0), max_grace: float = 5.0,
                 extra_env: dict[str, str] | None = None, image_entrypoints: dict[str, list[str]] | None = None,
                 workdir: str | os.PathLike | None = None):
        self.kube, self.auto_run, self.node_name = kube, auto_run, node_name
        self.backoff, self.max_grace = backoff, max_grace
        self.extra_env = dict(extra_env or {})
        self.image_entrypoints = dict(image_entrypoints or {})
        self._own_workdir = workdir is None
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="lectern-kubelet-"))
        self._hook: CommandHook | None = None
        self._runs: dict[tuple[str | None, str], _PodRun] = {}
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._job_state: dict[str, dict[str, Any]] = {}   # per job uid: last failure time, timers
        self.errors: list[BaseException] = []

    # ----- lifecycle --------------------------------------------------------------------

    def start(self) -> "Kubelet":
        self.kube.graceful_pods = True
        self.kube.log_provider = lambda ns, name: self.logs(name, ns)
        self.kube.call(self._start())
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()

        def listener(etype: str, obj: dict, old: dict | None) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, (etype, obj))
        self._unsubscribe = self.kube.subscribe(listener)
        self._tasks.append(asyncio.create_task(self._main()))
        # Whatever exists already (e.g. a kubelet restarted on a live emulator).
        for obj in self.kube.iter_objects():
            if obj.get("kind") in ("Job", "Pod"):
                self._queue.put_nowait(("ADDED", obj))

    def stop(self) -> None:
        try:
            self.kube.call(self._stop(), timeout=30)
        finally:
            self.kube.graceful_pods = False
            self.kube.log_provider = None
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        if self.errors:
            raise self.errors[0]

    async def _stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        for run in list(self._runs.values()):
            self._signal(run, signal.SIGKILL)
        for run in list(self._runs.values()):
            if run.task:
                run.task.cancel()
                with contextlib.suppress(BaseException):
                    await run.task
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t

    # ----- test hooks --------------------------------------------------------------------

    def override_command(self, hook: CommandHook | list[str] | None) -> None:
        """hook(job, pod, container) -> argv (or None: the pod's own command). A list = always that."""
        self._hook = (lambda job, pod, c, argv=hook: list(argv)) if isinstance(hook, list) else hook

    @staticmethod
    def fake(exit_code: int = 0, message: str | dict | None = None, sleep: float = 0.0, stdout: str = "") -> list[str]:
        """argv of a short-lived stand-in process: sleeps, prints, writes the termination message, exits."""
        msg = json.dumps(message) if isinstance(message, dict) else message
        code = (f"import os, sys, time\ntime.sleep({sleep!r})\nsys.stdout.write({stdout!r})\n"
                f"msg = {msg!r}\n"
                "if msg is not None:\n"
                "    open(os.environ['LECTERN_TERMINATION_LOG'], 'w').write(msg)\n"
                f"sys.exit({exit_code})\n")
        return [sys.executable, "-c", code]

    def evict(self, pod: str, namespace: str | None = None) -> None:
        """The Eviction API on the pod (DisruptionTarget, graceful delete; the kubelet kills it)."""
        self.kube.evict(pod, namespace or self._ns_of(pod))

    def kill(self, pod: str, sig: int = signal.SIGTERM, namespace: str | None = None) -> None:
        """Signal the pod's process group (a crash, an OOM kill: counted as a failure)."""
        run = self._runs[(namespace or self._ns_of(pod), pod)]
        self.kube.loop.call_soon_threadsafe(self._signal, run, sig)

    def finish(self, job: str, exit_code: int = 0, message: str | dict | None = None,
               namespace: str | None = None, timeout: float = 10) -> str:
        """auto_run=False: end the running pod of `job` with this exit code/message; returns the pod."""
        pod = self.wait_for_pod(job, namespace, timeout=timeout)
        return self.finish_pod(pod["metadata"]["name"], exit_code, message, pod["metadata"]["namespace"])

    def finish_pod(self, pod: str, exit_code: int = 0, message: str | dict | None = None,
                   namespace: str | None = None) -> str:
        run = self._runs[(namespace or self._ns_of(pod), pod)]
        msg = json.dumps(message) if isinstance(message, dict) else message
        assert run.manual is not None, "finish() needs Kubelet(auto_run=False)"
        self.kube.loop.call_soon_threadsafe(lambda: run.manual.done() or run.manual.set_result((exit_code, msg)))
        return pod

    def wait_for_pod(self, job: str, namespace: str | None = None, phase: str = "Running",
                     timeout: float = 10) -> dict:
        """The first pod of `job` in `phase` (Running: process started / ready to finish)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pod in self.kube.list("v1/pods", namespace, labels=f"batch.kubernetes.io/job-name={job}"):
                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                if pod.get("status", {}).get("phase") == phase and not pod["metadata"].get("deletionTimestamp") \
                        and (phase != "Running" or key in self._runs):
                    return pod
            time.sleep(0.02)
        raise TimeoutError(f"no {phase} pod of job {job} within {timeout}s")

    def logs(self, pod: str, namespace: str | None = None) -> str:
        for (ns, name), run in self._runs.items():
            if name == pod and (namespace is None or ns == namespace):
                return run.log_path.read_text(errors="replace") if run.log_path.exists() else ""
        path = self.workdir / (namespace or "") / pod / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def scratch_dir(self, pod: str, volume: str, namespace: str | None = None) -> pathlib.Path:
        return self.workdir / (namespace or self._ns_of(pod) or "") / pod / "volumes" / volume

    def _ns_of(self, pod: str) -> str | None:
        matches = [ns for (ns, name) in self._runs if name == pod]
        if matches:
            return matches[0]
        found = [p for p in self.kube.list("v1/pods") if p["metadata"]["name"] == pod]
        return found[0]["metadata"]["namespace"] if found else None

    # ----- event loop --------------------------------------------------------------------

    async def _main(self) -> None:
        assert self._queue is not None
        while True:
            etype, obj = await self._queue.get()
            try:
                if obj.get("kind") == "Pod" and obj.get("apiVersion") == "v1":
                    self._on_pod(etype, obj)
                    owner = _owner_job(obj)
                    if owner:
                        self._sync_job(*owner)
                        self._release_orphan(obj)
                elif obj.get("kind") == "Job" and obj.get("apiVersion", "").startswith("batch/"):
                    self._sync_job(obj["metadata"]["namespace"], obj["metadata"]["name"])
            except ApiError:
                pass  # raced with a deletion or a concurrent write: the next event resyncs
            except Exception as e:  # a stand-in bug: keep going, re-raised by stop() in the test
                logging.getLogger(__name__).exception("kubelet/job-controller error")
                self.errors.append(e)

    def _later(self, delay: float, ns: str | None, job: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, delay), lambda: self._queue.put_nowait(
            ("SYNC", {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"namespace": ns, "name": job}})))

    # ----- the kubelet -------------------------------------------------------------------

    def _on_pod(self, etype: str, pod: dict) -> None:
        meta = pod["metadata"]
        key = (meta.get("namespace"), meta["name"])
        run = self._runs.get(key)
        if etype == "DELETED":
            if run is not None and run.uid == meta["uid"]:
                self._signal(run, signal.SIGKILL)
                self._runs.pop(key, None)
            return
        current = self.kube.get("v1/pods", meta["name"], meta.get("namespace"))
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        pod = current
        phase = pod.get("status", {}).get("phase")
        if meta.get("deletionTimestamp"):
            if run is not None and run.uid == meta["uid"] and run.proc is not None:
                grace = min(float(meta.get("deletionGracePeriodSeconds") or 0), self.max_grace)
                if run.signalled is None:
                    self._signal(run, signal.SIGTERM)
                    asyncio.get_running_loop().call_later(grace, self._signal, run, signal.SIGKILL)
            elif run is not None and run.manual is not None and not run.manual.done():
                run.manual.set_result((143, None))
            elif run is not None and phase not in ("Succeeded", "Failed"):
                run.deleting = True  # not started yet: _execute checks this
            elif run is None and phase not in ("Succeeded", "Failed"):
                # Deleted before this kubelet ran it: it goes to a terminal phase first.
                tmp = _PodRun(meta.get("namespace"), meta["name"], meta["uid"], self.workdir / "unstarted")
                self._terminated(tmp, pod, pod["spec"]["containers"][0]["name"], 137, "ContainerStatusUnknown",
                                 "The container could not be located when the pod was terminated", None)
            else:
                self._finalize_pod(pod)
            return
        if phase in ("Succeeded", "Failed") or run is not None:
            return
        spec = pod.get("spec", {})
        if spec.get("nodeName") not in (None, self.node_name):
            return
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        root = self.workdir / (meta.get("namespace") or "") / meta["name"]
        root.mkdir(parents=True, exist_ok=True)
        run = _PodRun(meta.get("namespace"), meta["name"], meta["uid"], root)
        self._runs[key] = run
        run.task = asyncio.create_task(self._run_pod(run))

    def _finalize_pod(self, pod: dict) -> None:
        """The kubelet's final delete of a terminated, deleted pod (finalizers may still hold it)."""
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.kube._delete(self.kube._type("", "v1", "pods"), meta.get("namespace"), meta["name"], {"gracePeriodSeconds": 0})
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            run = self._runs.pop((meta.get("namespace"), meta["name"]), None)
            if run:
                shutil.rmtree(run.root / "volumes", ignore_errors=True)

    def _signal(self, run: _PodRun, sig: int) -> None:
        if run.proc is not None and run.proc.returncode is None:
            if run.signalled is None or sig == signal.SIGKILL:
                run.signalled = sig
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, sig)

    def _pod_status(self, run: _PodRun, status: dict) -> dict | None:
        pods = self.kube._type("", "v1", "pods")
        try:
            with self.kube._mutex:
                cur = self.kube._get(pods, run.ns, run.name)
                if cur["metadata"]["uid"] != run.uid:
                    return None
                merged = {**cur.get("status", {}), **status}
                if "conditions" in status:  # keep conditions others set (DisruptionTarget, ...)
                    ours = {c["type"] for c in status["conditions"]}
                    merged["conditions"] = status["conditions"] + [
                        c for c in cur.get("status", {}).get("conditions") or [] if c.get("type") not in ours]
                return self.kube._update(pods, run.ns, run.name, lambda o: {**o, "status": merged}, "status")
        except ApiError:
            return None

    def _conditions(self, pod: dict, ready: bool, extra: dict[str, tuple[str, str]] | None = None) -> list[dict]:
        kept = [c for c in pod.get("status", {}).get("conditions") or []
                if c.get("type") not in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        t = now_iso()
        conds = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                 {"type": "Initialized", "status": "True", "lastTransitionTime": t}]
        for type_ in ("ContainersReady", "Ready"):
            c = {"type": type_, "status": "True" if ready else "False", "lastTransitionTime": t}
            if not ready and extra and type_ in extra:
                c["reason"], c["message"] = extra[type_]
            conds.append(c)
        return conds + kept

    async def _run_pod(self, run: _PodRun) -> None:
        try:
            await self._run_pod_inner(run)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.errors.append(e)
            raise

    async def _run_pod_inner(self, run: _PodRun) -> None:
        pod = self.kube.get("v1/pods", run.name, run.ns)
        if pod is None:
            return
        if not pod["spec"].get("nodeName"):  # the scheduler's binding
            with contextlib.suppress(ApiError):
                self.kube._update(self.kube._type("", "v1", "pods"), run.ns, run.name,
                                  lambda o: {**o, "spec": {**o["spec"], "nodeName": self.node_name}}, None)
        container = pod["spec"]["containers"][0]
        cname = container["name"]
        # Container config: env (secrets may not exist yet -> CreateContainerConfigError, retried).
        while True:
            pod = self.kube.get("v1/pods", run.name, run.ns)
            if pod is None or pod["metadata"]["uid"] != run.uid:
                return
            if pod["metadata"].get("deletionTimestamp"):
                self._terminated(run, pod, cname, 137, "ContainerStatusUnknown", "The container could not be located when the pod was terminated", None)
                return
            try:
                env, argv, tmp_map = self._container_config(pod, container, run)
                break
            except LookupError as e:
                self._pod_status(run, {"phase": "Pending", "conditions": self._conditions(pod, False, {
                    "ContainersReady": ("ContainersNotReady", f"containers with unready status: [{cname}]"),
                    "Ready": ("ContainersNotReady", f"containers with unready status: [{cname}]")}),
                    "containerStatuses": [{"name": cname, "image": container.get("image", ""), "ready": False, "restartCount": 0,
                                           "started": False, "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}}]})
                await asyncio.sleep(0.2)
        started = now_iso()
        restarts = 0
        while True:
            run.signalled = None
            run.termination_log.write_text("")
            exit_code, message, reason = await self._execute(run, pod, container, argv, env, started, restarts)
            pod = self.kube.get("v1/pods", run.name, run.ns) or pod
            policy = pod["spec"].get("restartPolicy", "Always")
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            if deleting or policy == "Never" or (policy == "OnFailure" and exit_code == 0) or run.evicted_for:
                break
            restarts += 1  # OnFailure/Always: restart in place, with a short backoff
            await asyncio.sleep(min(self.backoff[0] * 2 ** (restarts - 1), self.backoff[1]))
        self._terminated(run, pod, cname, exit_code, reason, message, started, restarts)

    def _terminated(self, run: _PodRun, pod: dict, cname: str, exit_code: int, reason: str,
                    message: str | None, started: str | None, restarts: int = 0) -> None:
        container = pod["spec"]["containers"][0]
        terminated = {"exitCode": exit_code, "reason": reason, "finishedAt": now_iso(),
                      "containerID": f"local://{run.uid}"}
        if started:
            terminated["startedAt"] = started
        if message:
            terminated["message"] = message
        status: dict[str, Any] = {
            "phase": "Succeeded" if exit_code == 0 and not run.evicted_for else "Failed",
            "conditions": self._conditions(pod, False, {"ContainersReady": ("PodCompleted" if exit_code == 0 else "PodFailed", ""),
                                                        "Ready": ("PodCompleted" if exit_code == 0 else "PodFailed", "")}),
            "containerStatuses": [{"name": cname, "image": container.get("image", ""), "imageID": "", "ready": False,
                                   "started": False, "restartCount": restarts, "state": {"terminated": terminated}}]}
        if run.evicted_for:
            status.update(reason="Evicted", message=run.evicted_for)
            status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                                         "message": run.evicted_for, "lastTransitionTime": now_iso()})
        self._pod_status(run, status)
        fresh = self.kube.get("v1/pods", run.name, run.ns)
        if fresh is not None and fresh["metadata"].get("deletionTimestamp"):
            self._finalize_pod(fresh)

    def _container_config(self, pod: dict, container: dict, run: _PodRun) -> tuple[dict, list[str], dict]:
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta.get("namespace")
        # emptyDir scratch volumes, mapped by mount path.
        mounts: dict[str, pathlib.Path] = {}
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            vol = vols.get(m["name"], {})
            if "emptyDir" in vol:
                local = run.root / "volumes" / m["name"]
                local.mkdir(parents=True, exist_ok=True)
                mounts[m["mountPath"].rstrip("/") or "/"] = local

        def rewrite(value: str) -> str:
            for path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == path or value.startswith(path + "/"):
                    return str(local) + value[len(path):]
            return value

        def secret_or_cm(kind: str, name: str, key: str | None, optional: bool) -> Any:
            obj = self.kube.get("secrets" if kind == "secret" else "configmaps", name, ns)
            if obj is None:
                if optional:
                    return None
                raise LookupError(f'{kind} "{name}" not found')
            data = dict(obj.get("data") or {})
            if kind == "secret":
                data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            if key is None:
                return data
            if key not in data:
                if optional:
                    return None
                raise LookupError(f"couldn't find key {key} in {kind.capitalize() if kind != 'configmap' else 'ConfigMap'} {ns}/{name}")
            return data[key]

        def field(path: str) -> str:
            if m := re.match(r"metadata\.(labels|annotations)\['(.+)'\]", path):
                return (meta.get(m[1]) or {}).get(m[2], "")
            return {"metadata.name": meta["name"], "metadata.namespace": ns or "", "metadata.uid": meta["uid"],
                    "spec.nodeName": self.node_name, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                    "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}.get(path, "")

        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            ref = src.get("secretRef") or src.get("configMapRef") or {}
            kind = "secret" if "secretRef" in src else "configmap"
            for k, v in (secret_or_cm(kind, ref.get("name"), None, bool(ref.get("optional"))) or {}).items():
                env[src.get("prefix", "") + k] = v

        def expand(text: str) -> str:
            return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)

        for item in container.get("env") or []:
            vf = item.get("valueFrom")
            if vf is None:
                env[item["name"]] = expand(str(item.get("value", "")))
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                value = secret_or_cm("secret" if "secretKeyRef" in vf else "configmap", ref["name"], ref["key"], bool(ref.get("optional")))
                if value is not None:
                    env[item["name"]] = value
            elif "fieldRef" in vf:
                env[item["name"]] = field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                res = vf["resourceFieldRef"]["resource"]
                kind_, _, what = res.partition(".")
                env[item["name"]] = str((container.get("resources", {}).get(kind_) or {}).get(what, "0"))
        env = {k: rewrite(v) for k, v in env.items()}

        hook_argv = self._hook(self._job_of(pod), pod, container) if self._hook else None
        if hook_argv is not None:
            argv = list(hook_argv)
        else:
            command = container.get("command") or self._entrypoint(container.get("image", ""))
            argv = [rewrite(expand(a)) for a in [*(command or []), *(container.get("args") or [])]]
        venv_bin = str(pathlib.Path(sys.executable).parent)
        base = {"PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
                "HOME": str(run.root), "LANG": os.environ.get("LANG", "C.UTF-8"), "HOSTNAME": meta["name"],
                "LECTERN_TERMINATION_LOG": str(run.termination_log)}
        if self._token_mounted(pod):
            base["LECTERN_KUBE_API_URL"] = self.kube.url
        return {**base, **self.extra_env, **env}, argv, mounts

    def _entrypoint(self, image: str) -> list[str] | None:
        for prefix, argv in self.image_entrypoints.items():
            if image.split("@")[0].split(":")[0].endswith(prefix) or image.startswith(prefix):
                return argv
        return None

    def _token_mounted(self, pod: dict) -> bool:
        automount = pod["spec"].get("automountServiceAccountToken")
        if automount is None:
            sa = self.kube.get("serviceaccounts", pod["spec"].get("serviceAccountName", "default"), pod["metadata"].get("namespace"))
            automount = (sa or {}).get("automountServiceAccountToken", True)
        return automount is not False

    def _job_of(self, pod: dict) -> dict | None:
        owner = _owner_job(pod)
        return self.kube.get("batch/v1/jobs", owner[1], owner[0]) if owner else None

    async def _execute(self, run: _PodRun, pod: dict, container: dict, argv: list[str], env: dict,
                       started: str, restarts: int) -> tuple[int, str | None, str]:
        cname = container["name"]

        def running() -> None:
            self._pod_status(run, {"phase": "Running", "startTime": pod.get("status", {}).get("startTime") or started,
                                   "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
                                   "conditions": self._conditions(pod, True),
                                   "containerStatuses": [{"name": cname, "image": container.get("image", ""), "imageID": "",
                                                          "ready": True, "started": True, "restartCount": restarts,
                                                          "containerID": f"local://{run.uid}",
                                                          "state": {"running": {"startedAt": now_iso()}}}]})
        if run.deleting:
            return 137, None, "Error"
        if not self.auto_run:
            run.manual = asyncio.get_running_loop().create_future()
            running()
            exit_code, message = await run.manual
            return exit_code, message, "Completed" if exit_code == 0 else "Error"
        if not argv:
            return 128, "failed to start container: no command (the local kubelet runs no images)", "StartError"
        try:
            with open(run.log_path, "ab") as log:
                run.proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=str(run.root), stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            return 128, f"failed to create containerd task: exec: {argv[0]!r}: {e.strerror}", "StartError"
        running()
        if run.deleting:
            self._signal(run, signal.SIGTERM)
        watchdog = asyncio.create_task(self._watch_size(run, pod, container))
        try:
            rc = await run.proc.wait()
        finally:
            watchdog.cancel()
        exit_code = 128 - rc if rc < 0 else rc
        self._record_leftovers(run, exit_code)
        message = run.termination_log.read_bytes()[:4096].decode(errors="replace") or None
        if not message and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = run.log_path.read_text(errors="replace").splitlines()[-80:] if run.log_path.exists() else []
            message = "\n".join(lines)[-2048:] or None
        return exit_code, message, "Completed" if exit_code == 0 else "Error"

    @staticmethod
    def _record_leftovers(run: _PodRun, exit_code: int) -> None:
        """What the container left in its emptyDir volumes when it exited, appended to
        `<pod dir>/leftovers.jsonl` (the pod dir outlives the pod, as its log does; read by
        tests/standins/cluster.py `leftovers`): the volumes
        themselves go with the pod, so this is the only way to see whether the program cleaned
        up after itself rather than relying on the kubelet to."""
        volumes = run.root / "volumes"
        files = sorted(str(f.relative_to(volumes)) for f in volumes.rglob("*") if not f.is_dir()) if volumes.is_dir() else []
        with open(run.root / "leftovers.jsonl", "a") as out:
            out.write(json.dumps({"exitCode": exit_code, "files": files}) + "\n")

    async def _watch_size(self, run: _PodRun, pod: dict, container: dict) -> None:
        """emptyDir sizeLimit: the kubelet evicts a pod whose scratch volume grows past it."""
        limits = {}
        for v in pod["spec"].get("volumes") or []:
            limit = (v.get("emptyDir") or {}).get("sizeLimit")
            if limit:
                limits[v["name"]] = _quantity(limit)
        if not limits:
            return
        while True:
            await asyncio.sleep(0.25)
            for name, limit in limits.items():
                d = run.root / "volumes" / name
                used = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0
                if used > limit:
                    run.evicted_for = f"Usage of EmptyDir volume \"{name}\" exceeds the limit \"{limit}\"."
                    self._signal(run, signal.SIGKILL)
                    return

    # ----- the Job controller --------------------------------------------------------------

    def _sync_job(self, ns: str | None, name: str) -> None:
        kube = self.kube
        pods_t = kube._type("", "v1", "pods")
        job = kube.get("batch/v1/jobs", name, ns)
        if job is None:
            return
        uid, spec = job["metadata"]["uid"], job["spec"]
        state = self._job_state.setdefault(uid, {"last_failure": 0.0, "consecutive": 0})
        status = copy.deepcopy(job.get("status") or {})
        conds = status.setdefault("conditions", [])
        has = lambda t: any(c["type"] == t and c["status"] == "True" for c in conds)
        pods = [p for p in kube.list("v1/pods", ns, labels=f"batch.kubernetes.io/controller-uid={uid}")
                if any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences") or [])]
        finished = has("Complete") or has("Failed")
        failure_target = next((c for c in conds if c["type"] == "FailureTarget" and c["status"] == "True"), None)
        success_target = has("SuccessCriteriaMet")

        # 1. Count terminated pods that still carry our finalizer, then release them.
        fail_job: tuple[str, str] | None = None
        for p in pods:
            phase = p.get("status", {}).get("phase")
            if TRACKING not in (p["metadata"].get("finalizers") or []):
                continue
            if phase in ("Succeeded", "Failed") and not finished:
                if phase == "Succeeded":
                    status["succeeded"] = status.get("succeeded", 0) + 1
                    state["consecutive"] = 0
                else:
                    action, why = self._pod_failure_action(spec.get("podFailurePolicy"), p)
                    if action == "FailJob" and not failure_target:
                        fail_job = ("PodFailurePolicy", why)
                    if action != "Ignore":
                        status["failed"] = status.get("failed", 0) + 1
                        state["consecutive"] += 1
                    state["last_failure"] = time.monotonic()
            if phase in ("Succeeded", "Failed") or finished:
                fins = [f for f in p["metadata"]["finalizers"] if f != TRACKING]
                with contextlib.suppress(ApiError):
                    kube._patch(pods_t, ns, p["metadata"]["name"], "application/merge-patch+json",
                                {"metadata": {"finalizers": fins or None}}, None, {}, [])
        if finished:
            self._ttl(job)
            return

        live = [p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        active = [p for p in live if not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in live if p["metadata"].get("deletionTimestamp")]

        def kill_all() -> None:
            for p in active:
                with contextlib.suppress(ApiError):
                    kube._delete(pods_t, ns, p["metadata"]["name"], {})

        # 2. Suspension.
        if spec.get("suspend"):
            kill_all()
            if not has("Suspended"):
                conds.append(_cond("Suspended", "JobSuspended", "Job suspended"))
            status.pop("startTime", None)
            status.update(active=0, ready=0, terminating=len(terminating) + len(active))
            return self._write_status(job, status)
        if any(c["type"] == "Suspended" and c["status"] == "True" for c in conds):
            for c in conds:
                if c["type"] == "Suspended":
                    c.update(status="False", reason="JobResumed", message="Job resumed", lastTransitionTime=now_iso())
        status.setdefault("startTime", now_iso())

        # 3. Terminal decisions: FailureTarget / SuccessCriteriaMet first, the final condition
        #    once no pod is left running (Kubernetes >= 1.31).
        if not failure_target and not success_target:
            deadline = spec.get("activeDeadlineSeconds")
            if fail_job is None and status.get("failed", 0) > spec.get("backoffLimit", 6):
                fail_job = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            if fail_job is None and deadline and time.time() - _ts(status["startTime"]) >= deadline:
                fail_job = ("DeadlineExceeded", "Job was active longer than specified deadline")
            if fail_job is not None:
                failure_target = _cond("FailureTarget", *fail_job)
                conds.append(failure_target)
            elif status.get("succeeded", 0) >= spec.get("completions", 1):
                success_target = True
                conds.append(_cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"))
            elif deadline and not state.get("deadline_timer"):
                state["deadline_timer"] = True
                self._later(_ts(status["startTime"]) + deadline - time.time() + 0.05, ns, name)
        if failure_target or success_target:
            kill_all()
            if not live:
                if failure_target:
                    conds.append(_cond("Failed", failure_target["reason"], failure_target["message"]))
                else:
                    conds.append(_cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods"))
                    status["completionTime"] = now_iso()
            status.update(active=0, ready=0, terminating=len(live))
            return self._write_status(job, status)

        # 4. Keep the wanted number of pods running (after the failure backoff).
        want = min(spec.get("parallelism", 1), spec.get("completions", 1) - status.get("succeeded", 0)) - len(active)
        replace_ok = spec.get("podReplacementPolicy", "TerminatingOrFailed") == "TerminatingOrFailed" or not terminating
        if want > 0 and replace_ok:
            delay = 0.0
            if state["consecutive"]:
                delay = min(self.backoff[0] * 2 ** (state["consecutive"] - 1), self.backoff[1])
                delay -= time.monotonic() - state["last_failure"]
            if delay > 0:
                self._later(delay, ns, name)
            else:
                for _ in range(want):
                    active.append(self._create_pod(job))
        status.update(active=len(active), terminating=len(terminating),
                      ready=sum(1 for p in active if _has_cond(p, "Ready")))
        self._write_status(job, status)

    def _release_orphan(self, pod: dict) -> None:
        """The Job controller drops its tracking finalizer from pods whose Job is gone."""
        ref = next(r for r in pod["metadata"].get("ownerReferences") or [] if r.get("kind") == "Job" and r.get("controller"))
        cur = self.kube.get("v1/pods", pod["metadata"]["name"], pod["metadata"].get("namespace"))
        if cur is None or TRACKING not in (cur["metadata"].get("finalizers") or []):
            return
        owner = self.kube.get("batch/v1/jobs", ref["name"], pod["metadata"].get("namespace"))
        if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
            fins = [f for f in cur["metadata"]["finalizers"] if f != TRACKING]
            with contextlib.suppress(ApiError):
                self.kube._patch(self.kube._type("", "v1", "pods"), cur["metadata"].get("namespace"), cur["metadata"]["name"],
                                 "application/merge-patch+json", {"metadata": {"finalizers": fins or None}}, None, {}, [])

    def _create_pod(self, job: dict) -> dict:
        tpl = copy.deepcopy(job["spec"]["template"])
        meta = tpl.get("metadata") or {}
        meta.update(generateName=f"{job['metadata']['name']}-", namespace=job["metadata"]["namespace"],
                    finalizers=[TRACKING],
                    ownerReferences=[{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                      "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}])
        meta.setdefault("labels", {}).update({"batch.kubernetes.io/job-name": job["metadata"]["name"],
                                              "job-name": job["metadata"]["name"],
                                              "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                                              "controller-uid": job["metadata"]["uid"]})
        return self.kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": tpl.get("spec", {})})

    def _write_status(self, job: dict, status: dict) -> None:
        if not status.get("conditions"):
            status.pop("conditions", None)
        if status != (job.get("status") or {}):
            with contextlib.suppress(ApiError):
                self.kube._update(self.kube._type("batch", "v1", "jobs"), job["metadata"]["namespace"],
                                  job["metadata"]["name"], lambda o: {**o, "status": status}, "status")

    def _ttl(self, job: dict) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        done = next((c for c in job.get("status", {}).get("conditions") or []
                     if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)
        if ttl is None or done is None:
            return
        remaining = _ts(done["lastTransitionTime"]) + ttl - time.time()
        if remaining > 0:
            return self._later(remaining + 0.05, job["metadata"]["namespace"], job["metadata"]["name"])
        with contextlib.suppress(ApiError):
            self.kube._delete(self.kube._type("batch", "v1", "jobs"), job["metadata"]["namespace"], job["metadata"]["name"],
                              {"propagationPolicy": "Background", "preconditions": {"uid": job["metadata"]["uid"]}})

    @staticmethod
    def _pod_failure_action(policy: dict | None, pod: dict) -> tuple[str, str]:
        """The first matching podFailurePolicy rule: (action, message). No match -> Count."""
        ns, name = pod["metadata"].get("namespace"), pod["metadata"]["name"]
        for i, rule in enumerate((policy or {}).get("rules") or []):
            action = rule.get("action")
            if "onExitCodes" in rule:
                req = rule["onExitCodes"]
                for cs in pod.get("status", {}).get("containerStatuses") or []:
                    term = (cs.get("state") or {}).get("terminated")
                    if term is None or term.get("exitCode", 0) == 0:
                        continue
                    if req.get("containerName") and req["containerName"] != cs["name"]:
                        continue
                    code = term["exitCode"]
                    if (code in req.get("values", [])) == (req.get("operator") == "In"):
                        return action, (f"Container {cs['name']} for pod {ns}/{name} failed with exit code {code} "
                                        f"matching {action} rule at index {i}")
            for pc in rule.get("onPodConditions") or []:
                if _has_cond(pod, pc["type"], pc.get("status", "True")):
                    return action, f"Pod {ns}/{name} has condition {pc['type']} matching {action} rule at index {i}"
        return "Count", ""


def _quantity(text: str | int) -> int:
    m = re.match(r"^([0-9.]+)([a-zA-Z]*)$", str(text))
    if not m:
        return int(text)
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(float(m[1]) * units.get(m[2], 1))
