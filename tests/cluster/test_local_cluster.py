"""The local cluster is started as a real one: the version Helm checks, TLS with client
certificates, RBAC enforced, Pod Security admission applied, state that survives an API-server
restart."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from hack.cluster import LocalCluster
from tests.kube_client import ApiError, KubeClient


def test_version_is_the_pinned_release(cluster: LocalCluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert (version["gitVersion"], version["major"], version["minor"]) == ("v1.37.2", "1", "37")


def test_tls_with_client_certificates_only(cluster: LocalCluster):
    # No client certificate: anonymous, which RBAC lets read nothing of ours.
    ctx = ssl.create_default_context(cafile=str(cluster.ca))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(cluster.server + "/api/v1/namespaces/default/secrets", context=ctx, timeout=10)
    assert err.value.code in (401, 403)
    # Plain http is not served at all.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(cluster.server.replace("https", "http") + "/version", timeout=10)


def test_rbac_is_enforced_for_a_service_account(kube: KubeClient, kubectl):
    sa = f"system:serviceaccount:{kube.namespace}:default"
    assert kubectl("auth", "can-i", "list", "pods", "--as", sa, check=False).stdout.strip() == "no"
    assert kubectl("auth", "can-i", "list", "pods").stdout.strip() == "yes"  # the admin


def test_pod_security_restricted_refuses_a_root_pod(kube: KubeClient):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
           "spec": {"containers": [{"name": "c", "image": "lectern.test/none"}]}}
    with pytest.raises(ApiError) as err:
        kube.create(pod)
    assert err.value.code == 403
    assert 'violates PodSecurity "restricted:latest"' in err.value.message


def test_state_survives_an_api_server_restart(kube: KubeClient, cluster: LocalCluster):
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}, "data": {"a": "1"}})
    cluster.restart_apiserver()
    assert kube.get("configmaps", "kept")["data"] == {"a": "1"}
