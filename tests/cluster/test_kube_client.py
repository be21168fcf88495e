"""lectern_operator.kube, the one client of the operator and the intake, against the real API
server: it logs in again when its token is refused, and a new login never breaks a watch that
is streaming on the old connection."""

from __future__ import annotations

import asyncio

from lectern_operator.kube import Kube
from tests.cluster_fixtures import ChartIdentity
from tests.kube_client import KubeClient


async def test_relogin_after_a_revoked_token_keeps_open_watches(kube: KubeClient, chart_identity: ChartIdentity,
                                                                 kubeconfig_env, monkeypatch, tmp_path):
    for name in ("binding-1", "binding-2"):
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"x": "y"}})
    token_file = tmp_path / "token"
    token_file.write_text(chart_identity.token("intake", bound_secret="binding-1"))
    monkeypatch.setenv("KUBECONFIG", str(chart_identity.kubeconfig("intake", token_file=token_file)))
    client = Kube(user_agent="test")
    path = Kube.vt_path(kube.namespace)
    try:
        items, rv = await client.list_with_version(path)
        assert items == []
        seen: list[str] = []

        async def follow() -> None:
            async for kind, obj in client.watch(path, resource_version=rv, timeout_seconds=60):
                if kind in ("ADDED", "MODIFIED"):
                    seen.append(obj["metadata"]["name"])

        watcher = asyncio.create_task(follow())
        await asyncio.sleep(0.5)
        # Revoke the token (deleting the object it is bound to) and hand out a new one.
        kube.delete("secrets", "binding-1")
        token_file.write_text(chart_identity.token("intake", bound_secret="binding-2"))
        body = {"apiVersion": "media.lectern.dev/v1alpha1", "kind": "VideoTranscode", "metadata": {"name": "after"},
                "spec": {"lectureId": "l1", "instructorId": "i1",
                         "rawVideoUrl": "https://res.cloudinary.com/demo/video/upload/l1.mov"}}
        for _ in range(50):  # the revocation reaches the authenticator's cache within seconds
            logins = client.logins
            created = await client.request("POST", path, json=body)
            if client.logins > logins:
                break
            await client.delete(f"{path}/after")
            kube.wait_for("vt", "after", predicate=lambda o: o is None)
            await asyncio.sleep(0.2)
        assert client.logins >= 2, "the revoked token was never refused"
        assert created["metadata"]["name"] == "after"
        # The watch opened with the old token still streams events.
        for _ in range(100):
            if "after" in seen:
                break
            await asyncio.sleep(0.1)
        assert "after" in seen
        watcher.cancel()
    finally:
        await client.close()
