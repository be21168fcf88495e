"""Fixtures for the Kubernetes stand-in: an API-server emulator (tests/standins/kube.py), a local
kubelet + Job controller (tests/standins/kubelet.py), the real kubectl/helm binaries and a
kubeconfig pointing at the emulator. Everything here is plain http, no auth, no cluster.

    def test_crud(kube):                             # a fresh API server per test (own thread)
        kube.register_crd(ROOT / "crds" / "videotranscodes.media.lectern.dev.yaml")  # or a dict
        kube.ensure_namespace("lectern")              # namespaces must exist, as in a cluster
        kube.create({"apiVersion": "media.lectern.dev/v1alpha1", "kind": "VideoTranscode",
                     "metadata": {"name": "x", "namespace": "lectern"}, "spec": {...}})
        kube.patch("vt", "x", {"status": {"report": {...}}}, "lectern", subresource="status")
        vt = kube.wait_for("vt", "x", "lectern", lambda o: o and o["status"].get("phase") == "Running")
        # async tests: `await kube.await_for(...)`; objects are plain dicts (deep copies)
        kube.list("jobs", "lectern", labels="media.lectern.dev/transcode=x")
        kube.events(vt, reason="Started")             # core/v1 Events about an object
        kube.delete("vt", "x", "lectern")             # propagation Background by default
        kube.url                                      # http://127.0.0.1:PORT
        kube.close_watches(); kube.forget_history()   # API-server restart / compaction (410)
        kube["post /apis/batch/v1/namespaces/lectern/jobs"] << 500   # kmock fault injection
        # Resource names: plural, short name, kind, "jobs.batch", "batch/v1/jobs", "v1/pods".
        # Errors from the helpers raise tests.standins.kube.ApiError (code, reason, message).

    def test_jobs(kube, kubelet):                    # Jobs in `kube` run as local processes
        kubelet.override_command(lambda job, pod, container:
            Kubelet.fake(exit_code=65, message={"exitCode": 65, "reason": "not a video"}, sleep=0.2)
            if job and job["metadata"]["name"].startswith("vt-") else None)  # None: the real command
        pod = kubelet.wait_for_pod("vt-x-job", "lectern")   # Running, process started
        kubelet.evict(pod["metadata"]["name"])        # Eviction API: DisruptionTarget + graceful delete
        kubelet.kill(pod["metadata"]["name"], signal.SIGKILL)
        kubelet.logs(pod["metadata"]["name"]); kubelet.scratch_dir(pod_name, "scratch")
        # Manual mode: Kubelet(kube, auto_run=False).start() ... kubelet.finish("job", 0, {...}); .stop()
        # Kubelet(kube, extra_env={...}, image_entrypoints={"lectern-transcoder": ["lectern-transcode"]})

    def test_cli(kube, kubectl):                     # kubectl("get", "vt", "-o", "wide").stdout
        kubectl("apply", "--validate=false", "-f", "examples/videotranscode.yaml")
        # also: kubeconfig (path), kubectl_bin / helm_bin (session), tool_env(kubeconfig, home)

Running a kopf operator against the emulator (tested in test_kube_emulator.py):

    import kopf
    from kopf.testing import KopfRunner

    registry = kopf.OperatorRegistry()            # or the operator module's default registry

    @kopf.on.login(registry=registry)             # or: kopf_login(kube) below
    def login(**_):
        return kopf.ConnectionInfo(server=kube.url, insecure=True)

    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.1
    with KopfRunner(["run", "--standalone", "--namespace", "lectern"],   # + "-m", "module" if any
                    registry=registry, settings=settings, timeout=30) as runner:
        kube.wait_for(...)
    assert runner.exit_code == 0, runner.output

Always connect through a login handler: the `kubernetes` client caches its kubeconfig location
at import time, and kopf's own piggybacking would pick up whatever kubeconfig the machine has.
Give `--namespace` explicitly (no cluster-wide scanning). kopf 1.45 does not turn log lines into
Events unless `settings.posting.loggers = True`; `kopf.info(...)`/`kopf.event(...)` always post.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from hack.tools import BinariesUnavailable, ensure_tools
from tests.standins.kube import KubeEmulator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kube_options(**kwargs): KubeEmulator options for the `kube` fixture "
                            "(history_size, auto_namespaces, record_requests)")
    config.addinivalue_line("markers", "kubelet_options(**kwargs): Kubelet options for the `kubelet` fixture "
                            "(auto_run, backoff, max_grace, extra_env, image_entrypoints)")


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):  # farthest first, closest wins
        kwargs.update(marker.kwargs)
    return kwargs


@pytest.fixture()
def kube(request: pytest.FixtureRequest) -> Iterator[KubeEmulator]:
    """A running API-server emulator (background thread), fresh per test.
    Options: @pytest.mark.kube_options(auto_namespaces=True, ...)."""
    emulator = KubeEmulator(**_marker_kwargs(request, "kube_options")).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture()
def kubelet(kube: KubeEmulator, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A local kubelet + Job controller bound to `kube` (runs pods as local processes).
    Options: @pytest.mark.kubelet_options(auto_run=False, extra_env={...}, ...)."""
    from tests.standins.kubelet import Kubelet
    k = Kubelet(kube, **_marker_kwargs(request, "kubelet_options")).start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="session")
def kube_binaries() -> dict[str, pathlib.Path]:
    try:
        return ensure_tools()
    except BinariesUnavailable as e:  # pragma: no cover
        pytest.fail(str(e))


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
