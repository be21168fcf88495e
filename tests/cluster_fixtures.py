"""Fixtures on the real local cluster (hack/cluster.py): one cluster per test session, a fresh
namespace per test.

    def test_x(kube):                 # KubeClient (tests/kube_client.py) in the test's namespace
        kube.create(make_cr(...)); kube.wait_for("vt", "x", predicate=...)
    def test_y(cluster, kubectl):     # the LocalCluster; kubectl("get", "vt") with the admin kubeconfig

The session starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node
agent (about 10-20 s once the binaries are built; the first session on a machine builds them),
installs the CRDs from crds/ and waits until they are Established. Every test namespace is
labelled Pod Security `restricted`, as the chart's transcode namespace is, so a pod the
admission refuses fails the test.

The node also knows a test image, `lectern.test/fake-transcoder` (tests/fake_transcoder.py):
the transcoder's command-line contract with a scripted behaviour per lectureId (see
`FakeTranscoder.plan`), for operator tests that are about Kubernetes, not about ffmpeg.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.cluster import LocalCluster, grant_traverse
from tests.kube_client import ApiError, KubeClient

ROOT = Path(__file__).resolve().parents[1]
FAKE_IMAGE = "lectern.test/fake-transcoder"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


class FakeTranscoder:
    """Plans for the fake transcoder image, one JSON file per lectureId in a folder the pods
    can read: {"progress": [..], "interval": s, "hang": s, "exit": code, "reason": "...",
    "videoUrl": "..."}; a lecture without a plan succeeds at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)

    def plan(self, lecture_id: str, **plan: Any) -> None:
        path = self.folder / f"{lecture_id}.json"
        path.write_text(json.dumps(plan))
        path.chmod(0o644)

    @property
    def image(self) -> dict[str, Any]:
        bin_dir = self.folder.parent / "fake-bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "lectern-transcode"
        script.write_text(f"#!{sys.executable}\n" + (ROOT / "tests" / "fake_transcoder.py").read_text())
        script.chmod(0o755)
        bin_dir.chmod(0o755)
        return {"entrypoint": ["lectern-transcode"], "cmd": [], "user": "65532",
                "env": {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "LECTERN_FAKE_PLANS": str(self.folder)}}


@pytest.fixture(scope="session")
def fake_transcoder() -> Iterator[FakeTranscoder]:
    # Not under pytest's temp root: the pods run as 65532 and need to traverse to the script and
    # the plans, but every pytest session that starts on the machine chmods /tmp/pytest-of-<user>
    # back to 0700 (a concurrent session made the fake image fail with StartError: EACCES).
    base = Path(tempfile.mkdtemp(prefix="lectern-fake-transcoder-"))
    base.chmod(0o755)
    grant_traverse([base], lambda _: None)
    yield FakeTranscoder(base / "plans")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, fake_transcoder: FakeTranscoder) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    with LocalCluster(workdir, images={FAKE_IMAGE: fake_transcoder.image}) as c:
        admin = KubeClient(c.server, c.ssl_context())
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            for created in admin.apply_yaml(crd):
                admin.wait_for("crd", created["metadata"]["name"], predicate=_established, timeout=30)
        _wait_served(admin)
        yield c


def _wait_served(admin: KubeClient, timeout: float = 30) -> None:
    """Established is not yet served: the first requests may get 429 "storage is (re)initializing"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list("vt", "default")
            return
        except ApiError as exc:
            if exc.code != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _established(crd: dict | None) -> bool:
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in ((crd or {}).get("status") or {}).get("conditions") or [])


def namespace_for(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t-{stem}-{secrets.token_hex(3)}"


@pytest.fixture()
def kube(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[KubeClient]:
    """An admin client bound to a fresh Pod Security `restricted` namespace, deleted afterwards
    (with everything in it, by the real namespace controller)."""
    ns = namespace_for(request)
    client = KubeClient(cluster.server, cluster.ssl_context(), ns)
    client.ensure_namespace(ns, RESTRICTED)
    client.wait_for("serviceaccounts", "default", predicate=lambda o: o is not None, timeout=30)
    yield client
    try:
        client.delete("namespaces", ns)
    except Exception:  # noqa: BLE001 - teardown of a namespace the test may have deleted itself
        pass


@pytest.fixture()
def kubectl(cluster: LocalCluster, kube: KubeClient, tmp_path: Path):
    """kubectl("get", "vt", "-o", "wide", check=True) -> CompletedProcess (text), with the admin
    kubeconfig and the test's namespace as the default."""
    home = tmp_path / "kubectl-home"
    home.mkdir(exist_ok=True)

    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 60,
            as_user: str | None = None) -> subprocess.CompletedProcess:
        extra = ["--namespace", kube.namespace] + (["--as", as_user] if as_user else [])
        return cluster.kubectl(*extra, *args, check=check, input=input, timeout=timeout,
                               env={"HOME": str(home)})
    return run


