"""A one-node local Kubernetes cluster made of the real control plane: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (built from their Go modules by hack/build.py), plus
our node agent (hack/nodeagent), which runs the pods bound to it as local processes.

It is started as a real cluster is, on loopback only: TLS with a throw-away CA (hack/pki.py),
client-certificate kubeconfigs, ServiceAccount token signing, `--authorization-mode=Node,RBAC`,
the default admission plugins (Pod Security included) plus NodeRestriction, and the controller
manager with all its default controllers using per-controller ServiceAccount credentials. So
RBAC is enforced, CEL rules compile, the Job / TTL / garbage-collector / node-lifecycle
controllers act, and a pod logs in with its own ServiceAccount token.

    make cluster                           # build once, start, print `export KUBECONFIG=...`
    python hack/cluster.py --workdir DIR   # the same; Ctrl-C / SIGTERM stops everything

    with LocalCluster() as cluster:        # tests, the demo, the benchmarks
        cluster.kubectl("get", "nodes")
        cluster.kubeconfig, cluster.server, cluster.ca
        cluster.restart_apiserver(); cluster.stop_node(); cluster.start_node()

`fast_failure=True` (the tests' default) shortens how long a lost node is tolerated
(node-monitor grace 20 s, not-ready/unreachable tolerations 5 s instead of 300 s) so a
node-loss scenario plays out in under a minute; everything else is Kubernetes' default.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HACK = Path(__file__).resolve().parent
ROOT = HACK.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, never first: the repo's operator/ would shadow the stdlib

from hack import pki as pkimod  # noqa: E402
from hack.build import ensure_binaries  # noqa: E402

NODE_NAME = "lectern-node"
SERVICE_CIDR = "10.0.0.0/24"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a control-plane process gets SIGTERM when whoever started it dies, so
    a killed test runner or `make cluster` leaves nothing running."""
    _libc.prctl(1, signal.SIGTERM)
    os.setpgrp()


class Proc:
    """One control-plane process with its log file, restartable with the same arguments."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, preexec_fn=_die_with_parent, cwd=self.log.parent)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. (kube-apiserver stops listening at once
        on SIGTERM but its process lingers for its termination grace; a restart need not wait.)"""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ClusterError(RuntimeError):
    pass


def grant_traverse(paths: list[Path], say=print) -> None:
    """The pods run as their securityContext's user (the chart's: 65532) with this machine's
    Python and venv as their image's files. An image's files are world-readable; here Python
    may live under a 0700 home (pyenv in /root), so the folders on the way get o+x (traverse
    only: nothing becomes listable or readable that was not)."""
    for path in paths:
        for folder in [*reversed(path.parents), path] if path.is_dir() else reversed(path.parents):
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod(mode | 0o001)
                say(f"o+x on {folder}: pods running as a non-root user must reach the Python they run")


