"""Issue 12, item 5: the chart's NetworkPolicies (on by default) on the real API server.

The rendered policies -- the defaults, IPv4 and IPv6 except-lists, NodeLocal DNSCache's
address, the API server's CIDRs -- are created in a namespace and read back unchanged: the API
server's validation accepts every ipBlock (an `except` must lie inside its block's `cidr`,
hence one block per address family; the control shows the API refusing a mixed one). The
API server's endpoints are looked up from its EndpointSlice when no CIDR is given, as
`helm install` does (here `helm template --dry-run=server`).

Enforcement is NOT tested: the node agent runs pods as local processes without a network
namespace of their own, so no CNI enforces these policies here (docs/cluster.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster_fixtures import ROOT, kubectl_env
from tests.kube_client import ApiError


def _render(cluster, namespace: str, workdir: Path, *values: str, server: bool = False) -> list[dict]:
    from hack.tools import helm_path

    sets = [a for v in values for a in ("--set", v)]
    proc = subprocess.run(
        [str(helm_path()), "template", "lectern", str(ROOT / "helm" / "lectern"), "--namespace", namespace,
         "--set", f"watchNamespaces={{{namespace}}}", "--set", "redis.existingSecret=lectern-redis",
         "--set", "mongo.existingSecret=lectern-mongo", "--set", "cloudinary.existingSecret=lectern-cloudinary",
         *sets, *(["--dry-run=server"] if server else []), "--show-only", "templates/networkpolicy.yaml"],
        capture_output=True, text=True, env=kubectl_env(cluster, workdir), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _egress(policy: dict) -> list[dict]:
    return policy["spec"]["egress"]


def test_the_default_policies_are_accepted_by_the_api_server(cluster, kube, tmp_path):
    docs = _render(cluster, kube.namespace, tmp_path, "networkPolicy.apiServer.cidrs={10.0.0.1/32,fd00::1/128}",
                   "networkPolicy.dns.cidrs={169.254.20.10/32}")
    assert sorted(d["metadata"]["name"] for d in docs) == ["lectern", "lectern-transcoder"]
    for doc in docs:
        kube.create(doc)
        back = kube.get("networkpolicies", doc["metadata"]["name"])
        assert back["spec"]["podSelector"] == doc["spec"]["podSelector"]
        assert back["spec"].get("egress", []) == doc["spec"].get("egress", []), doc["metadata"]["name"]
    transcoder = kube.get("networkpolicies", "lectern-transcoder")
    dns, cdn, api = _egress(transcoder)
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in dns["to"]
    assert [b["ipBlock"]["cidr"] for b in cdn["to"]] == ["0.0.0.0/0", "::/0"]
    assert "fd00:ec2::254/128" in cdn["to"][1]["ipBlock"]["except"]
    assert "169.254.0.0/16" in cdn["to"][0]["ipBlock"]["except"]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}]


def test_an_except_of_the_other_family_is_refused(cluster, kube, tmp_path):
    """The control: why the chart splits the except-list by family."""
    (policy,) = [d for d in _render(cluster, kube.namespace, tmp_path) if d["metadata"]["name"] == "lectern-transcoder"]
    mixed = _egress(policy)[1]["to"][0]["ipBlock"]
    mixed["except"] = mixed["except"] + ["fc00::/7"]
    policy["metadata"]["name"] = "mixed"
    with pytest.raises(ApiError) as refused:
        kube.create(policy)
    assert refused.value.code == 422 and "except" in str(refused.value)


def test_the_api_server_is_looked_up_when_no_cidr_is_given(cluster, kube, tmp_path):
    """No networkPolicy.apiServer.cidrs: the EndpointSlice default/kubernetes gives them (and its
    port), as a `helm install` renders it; a plain `helm template` cannot look it up and leaves
    the rule out (NOTES warns)."""
    # This cluster's API server advertises a loopback address and runs without its endpoint
    # reconciler (hack/cluster.py), so the slice a real one keeps is written here, as it would.
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    kube.request("POST", path, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "endpoints": [{"addresses": ["192.0.2.10"]}, {"addresses": ["192.0.2.11"]}],
        "ports": [{"name": "https", "port": 16443, "protocol": "TCP"}]})
    try:
        (policy,) = [d for d in _render(cluster, kube.namespace, tmp_path, server=True)
                     if d["metadata"]["name"] == "lectern-transcoder"]
    finally:
        kube.request("DELETE", f"{path}/kubernetes")
    api = _egress(policy)[2]
    assert api["to"] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}, {"ipBlock": {"cidr": "192.0.2.11/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443, 16443}
    kube.create(policy)
    (offline,) = [d for d in _render(cluster, kube.namespace, tmp_path) if d["metadata"]["name"] == "lectern-transcoder"]
    assert len(_egress(offline)) == 2
