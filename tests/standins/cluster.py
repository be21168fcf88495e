"""A one-node local cluster as its own process: the API-server emulator and the kubelet/Job
controller, the way k3s runs its control plane and its kubelet in one binary.

The end-to-end stack (tests/e2e/stack.py) and `make demo` start it as a separate process next
to the operator, the intake, Redis, MongoDB and the Cloudinary emulator, so each of those can be
killed and restarted on its own while the "cluster" keeps its state. The two halves share one
process because the kubelet drives pods through the emulator's store directly (a real kubelet
reports through the API server; here that detour would only add a second watch of everything).

    python -c '...from tests.standins.cluster import main; main(sys.argv[1:])' \\
        --workdir DIR --crd crds/videotranscodes.yaml --namespace lectern \\
        --kubelet-env SSL_CERT_FILE=/path/ca.pem --ready-file DIR/ready.json

The ready file (written once the API answers) holds `{"pid", "url", "kubeconfig"}`; the
kubeconfig points kubectl/helm/the `kubernetes` client at the emulator. SIGTERM stops the
kubelet first (its containers get SIGKILL, as a node that goes away), then the API server.
Every container exit is recorded with what it left in its scratch volumes
(read back from the workdir by `leftovers(workdir)`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tests.standins.kube import KubeEmulator
from tests.standins.kube_fixtures import write_kubeconfig
from tests.standins.kubelet import Kubelet
from tests.standins.services import python_main, stop_process, wait_ready_file


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--kubelet-env: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def leftovers(workdir: str | os.PathLike) -> list[dict]:
    """Every container exit on the node with the files it left in its scratch volumes:
    `[{"pod", "exitCode", "files"}]` (recorded by the kubelet, see `_record_leftovers`)."""
    found = []
    for record in sorted(pathlib.Path(workdir, "kubelet").glob("*/*/leftovers.jsonl")):
        for line in record.read_text().splitlines():
            found.append({"pod": record.parent.name, **json.loads(line)})
    return found


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="local-cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=pathlib.Path)
    ap.add_argument("--port", type=int, default=0, help="API server port (0: a free one)")
    ap.add_argument("--crd", action="append", default=[], type=pathlib.Path, help="CRD YAML to register")
    ap.add_argument("--namespace", action="append", default=[], help="namespace to create")
    ap.add_argument("--kubelet-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment of every container (not for secrets: argv is visible)")
    ap.add_argument("--max-grace", type=float, default=10.0, help="cap of a pod's termination grace period")
    ap.add_argument("--ready-file", type=pathlib.Path)
    args = ap.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    args.workdir.mkdir(parents=True, exist_ok=True)
    kube = KubeEmulator(record_requests=False).start(port=args.port or None)
    try:
        for crd in args.crd:
            kube.register_crd(crd)
        for ns in args.namespace:
            kube.ensure_namespace(ns)
        kubelet = Kubelet(kube, workdir=args.workdir / "kubelet", max_grace=args.max_grace,
                          extra_env=_pairs(args.kubelet_env)).start()
        try:
            kubeconfig = write_kubeconfig(args.workdir / "kubeconfig", kube.url,
                                          namespace=(args.namespace or ["default"])[0])
            if args.ready_file:
                tmp = args.ready_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"pid": os.getpid(), "url": kube.url, "kubeconfig": str(kubeconfig)}))
                tmp.replace(args.ready_file)
            while not stop.wait(0.5):
                pass
        finally:
            kubelet.stop()
    finally:
        kube.stop()


if __name__ == "__main__":
    main()


class ClusterProcess:
    """Starts `main` above as a subprocess and talks to its API server over HTTP, as kubectl
    would (the test process holds no emulator object: state lives in the cluster process)."""

    def __init__(self, workdir: str | os.PathLike, *, crds: list[os.PathLike] = (), namespaces: list[str] = (),
                 kubelet_env: dict[str, str] | None = None, max_grace: float = 10.0) -> None:
        self.workdir = pathlib.Path(workdir)
        self.args = ["--workdir", str(self.workdir), "--max-grace", str(max_grace),
                     "--ready-file", str(self.workdir / "ready.json")]
        for crd in crds:
            self.args += ["--crd", str(crd)]
        for ns in namespaces:
            self.args += ["--namespace", ns]
        for key, value in (kubelet_env or {}).items():
            self.args += ["--kubelet-env", f"{key}={value}"]
        self.proc: subprocess.Popen | None = None
        self.url = self.kubeconfig = ""

    def start(self, timeout: float = 30) -> "ClusterProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        with open(self.workdir / "cluster.log", "ab") as log:
            self.proc = subprocess.Popen(python_main("tests.standins.cluster", *self.args), cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            info = wait_ready_file(self.proc, ready, timeout, "the local cluster", lambda: self.log()[-3000:])
        except RuntimeError:
            self.proc = None
            raise
        self.url, self.kubeconfig = info["url"], info["kubeconfig"]
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        self.proc = None

    def log(self) -> str:
        path = self.workdir / "cluster.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def leftovers(self) -> list[dict]:
        return leftovers(self.workdir)

    # ----- a few REST calls, JSON in and out --------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, ctype: str = "application/json",
                query: dict[str, str] | None = None, raw: bool = False) -> Any:
        url = self.url + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                payload = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET":
                return None
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None
        return payload.decode() if raw else json.loads(payload)

    @staticmethod
    def path(resource: str, namespace: str | None = None, name: str | None = None) -> str:
        """`videotranscodes` / `jobs` / `pods` / `secrets` / `events` -> the REST path."""
        base = {"videotranscodes": "/apis/media.lectern.dev/v1alpha1", "jobs": "/apis/batch/v1"}.get(resource, "/api/v1")
        return base + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}" + (f"/{name}" if name else "")

    def get(self, resource: str, name: str, namespace: str) -> dict | None:
        return self.request("GET", self.path(resource, namespace, name))

    def list(self, resource: str, namespace: str, labels: str | None = None) -> list[dict]:
        return self.request("GET", self.path(resource, namespace), query={"labelSelector": labels} if labels else None)["items"]

    def create(self, obj: dict, namespace: str) -> dict:
        return self.request("POST", self.path(obj["kind"].lower() + "s", namespace), obj)

    def delete(self, resource: str, name: str, namespace: str) -> None:
        self.request("DELETE", self.path(resource, namespace, name), {"propagationPolicy": "Background"})

    def evict(self, pod: str, namespace: str) -> None:
        """The Eviction API, as `kubectl drain` uses it for a node going down."""
        self.request("POST", self.path("pods", namespace, pod) + "/eviction",
                     {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}})

    def logs(self, pod: str, namespace: str) -> str:
        return self.request("GET", self.path("pods", namespace, pod) + "/log", raw=True) or ""