class LocalCluster:
    def __init__(self, workdir: str | os.PathLike | None = None, *, node: bool = True, node_name: str = NODE_NAME,
                 fast_failure: bool = True, max_grace: float = 10.0, quiet: bool = True,
                 apiserver_args: list[str] | None = None, images: dict[str, dict] | None = None,
                 controller_manager_args: list[str] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lectern-cluster-"))
        self.node_enabled = node
        self.node_name = node_name
        self.fast_failure = fast_failure
        self.max_grace = max_grace
        self.quiet = quiet
        self.extra_apiserver_args = list(apiserver_args or [])  # e.g. the benchmark's audit log
        self.extra_controller_manager_args = list(controller_manager_args or [])  # e.g. client QPS
        self.extra_images = dict(images or {})  # image repository -> entrypoint/cmd/env, besides ours
        self.procs: dict[str, Proc] = {}
        self.bin: dict[str, Path] = {}
        self.ports: dict[str, int] = {}
        self.pki: pkimod.Pki | None = None

    # -- what clients use ----------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca(self) -> Path:
        assert self.pki
        return self.pki.ca.cert

    @property
    def node_workdir(self) -> Path:
        return self.workdir / "node"

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context with the admin client certificate (system:masters) for direct API calls."""
        assert self.pki
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def api(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
            timeout: float = 30) -> Any:
        """One admin API call; returns the decoded JSON (raises urllib.error.HTTPError)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        from hack.tools import kubectl_path

        kubectl = str(kubectl_path())
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        full_env.update(KUBECONFIG=str(self.kubeconfig), KUBECACHEDIR=str(self.workdir / "kube-cache"), **(env or {}))
        proc = subprocess.run([kubectl, *args], env=full_env, input=input, text=True, capture_output=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> "LocalCluster":
        started = time.monotonic()
        self.bin = {k: v for k, v in ensure_binaries(("kubernetes", "etcd")).items()}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pkimod.make_pki(self.workdir / "pki", self.node_name)
        for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kubelet"):
            self.ports[name] = free_port()
        self._write_kubeconfigs()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            if self.node_enabled:
                self.start_node()
            self._wait(lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default"), 60,
                       "the controller manager (the default ServiceAccount)")
        except BaseException:
            self.stop()
            raise
        self._say(f"cluster ready in {time.monotonic() - started:.1f} s: {self.server}")
        return self

    def stop(self) -> None:
        for name in ("node", "scheduler", "controller_manager", "apiserver", "etcd"):
            proc = self.procs.pop(name, None)
            if proc:
                proc.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port (watches break, clients
        reconnect; etcd keeps the state)."""
        self.procs["apiserver"].stop()
        self.procs["apiserver"].start()
        self._wait_apiserver()

    def stop_node(self) -> None:
        """The node goes away: the agent kills its containers and stops heartbeating."""
        proc = self.procs.pop("node", None)
        if proc:
            proc.stop()

    def start_node(self) -> None:
        from hack.nodeagent.images import images_from_dockerfiles

        grant_traverse([Path(sys.executable).resolve(), Path(sys.prefix), ROOT], self._say)

        images = self.workdir / "images.json"
        images.write_text(json.dumps({**images_from_dockerfiles(ROOT, Path(sys.prefix) / "bin"), **self.extra_images}))
        ready = self.workdir / "node-ready.json"
        ready.unlink(missing_ok=True)
        self.node_workdir.mkdir(exist_ok=True)
        argv = [sys.executable, str(HACK / "nodeagent" / "__main__.py"),
                "--kubeconfig", str(self.workdir / "node.kubeconfig"), "--node-name", self.node_name,
                "--workdir", str(self.node_workdir), "--images", str(images),
                "--kubelet-port", str(self.ports["kubelet"]),
                "--tls-cert", str(self.pki.node_serving.cert), "--tls-key", str(self.pki.node_serving.key),
                "--client-ca", str(self.pki.ca.cert),
                "--api-host", "127.0.0.1", "--api-port", str(self.ports["apiserver"]),
                "--max-grace", str(self.max_grace), "--ready-file", str(ready)]
        proc = self._spawn("node", argv)
        self._wait(lambda: ready.exists(), 60, "the node agent", proc)
        self._wait(self._node_ready, 60, f"node {self.node_name} Ready", proc)

    # -- internals -------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(f"[cluster] {message}", file=sys.stderr, flush=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        (self.workdir / "logs").mkdir(exist_ok=True)
        proc = Proc(name, argv, self.workdir / "logs" / f"{name}.log", env)
        proc.start()
        self.procs[name] = proc
        return proc

    def _wait(self, predicate, timeout: float, what: str, proc: Proc | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except (OSError, urllib.error.URLError, ssl.SSLError, ValueError):
                value = None
            if value:
                return value
            if proc is not None and not proc.alive():
                raise ClusterError(f"{what}: {proc.name} exited with {proc.proc and proc.proc.returncode}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                tail = proc.tail() if proc else ""
                raise ClusterError(f"{what} not ready after {timeout:g} s\n{tail}")
            time.sleep(0.1)

    def _get(self, path: str) -> Any:
        try:
            return self.api("GET", path, timeout=5)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 403, 500, 503):
                return None
            raise

    def _node_ready(self) -> bool:
        node = self._get(f"/api/v1/nodes/{self.node_name}")
        conditions = (node or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _write_kubeconfigs(self) -> None:
        p = self.pki
        for name, pair, user in (("admin", p.admin, "kubernetes-admin"),
                                 ("controller-manager", p.controller_manager, "system:kube-controller-manager"),
                                 ("scheduler", p.scheduler, "system:kube-scheduler"),
                                 ("node", p.node, f"system:node:{self.node_name}")):
            path = self.workdir / f"{name}.kubeconfig"
            path.write_text(pkimod.kubeconfig(self.server, p.ca.cert, pair, user))
            path.chmod(0o600)

    def _start_etcd(self) -> None:
        client, peer = (f"http://127.0.0.1:{self.ports['etcd']}", f"http://127.0.0.1:{self.ports['etcd_peer']}")
        proc = self._spawn("etcd", [
            str(self.bin["etcd"]), "--name", "lectern", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"lectern={peer}", "--unsafe-no-fsync", "--log-level", "warn",
            "--quota-backend-bytes", str(4 << 30)])
        self._wait(lambda: json.loads(urllib.request.urlopen(client + "/health", timeout=2).read()).get("health")
                   == "true", 30, "etcd", proc)

    def _apiserver_argv(self) -> list[str]:
        p = self.pki
        toleration = "5" if self.fast_failure else "300"
        return [
            str(self.bin["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            "--endpoint-reconciler-type=none",  # a loopback advertise address makes `kubernetes` Endpoints invalid
            f"--tls-cert-file={p.apiserver.cert}", f"--tls-private-key-file={p.apiserver.key}",
            f"--client-ca-file={p.ca.cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={p.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={p.apiserver_kubelet_client.key}",
            f"--kubelet-certificate-authority={p.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--default-not-ready-toleration-seconds={toleration}",
            f"--default-unreachable-toleration-seconds={toleration}",
            "--profiling=false", "--v=0",
            *self.extra_apiserver_args,
        ]

    def _wait_apiserver(self) -> None:
        proc = self.procs["apiserver"]
        self._wait(lambda: self._readyz(), 90, "kube-apiserver /readyz", proc)

    def _readyz(self) -> bool:
        req = urllib.request.Request(self.server + "/readyz")
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=5) as resp:
            return resp.status == 200

    def _start_apiserver(self) -> None:
        self._spawn("apiserver", self._apiserver_argv())
        self._wait_apiserver()

    def _start_controller_manager(self) -> None:
        p = self.pki
        kc = str(self.workdir / "controller-manager.kubeconfig")
        grace = ["--node-monitor-period=1s", "--node-monitor-grace-period=20s"] if self.fast_failure else []
        self._spawn("controller_manager", [
            str(self.bin["kube-controller-manager"]),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller_manager']}",
            "--controllers=*", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_key}", f"--root-ca-file={p.ca.cert}",
            f"--cluster-signing-cert-file={p.ca.cert}", f"--cluster-signing-key-file={p.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false", "--profiling=false", "--v=0", *grace, *self.extra_controller_manager_args,
        ])

    def _start_scheduler(self) -> None:
        kc = str(self.workdir / "scheduler.kubeconfig")
        self._spawn("scheduler", [
            str(self.bin["kube-scheduler"]),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}",
            "--leader-elect=false", "--profiling=false", "--v=0",
        ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where state, logs and kubeconfigs go (default: a temp dir, removed on stop)")
    ap.add_argument("--no-node", action="store_true", help="control plane only, no node agent")
    ap.add_argument("--slow-failure", action="store_true",
                    help="Kubernetes' default node-loss timings (300 s tolerations) instead of the tests' short ones")
    args = ap.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = LocalCluster(args.workdir, node=not args.no_node, fast_failure=not args.slow_failure, quiet=False)
    try:
        cluster.start()
    except (ClusterError, pkimod.PkiError) as exc:
        print(f"make cluster: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        from hack.tools import helm_path, kubectl_path

        print(f"# kubectl: {kubectl_path()}  helm: {helm_path()}", file=sys.stderr)
        print(f"# logs: {cluster.workdir / 'logs'}; Ctrl-C stops the cluster", file=sys.stderr, flush=True)
        while not stop.wait(1):
            dead = [p.name for p in cluster.procs.values() if not p.alive()]
            if dead:
                print(f"make cluster: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
