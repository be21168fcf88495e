"""Fixtures for the Kubernetes stand-in: an API-server emulator, a local kubelet + Job
controller, real kubectl/helm binaries and a kubeconfig pointing at the emulator.

    def test_something(kube):                       # a fresh API server per test
        kube.register_crd("crds/videotranscodes.yaml")
        kube.ensure_namespace("lectern")
        kube.create({"apiVersion": "media.lectern.dev/v1alpha1", "kind": "VideoTranscode",
                     "metadata": {"name": "x", "namespace": "lectern"}, "spec": {...}})
        obj = kube.wait_for("vt", "x", "lectern", lambda o: o and o.get("status", {}).get("phase") == "Running")
        assert kube.list("jobs", "lectern", labels="media.lectern.dev/transcode=x")
        kube.url                                     # http://127.0.0.1:PORT, plain http, no auth

    def test_jobs_run(kube, kubelet):                # Jobs created in `kube` run as local processes
        kubelet.override_command(lambda job, pod: ["python", "-c", "import sys; sys.exit(75)"])
        ...
        kubelet.evict("pod-name")                    # DisruptionTarget, as the Eviction API does

    def test_cli(kube, kubectl):                     # kubectl("get", "vt", "-n", "lectern") -> CompletedProcess
        ...

Running a kopf operator against the emulator (the recipe; see test_kube_emulator.py):

    import kopf
    from kopf.testing import KopfRunner

    @kopf.on.login()
    def login(**_):
        return kopf.ConnectionInfo(server=kube.url, insecure=True, scheme="Bearer", token="x")

    settings = kopf.OperatorSettings()               # optional
    with KopfRunner(["run", "--standalone", "--namespace", "lectern", "-m", "my.module"],
                    settings=settings, timeout=30) as runner:
        kube.wait_for(...)
    assert runner.exit_code == 0, runner.output

`--namespace` must be explicit (no cluster-wide scanning): the `kubernetes` client caches its
kubeconfig location at import time, so always connect through the login handler above (or
the `kopf_login` helper below). `kube.close_watches()` simulates an API-server restart.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.standins.binaries import BinariesUnavailable, ensure_binaries
from tests.standins.kube import KubeEmulator


@pytest.fixture()
def kube() -> Iterator[KubeEmulator]:
    """A running API-server emulator (background thread), fresh per test."""
    emulator = KubeEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture()
def kubelet(kube: KubeEmulator) -> Iterator[Any]:
    """A local kubelet + Job controller bound to `kube` (runs pods as local processes)."""
    from tests.standins.kubelet import Kubelet
    k = Kubelet(kube).start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="session")
def kube_binaries() -> dict[str, pathlib.Path]:
    try:
        return ensure_binaries()
    except BinariesUnavailable as e:  # pragma: no cover
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def kubectl_bin(kube_binaries: dict[str, pathlib.Path]) -> pathlib.Path:
    return kube_binaries["kubectl"]


@pytest.fixture(scope="session")
def helm_bin(kube_binaries: dict[str, pathlib.Path]) -> pathlib.Path:
    return kube_binaries["helm"]


def write_kubeconfig(path: pathlib.Path, server: str, namespace: str = "default") -> pathlib.Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: emulator
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: tester
  user: {{}}
contexts:
- name: emulator
  context: {{cluster: emulator, user: tester, namespace: {namespace}}}
current-context: emulator
""")
    return path


@pytest.fixture()
def kubeconfig(kube: KubeEmulator, tmp_path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig file for `kube` (plain http, no auth, namespace `default`)."""
    return write_kubeconfig(tmp_path / "kubeconfig", kube.url)


def tool_env(kubeconfig: pathlib.Path, home: pathlib.Path) -> dict[str, str]:
    """Environment for kubectl/helm: offline, isolated caches, this kubeconfig."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(home),
               KUBECACHEDIR=str(home / "kube-cache"),
               HELM_CACHE_HOME=str(home / "helm-cache"), HELM_CONFIG_HOME=str(home / "helm-config"),
               HELM_DATA_HOME=str(home / "helm-data"))
    return env


@pytest.fixture()
def kubectl(kubectl_bin: pathlib.Path, kubeconfig: pathlib.Path, tmp_path: pathlib.Path):
    """kubectl("get", "vt", "-o", "wide", check=True) -> subprocess.CompletedProcess (text)."""
    home = tmp_path / "kubectl-home"
    home.mkdir(exist_ok=True)
    env = tool_env(kubeconfig, home)

    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(kubectl_bin), *args], env=env, input=input, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc
    return run


def kopf_login(kube: KubeEmulator) -> Any:
    """Register a `@kopf.on.login` handler pointing kopf at `kube` (call inside the operator's
    module or test before starting KopfRunner); returns the handler."""
    import kopf

    @kopf.on.login()
    def _login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=kube.url, insecure=True)
    return _login_to_emulator