@pytest.fixture(scope="session")
def admin_kubeconfig(cluster: LocalCluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture()
def kubeconfig_env(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KUBECONFIG of this process set to the admin kubeconfig (for an in-process operator or
    intake: they log in the normal way, through lectern_operator.kube)."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    return cluster.kubeconfig


def kubectl_env(cluster: LocalCluster, home: Path) -> dict[str, str]:
    """Environment for a kubectl/helm subprocess: this cluster, isolated caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
    env.update(KUBECONFIG=str(cluster.kubeconfig), HOME=str(home), KUBECACHEDIR=str(home / "kube-cache"),
               HELM_CACHE_HOME=str(home / "helm-cache"), HELM_CONFIG_HOME=str(home / "helm-config"),
               HELM_DATA_HOME=str(home / "helm-data"))
    return env


class ChartIdentity:
    """The chart's ServiceAccounts and RBAC, rendered by the real `helm template` for one
    namespace and applied, so an in-process operator or intake runs with exactly the
    permissions the chart grants it (a missing permission fails the test, as in a cluster)."""

    RELEASE = "lectern"

    def __init__(self, cluster: LocalCluster, kube: KubeClient, workdir: Path, *,
                 values: tuple[str, ...] = (), templates: tuple[str, ...] = ()) -> None:
        """`values`: extra `--set` items (e.g. "operator.replicas=2" for peering's RBAC);
        `templates`: extra templates to render and apply (e.g. "templates/peering.yaml")."""
        from hack.tools import helm_path

        self.cluster, self.kube, self.workdir = cluster, kube, workdir
        ns = kube.namespace
        extra = [a for v in values for a in ("--set", v)] + [a for t in templates for a in ("--show-only", t)]
        proc = subprocess.run(
            [str(helm_path()), "template", self.RELEASE, str(ROOT / "helm" / "lectern"), "--namespace", ns,
             "--set", f"watchNamespaces={{{ns}}}", "--set", "redis.existingSecret=lectern-redis",
             "--set", "mongo.existingSecret=lectern-mongo", "--set", "cloudinary.existingSecret=lectern-cloudinary",
             "--show-only", "templates/serviceaccounts.yaml", "--show-only", "templates/rbac.yaml",
             "--show-only", "templates/transcoder-rbac.yaml", *extra],
            capture_output=True, text=True, env=kubectl_env(cluster, workdir), timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"helm template failed: {proc.stderr}")
        self.objects = kube.apply_yaml(proc.stdout)

    def service_account(self, component: str) -> str:
        return {"operator": f"{self.RELEASE}-operator", "intake": f"{self.RELEASE}-intake",
                "transcoder": "lectern-transcoder"}[component]

    def token(self, component: str, seconds: int = 3600, bound_secret: str | None = None) -> str:
        """A TokenRequest token of the component's ServiceAccount (optionally bound to a Secret:
        deleting the Secret revokes the token)."""
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if bound_secret:
            secret = self.kube.get("secrets", bound_secret)
            spec["boundObjectRef"] = {"kind": "Secret", "apiVersion": "v1", "name": bound_secret,
                                      "uid": secret["metadata"]["uid"]}
        review = self.kube.request("POST", self.kube.path("serviceaccounts", self.service_account(component),
                                                          subresource="token"),
                                   {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return review["status"]["token"]

    def kubeconfig(self, component: str, token_file: Path | None = None) -> Path:
        """A kubeconfig for the component: its token inline, or `tokenFile` (re-read on 401)."""
        path = self.workdir / f"{component}.kubeconfig"
        user = f"tokenFile: {token_file}" if token_file else f"token: {self.token(component)}"
        path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: {self.cluster.server}, certificate-authority: {self.cluster.ca}}}
users:
- name: {component}
  user: {{{user}}}
contexts:
- name: {component}
  context: {{cluster: local, user: {component}, namespace: {self.kube.namespace}}}
current-context: {component}
""")
        return path


@pytest.fixture()
def chart_identity(cluster: LocalCluster, kube: KubeClient, tmp_path: Path) -> ChartIdentity:
    return ChartIdentity(cluster, kube, tmp_path)
