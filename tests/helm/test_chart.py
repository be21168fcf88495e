"""The Helm chart, rendered by the real `helm` binary for several values combinations and checked
the way a cluster (and a security review) would: Kubernetes OpenAPI schemas (strict), security
defaults, least-privilege RBAC, the settings contract with operator/settings.py, and
values.schema.json refusing bad values."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import BASE_VALUES, CHART, NAMESPACE, RELEASE, SCENARIOS, deep_merge

# The chart claims kubeVersion >=1.31 (Chart.yaml); manifests must be valid for the oldest
# supported minor and for the newest one the validator knows.
KUBE_VERSIONS = ("1.31.0", "1.37.0")
NAMESPACED_KINDS = {"ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                    "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "KopfPeering"}
STANDARD_LABELS = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/component")

ALL = list(SCENARIOS)


def watched(rendered) -> list[str]:
    return rendered.values.get("watchNamespaces") or [NAMESPACE]


def configmap(rendered) -> dict[str, str]:
    return rendered.one("ConfigMap", "-config")["data"]


def pod_specs(rendered):
    for dep in rendered.kind("Deployment"):
        yield dep["metadata"]["name"], dep["spec"]["template"]


# --- helm lint and the Kubernetes schemas -----------------------------------------------------

@pytest.mark.parametrize("scenario", ["defaults", "peering", "networkpolicy", "dev-secrets"])
def test_helm_lint_strict(helm, scenario):
    proc = helm.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                    "--values", helm.values_file(deep_merge(BASE_VALUES, SCENARIOS[scenario])))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


_VALID: set[tuple[str, str]] = set()  # (manifest, version) already validated: scenarios share most objects


@pytest.mark.parametrize("scenario", ALL)
def test_manifests_valid_for_kubernetes(render, scenario):
    rendered = render(scenario)
    assert rendered.docs
    for doc in rendered.docs:
        if doc["kind"] in ("ServiceMonitor", "KopfPeering"):
            continue  # custom kinds: checked against their own schemas below
        key = json.dumps(doc, sort_keys=True)
        for version in KUBE_VERSIONS:
            if (key, version) in _VALID:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message}")
            _VALID.add((key, version))


def test_validator_is_not_vacuous(render):
    """The strict validator really refuses an unknown field (else the test above proves nothing)."""
    dep = json.loads(json.dumps(render("defaults").one("Deployment", "-operator")))
    dep["spec"]["template"]["spec"]["containers"][0]["runAsRoot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("scenario", ALL)
def test_every_resource_labelled_and_placed(render, scenario):
    for doc in render(scenario).docs:
        meta = doc["metadata"]
        labels = meta.get("labels", {})
        for label in STANDARD_LABELS:
            assert labels.get(label), f"{doc['kind']}/{meta['name']} lacks label {label}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert len(meta["name"]) <= 63, meta["name"]
        if doc["kind"] in NAMESPACED_KINDS:
            assert meta.get("namespace"), f"{doc['kind']}/{meta['name']} has no namespace"
        else:
            assert "namespace" not in meta


# --- security defaults --------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ALL)
def test_pod_security_defaults(render, scenario):
    for name, template in pod_specs(render(scenario)):
        spec = template["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["runAsUser"] > 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (name, key)
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        assert spec["enableServiceLinks"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["runAsNonRoot"] is True, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc["capabilities"].get("add"), name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert c[probe]["httpGet"]["port"] == "health", (name, probe)
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            # The intake's readiness also checks Redis and its watch; kopf has one endpoint.
            ready = "/readyz" if name.endswith("-intake") else "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == ready, name
            assert not c["image"].endswith(":latest"), c["image"]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports == {"health": 8080, "metrics": 9090}
            # Secrets only ever arrive through secretKeyRef.
            for env in c.get("env", []):
                assert "value" not in env or not re.search(r"URL|PASSWORD|SECRET|TOKEN", env["name"]), env


# --- RBAC least privilege ---------------------------------------------------------------------

OPERATOR_NEEDS = {  # (apiGroup, resource): verbs the operator must have in every watched namespace
    ("media.lectern.dev", "videotranscodes"): {"get", "list", "watch", "patch", "update", "delete"},
    ("media.lectern.dev", "videotranscodes/status"): {"get", "patch", "update"},
    ("media.lectern.dev", "videotranscodes/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
INTAKE_NEEDS = {("media.lectern.dev", "videotranscodes"): {"get", "list", "watch", "create", "delete", "patch"}}
TRANSCODER_NEEDS = {("media.lectern.dev", "videotranscodes/status"): {"get", "patch"}}
PEERING_NEEDS = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
CRD_NEEDS = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


def grants(role: dict) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs. A rule limited to named objects is keyed
    `resource[name,...]`: it grants less than the resource, so it must not pass for it (and a
    role that must equal its needs shows it as an extra)."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        names = rule.get("resourceNames")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = f"{resource}[{','.join(sorted(names))}]" if names else resource
                out.setdefault((group, key), set()).update(rule["verbs"])
    return out


def test_grants_tells_named_objects_from_the_whole_resource():
    role = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                      {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["b", "a"], "verbs": ["get"]}]}
    assert grants(role) == {("", "pods"): {"get"}, ("", "secrets[a,b]"): {"get"}}


@pytest.mark.parametrize("scenario", ALL)
def test_rbac_no_wildcards_no_cluster_admin(render, scenario):
    rendered = render(scenario)
    for role in rendered.kind("Role") + rendered.kind("ClusterRole"):
        assert not role.get("aggregationRule")
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            # Nothing in Lectern's own deployment reads Secrets: pods get them via secretKeyRef.
            assert "secrets" not in rule["resources"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    for binding in rendered.kind("RoleBinding") + rendered.kind("ClusterRoleBinding"):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit")
        assert binding["roleRef"]["name"].startswith(f"{RELEASE}-")
    # The only cluster-scoped grant: reading CRDs.
    for role in rendered.kind("ClusterRole"):
        assert grants(role) == CRD_NEEDS


@pytest.mark.parametrize("scenario", ALL)
def test_rbac_exactly_what_each_component_needs(render, scenario):
    rendered = render(scenario)
    values = rendered.values
    peering = values.get("operator", {}).get("replicas", 1) > 1
    intake = values.get("intake", {}).get("enabled", True)
    report = values.get("transcode", {}).get("reportProgress", True)
    intake_ns = values.get("intake", {}).get("namespace") or watched(rendered)[0]
    for ns in watched(rendered):
        expected = {**OPERATOR_NEEDS, **(PEERING_NEEDS if peering else {})}
        assert grants(rendered.one("Role", "-operator", ns)) == expected
        if intake and ns == intake_ns:
            assert grants(rendered.one("Role", "-intake", ns)) == INTAKE_NEEDS
        else:  # the intake creates VideoTranscodes in one namespace only
            assert not [r for r in rendered.kind("Role")
                        if r["metadata"]["name"].endswith("-intake") and r["metadata"]["namespace"] == ns]
        if report:
            assert grants(rendered.one("Role", "-transcoder", ns)) == TRANSCODER_NEEDS
        for suffix, sa in (("-operator", f"{RELEASE}-operator"), ("-intake", f"{RELEASE}-intake"),
                           ("-transcoder", "lectern-transcoder")):
            if (suffix == "-intake" and not (intake and ns == intake_ns)) or (suffix == "-transcoder" and not report):
                continue
            binding = rendered.one("RoleBinding", suffix, ns)
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                          "name": binding["metadata"]["name"]}
            sa_ns = ns if suffix == "-transcoder" else NAMESPACE
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]
    roles_ns = {r["metadata"]["namespace"] for r in rendered.kind("Role")}
    assert roles_ns == set(watched(rendered))
    has_crd_role = bool(rendered.kind("ClusterRole"))
    assert has_crd_role == values.get("rbac", {}).get("readCRDs", True)


def test_transcoder_identity_per_namespace(render):
    rendered = render("namespaces")
    sas = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in rendered.kind("ServiceAccount")}
    for ns in watched(rendered):
        assert (ns, "lectern-transcoder") in sas
    # With progress reports off, the transcoder's identity has no permission at all.
    minimal = render("minimal")
    assert not [r for r in minimal.kind("Role") if r["metadata"]["name"].endswith("-transcoder")]
    assert not [b for b in minimal.kind("RoleBinding") if b["metadata"]["name"].endswith("-transcoder")]
    minimal.one("ServiceAccount", "lectern-transcoder")


# --- values -> settings (operator/settings.py) ------------------------------------------------

def container_env(rendered, deployment_suffix: str) -> tuple[dict[str, str], dict[str, dict]]:
    """(plain settings from the ConfigMap, secret refs) as the container sees them."""
    dep = rendered.one("Deployment", deployment_suffix)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    cm_name = container["envFrom"][0]["configMapRef"]["name"]
    cm = [c for c in rendered.kind("ConfigMap") if c["metadata"]["name"] == cm_name][0]["data"]
    plain = dict(cm)
    refs = {}
    for env in container["env"]:
        if "valueFrom" in env and "secretKeyRef" in env["valueFrom"]:
            refs[env["name"]] = env["valueFrom"]["secretKeyRef"]
        elif "value" in env:
            plain[env["name"]] = env["value"]
    return plain, refs


def settings_class():
    import lectern_operator.settings as settings
    return settings.Settings


@pytest.mark.parametrize("scenario", ALL)
def test_every_variable_is_a_setting(render, scenario):
    fields = {f"LECTERN_{name.upper()}" for name in settings_class().model_fields}
    rendered = render(scenario)
    for suffix in ("-operator", "-intake") if rendered.values.get("intake", {}).get("enabled", True) else ("-operator",):
        plain, refs = container_env(rendered, suffix)
        names = {n for n in (*plain, *refs) if n.startswith("LECTERN_")}
        unknown = names - fields
        assert not unknown, f"chart sets variables operator/settings.py does not define: {sorted(unknown)}"


def test_every_setting_is_set_by_the_chart(render):
    """The chart maps a value onto every setting (or it is knowingly left to the default)."""
    left_to_default = {
        "LECTERN_TRANSCODER_PRIORITY_CLASS_NAME",  # only set when a class is given
        "LECTERN_INTAKE_NAMESPACE",  # only set when given (default: the first watched namespace)
        "LECTERN_PEERING_NAME",  # only set with more than one replica (else LECTERN_STANDALONE=true)
        "LECTERN_PEERING_PRIORITY",  # each replica draws a random one unless pinned (equal priorities freeze kopf)
        "LECTERN_TEST_INSECURE_LOOPBACK",  # the tests' emulator escape, in test images only, never in the chart
        "LECTERN_RETENTION_CHECK_SECONDS",  # derived from the retention (a quarter of it, at most an hour) unless pinned
    }
    fields = {f"LECTERN_{name.upper()}" for name in settings_class().model_fields}
    plain, refs = container_env(render("defaults"), "-operator")
    missing = fields - set(plain) - set(refs) - left_to_default
    assert not missing, f"settings with no chart value: {sorted(missing)}"
    assert set(refs) == {"LECTERN_MONGO_URL", "LECTERN_REDIS_URL"}
    # The intake gets Redis but not MongoDB credentials.
    _, intake_refs = container_env(render("defaults"), "-intake")
    assert set(intake_refs) == {"LECTERN_REDIS_URL"}


@pytest.mark.parametrize("scenario", ["defaults", "dedicated-pool", "digest", "namespaces", "peering"])
def test_settings_parse_the_rendered_environment(render, scenario, monkeypatch):
    """The operator's own Settings class reads what the chart renders, with the intended values."""
    Settings = settings_class()
    rendered = render(scenario)
    plain, refs = container_env(rendered, "-operator")
    for name in list(__import__("os").environ):
        if name.startswith("LECTERN_"):
            monkeypatch.delenv(name)
    for name, value in plain.items():
        monkeypatch.setenv(name, value)
    for name in refs:
        monkeypatch.setenv(name, "redis://secret" if "REDIS" in name else "mongodb://secret")
    s = Settings()
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), rendered.values)
    t = values["transcode"]
    assert s.namespaces == watched(rendered)
    assert s.max_concurrent == t["maxConcurrent"]
    assert s.stall_timeout_seconds == t["stallTimeoutSeconds"]
    assert s.transcoder_cpu_request == str(t["resources"]["cpu"]["request"])
    assert s.transcoder_max_memory == str(t["resources"]["memory"]["max"])
    assert s.transcoder_scratch_size == str(t["resources"]["scratchSize"])
    assert s.transcoder_active_deadline_seconds == t["activeDeadlineSeconds"]
    assert s.transcoder_backoff_limit == t["backoffLimit"]
    assert s.transcoder_ttl_seconds_after_finished == t["ttlSecondsAfterFinished"]
    assert s.transcoder_node_selector == t["nodeSelector"]
    assert s.transcoder_tolerations == t["tolerations"]
    assert s.transcoder_affinity == t["affinity"]
    assert s.transcoder_priority_class_name == (t["priorityClassName"] or None)
    assert s.transcoder_service_account == t["serviceAccount"]["name"]
    assert s.allowed_hosts == values["media"]["allowedHosts"]
    assert s.max_download_bytes == values["media"]["maxDownloadBytes"]
    assert s.cloudinary_secret_name == values["cloudinary"]["existingSecret"]
    assert s.log_level == values["logging"]["level"]
    assert s.log_format == values["logging"]["format"]
    assert s.transcoder_run_as_user == t["runAsUser"]
    assert s.transcoder_min_cpu == str(t["resources"]["cpu"]["min"])
    assert s.standalone is (values["operator"]["replicas"] == 1)
    assert s.intake_shutdown_grace_seconds == values["intake"]["shutdownGraceSeconds"]
    assert s.reconcile_interval_seconds == values["operator"]["reconcileIntervalSeconds"]
    assert s.intake_namespace == (values["intake"]["namespace"] or None)
    img = values["image"]["transcoder"]
    if img["digest"]:
        assert s.transcoder_image == f"{img['repository']}@{img['digest']}"
    else:
        assert s.transcoder_image == f"{img['repository']}:{img['tag'] or '0.1.0'}"
    pull = [p if isinstance(p, str) else p["name"] for p in values.get("imagePullSecrets", [])]
    assert s.transcoder_image_pull_secrets == pull


# --- scenarios ------------------------------------------------------------------------------------

def test_defaults_watch_the_release_namespace(render):
    rendered = render("defaults")
    assert configmap(rendered)["LECTERN_NAMESPACES"] == NAMESPACE
    assert rendered.one("Deployment", "-operator")["spec"]["replicas"] == 1
    assert not rendered.kind("KopfPeering")
    # deny by default (issue 12): the transcode pods' policy is on without being asked for
    assert rendered.one("NetworkPolicy", "-transcoder", NAMESPACE)["spec"]["ingress"] == []
    assert not rendered.kind("ServiceMonitor") and not rendered.kind("Secret")


@pytest.mark.parametrize("enabled", [None, True, False])
def test_hls_default_renders_the_setting(render, enabled, monkeypatch):
    """transcode.hls.enabled (default true) -> LECTERN_HLS_DEFAULT -> Settings.hls_default."""
    rendered = render("defaults" if enabled is None else {"transcode": {"hls": {"enabled": enabled}}})
    want = True if enabled is None else enabled
    assert yaml.safe_load((CHART / "values.yaml").read_text())["transcode"]["hls"]["enabled"] is True
    assert configmap(rendered)["LECTERN_HLS_DEFAULT"] == str(want).lower()
    plain, _ = container_env(rendered, "-operator")
    assert plain["LECTERN_HLS_DEFAULT"] == str(want).lower()
    monkeypatch.setenv("LECTERN_HLS_DEFAULT", plain["LECTERN_HLS_DEFAULT"])
    assert settings_class()().hls_default is want


@pytest.mark.parametrize("report", [True, False])
def test_report_progress_reaches_the_operator(render, report, monkeypatch):
    """transcode.reportProgress -> LECTERN_TRANSCODER_REPORT_PROGRESS: off, the operator gives
    transcode pods no token (they have no Role either)."""
    rendered = render({"transcode": {"reportProgress": report}})
    plain, _ = container_env(rendered, "-operator")
    monkeypatch.setenv("LECTERN_TRANSCODER_REPORT_PROGRESS", plain["LECTERN_TRANSCODER_REPORT_PROGRESS"])
    assert settings_class()().transcoder_report_progress is report
    assert bool([r for r in rendered.kind("Role") if r["metadata"]["name"].endswith("-transcoder")]) is report


def test_multiple_namespaces(render):
    rendered = render("namespaces")
    assert configmap(rendered)["LECTERN_NAMESPACES"] == "media-a,media-b,media-c"
    assert configmap(rendered)["LECTERN_INTAKE_NAMESPACE"] == "media-b"
    assert [r["metadata"]["namespace"] for r in rendered.kind("Role") if r["metadata"]["name"].endswith("-intake")] == ["media-b"]
    for ns in ("media-a", "media-b", "media-c"):
        rendered.one("Role", "-operator", ns)
        rendered.one("ServiceAccount", "lectern-transcoder", ns)
    # The operator and intake themselves stay in the release namespace.
    assert {d["metadata"]["namespace"] for d in rendered.kind("Deployment")} == {NAMESPACE}


def test_single_replica_is_standalone_and_never_overlaps(render):
    rendered = render("defaults")
    dep = rendered.one("Deployment", "-operator")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "LECTERN_PEERING_NAME" not in configmap(rendered)
    assert configmap(rendered)["LECTERN_STANDALONE"] == "true"
    assert not rendered.kind("KopfPeering")
    for role in rendered.kind("Role"):
        assert ("kopf.dev", "kopfpeerings") not in grants(role)


def test_two_replicas_use_kopf_peering(render, helm):
    rendered = render("peering")
    dep = rendered.one("Deployment", "-operator")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    peerings = rendered.kind("KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["media-a", "media-b"]
    assert {p["metadata"]["name"] for p in peerings} == {f"{RELEASE}"}
    assert configmap(rendered).get("LECTERN_PEERING_NAME") == RELEASE
    assert configmap(rendered)["LECTERN_STANDALONE"] == "false"
    # kopf's peering identity is the pod name.
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in env
    # The KopfPeering objects match the peering CRD shipped in crds/.
    crd = yaml.safe_load((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text())
    assert crd["spec"]["scope"] == "Namespaced"
    for p in peerings:
        assert p["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
        assert p["kind"] == crd["spec"]["names"]["kind"]


def test_digest_images_and_pull_secrets(render):
    rendered = render("digest")
    for dep in rendered.kind("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        assert spec["containers"][0]["image"] == "ghcr.io/lectern/operator@sha256:" + "a" * 64
        assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other-cred"}]
    cm = configmap(rendered)
    assert cm["LECTERN_TRANSCODER_IMAGE"] == "registry.example.com:5000/media/transcoder@sha256:" + "b" * 64
    assert cm["LECTERN_TRANSCODER_IMAGE_PULL_SECRETS"] == "regcred,other-cred"
    # Without a digest, the tag defaults to the chart's appVersion.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert configmap(render("defaults"))["LECTERN_TRANSCODER_IMAGE"] == f"ghcr.io/lectern/transcoder:{chart['appVersion']}"


def test_network_policy_transcoder_egress_only_dns_cdn_apiserver(render):
    rendered = render("networkpolicy")
    for ns in ("media-a", "media-b"):
        np = rendered.one("NetworkPolicy", "-transcoder", ns)
        spec = np["spec"]
        assert spec["podSelector"] == {"matchExpressions": [{"key": "media.lectern.dev/transcode", "operator": "Exists"}]}
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        assert spec["ingress"] == []
        dns, cdn, api = spec["egress"]
        assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
        assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                              "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
        assert cdn["ports"] == [{"protocol": "TCP", "port": 443}]
        v4, v6 = (b["ipBlock"] for b in cdn["to"])
        assert v4["cidr"] == "0.0.0.0/0" and v6["cidr"] == "::/0"
        # every except on the block of its own family (the API refuses one outside its cidr)
        assert all(":" not in c for c in v4["except"]) and all(":" in c for c in v6["except"])
        assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                "127.0.0.0/8", "0.0.0.0/8"} <= set(v4["except"])
        assert {"fc00::/7", "fe80::/10", "fec0::/10", "fd00:ec2::254/128", "64:ff9b::/96",
                "64:ff9b:1::/48", "2002::/16", "::/127"} <= set(v6["except"])
        assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
        assert {p["port"] for p in api["ports"]} == {443, 6443}
    own = rendered.one("NetworkPolicy", f"{RELEASE}", NAMESPACE)
    assert own["spec"]["policyTypes"] == ["Ingress"]
    assert {p["port"] for p in own["spec"]["ingress"][0]["ports"]} == {8080, 9090}


def _selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector evaluated as the API server does (matchLabels AND every matchExpression)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def test_network_policy_selects_exactly_the_transcode_pods(render):
    """The policy's selector against the pod labels operator/jobs.py really gives a transcode's
    pod (not a copy of them), and against the chart's own pods: it holds every transcode pod,
    and none of the operator's or the intake's (their policy does not hold transcode pods)."""
    from lectern_operator import jobs
    from lectern_operator.settings import Settings
    rendered = render("defaults")
    policy = rendered.one("NetworkPolicy", "-transcoder", NAMESPACE)["spec"]["podSelector"]
    own = rendered.one("NetworkPolicy", RELEASE, NAMESPACE)["spec"]["podSelector"]
    for name, lid in (("lecture-1", "65f1c2a9e4b0c3d2a1f00001"), ("a" * 200 + ".b", "x_y-z")):
        body = {"metadata": {"name": name, "namespace": NAMESPACE, "uid": "u"},
                "spec": {"lectureId": lid, "instructorId": "i",
                         "rawVideoUrl": "https://res.cloudinary.com/demo/video/upload/raw.mov"}}
        pod_labels = jobs.build_job(body, Settings())["spec"]["template"]["metadata"]["labels"]
        assert _selects(policy, pod_labels) and not _selects(own, pod_labels)
    for dep in rendered.kind("Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert not _selects(policy, labels), dep["metadata"]["name"]
        assert _selects(own, labels), dep["metadata"]["name"]


def test_network_policy_dns_by_address_for_nodelocal_dnscache(render):
    """NodeLocal DNSCache answers on a link-local address on every node: listed by address, it is
    reachable on port 53 (and only there: the HTTPS rule still refuses 169.254.0.0/16)."""
    spec = render({"networkPolicy": {"dns": {"cidrs": ["169.254.20.10/32"]}}}).one(
        "NetworkPolicy", "-transcoder", NAMESPACE)["spec"]
    dns, cdn = spec["egress"]
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in dns["to"] and len(dns["to"]) == 2
    assert "169.254.0.0/16" in cdn["to"][0]["ipBlock"]["except"]
    # no API server CIDR and nothing to look up (helm template): the rule is left out


def test_service_monitor_selects_the_metrics_services(render):
    rendered = render("servicemonitor")
    sm = rendered.one("ServiceMonitor", "")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    selector = sm["spec"]["selector"]["matchLabels"]
    services = [s for s in rendered.kind("Service")
                if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in services} == {f"{RELEASE}-operator-metrics", f"{RELEASE}-intake-metrics"}
    for ep in sm["spec"]["endpoints"]:
        assert ep["path"] == "/metrics"
        assert all(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)


@pytest.mark.parametrize("scenario", ALL)
def test_services_and_pdbs_select_their_pods(render, scenario):
    rendered = render(scenario)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in rendered.kind("Deployment")}
    for dep in rendered.kind("Deployment"):
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods[dep["metadata"]["name"]].items()
    for obj in rendered.kind("Service") + rendered.kind("PodDisruptionBudget"):
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        matched = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, (obj["metadata"]["name"], matched)
    for pdb in rendered.kind("PodDisruptionBudget"):
        assert pdb["spec"]["maxUnavailable"] == 1  # a one-replica deployment can still be drained


def test_dev_secrets_created_where_they_are_needed(render):
    rendered = render("dev-secrets")
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in rendered.kind("Secret")}
    assert secrets[(NAMESPACE, f"{RELEASE}-redis")]["stringData"] == {"REDIS_URL": "redis://:pw@redis:6379/0"}
    assert secrets[(NAMESPACE, f"{RELEASE}-mongo")]["stringData"]["MONGO_URL"].startswith("mongodb://")
    for ns in ("media-a", "media-b"):  # the transcode pods read it in their own namespace
        assert secrets[(ns, f"{RELEASE}-cloudinary")]["stringData"] == {"CLOUDINARY_URL": "cloudinary://key:secret@demo"}
    plain, refs = container_env(rendered, "-operator")
    assert refs["LECTERN_REDIS_URL"] == {"name": f"{RELEASE}-redis", "key": "REDIS_URL"}
    assert refs["LECTERN_MONGO_URL"] == {"name": f"{RELEASE}-mongo", "key": "MONGO_URL"}
    assert plain["LECTERN_CLOUDINARY_SECRET_NAME"] == f"{RELEASE}-cloudinary"
    # No credential ever lands in the ConfigMap.
    assert not any(re.search(r"pw@|secret@|://mongo", v) for v in configmap(rendered).values())


def test_existing_secrets_are_referenced_not_created(render):
    rendered = render("existing-secrets")
    assert not rendered.kind("Secret")
    plain, refs = container_env(rendered, "-operator")
    assert refs["LECTERN_REDIS_URL"] == {"name": "platform-redis", "key": "url"}
    assert refs["LECTERN_MONGO_URL"] == {"name": "platform-mongo", "key": "uri"}
    assert plain["LECTERN_CLOUDINARY_SECRET_NAME"] == "platform-cloudinary"
    assert plain["LECTERN_CLOUDINARY_SECRET_KEY"] == "CLOUDINARY_URL"


def test_config_change_rolls_the_pods(render):
    a = render("defaults").one("Deployment", "-operator")["spec"]["template"]["metadata"]["annotations"]
    b = render("dedicated-pool").one("Deployment", "-operator")["spec"]["template"]["metadata"]["annotations"]
    assert a["checksum/config"] != b["checksum/config"]


def test_operator_pod_scheduling_values(render):
    spec = render("dedicated-pool").one("Deployment", "-operator")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["priorityClassName"] == "platform-high"
    assert configmap(render("dedicated-pool"))["LECTERN_TRANSCODER_PRIORITY_CLASS_NAME"] == "batch-low"


def test_notes_tell_how_to_start(helm):
    proc = helm.run("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                    "--values", helm.values_file(deep_merge(BASE_VALUES, SCENARIOS["networkpolicy"]
                                                            | {"networkPolicy": {"enabled": True}})))
    notes = proc.stdout.split("NOTES:", 1)[1]
    for needle in ("kind: VideoTranscode", "kubectl apply -f -", "get vt -w", "-o wide", "describe vt",
                   "status.message", "logs job/", "terminated.message", "kubectl apply --server-side -f",
                   "media-a", "networkPolicy.apiServer.cidrs is empty"):
        assert needle in notes, needle


# --- values.yaml and values.schema.json ---------------------------------------------------------

BAD_VALUES = {
    "unknown top-level key": {"replicaCount": 2},
    "unknown nested key": {"transcode": {"maxConcurent": 3}},
    "bad pull policy": {"image": {"operator": {"pullPolicy": "Sometimes"}}},
    "bad digest": {"image": {"transcoder": {"digest": "sha256:xyz"}}},
    "tag with a colon": {"image": {"operator": {"tag": "a:b"}}},
    "concurrency zero": {"transcode": {"maxConcurrent": 0}},
    "concurrency as string": {"transcode": {"maxConcurrent": "4"}},
    "stall timeout too short": {"transcode": {"stallTimeoutSeconds": 10}},
    "negative backoff": {"transcode": {"backoffLimit": -1}},
    "bad cpu quantity": {"transcode": {"resources": {"cpu": {"request": "one"}}}},
    "bad memory quantity": {"operator": {"resources": {"limits": {"memory": "2 GB"}}}},
    "bad namespace": {"watchNamespaces": ["Media_A"]},
    "duplicate namespace": {"watchNamespaces": ["a", "a"]},
    "bad log level": {"logging": {"level": "verbose"}},
    "bad log format": {"logging": {"format": "xml"}},
    "root allowed": {"podSecurityContext": {"runAsNonRoot": False}},
    "privilege escalation": {"securityContext": {"allowPrivilegeEscalation": True}},
    "privileged": {"securityContext": {"privileged": True}},
    "bad toleration operator": {"transcode": {"tolerations": [{"key": "k", "operator": "Maybe"}]}},
    "non-string node selector": {"transcode": {"nodeSelector": {"pool": 1}}},
    "bad cidr": {"networkPolicy": {"cdn": {"cidrs": ["everywhere"]}}},
    "no allowed hosts": {"media": {"allowedHosts": []}},
    "host with scheme": {"media": {"allowedHosts": ["https://res.cloudinary.com"]}},
    "http redis url": {"redis": {"url": "http://redis"}},
    "replicas as string": {"operator": {"replicas": "2"}},
    "same health and metrics port": {"healthPort": 9090},
    "no redis": {"redis": {"existingSecret": "", "url": ""}},
    "no mongo": {"mongo": {"existingSecret": "", "url": ""}},
    "no cloudinary": {"cloudinary": {"existingSecret": "", "url": ""}},
    "intake namespace not watched": {"intake": {"namespace": "elsewhere"}},
    "shutdown grace beyond the pod's": {"intake": {"shutdownGraceSeconds": 90}},
    "zero reconcile interval": {"operator": {"reconcileIntervalSeconds": 0}},
    "hls enabled as string": {"transcode": {"hls": {"enabled": "yes"}}},
    "unknown hls key": {"transcode": {"hls": {"rungs": 3}}},
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_refused(helm, case):
    proc = helm.template(deep_merge(BASE_VALUES, BAD_VALUES[case]), check=False)
    assert proc.returncode != 0, f"{case}: helm accepted it"
    assert "Error" in proc.stderr, proc.stderr


def test_missing_connection_settings_are_named(helm):
    proc = helm.template({}, check=False)
    assert proc.returncode != 0
    assert "redis.existingSecret" in proc.stderr or "mongo.existingSecret" in proc.stderr, proc.stderr


def values_key_lines(text: str):
    """(line number, indent, key, comment lines above) for every mapping key in values.yaml."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(\s|$)", line)
        if not m:
            continue
        comments = []
        k = n - 1
        while k >= 0 and lines[k].strip().startswith("#"):
            comments.insert(0, lines[k].strip())
            k -= 1
        yield n + 1, len(m.group(1)), m.group(2), comments


def test_every_value_is_documented():
    """Every key has a comment right above it, unless a `# --` comment documents its parent
    object as a whole (e.g. a resources block or a securityContext)."""
    undocumented = []
    documented_block_indent: int | None = None
    for lineno, indent, key, comments in values_key_lines((CHART / "values.yaml").read_text()):
        if documented_block_indent is not None and indent > documented_block_indent:
            continue
        documented_block_indent = None
        if not comments:
            undocumented.append(f"line {lineno}: {key}")
        elif any(c.startswith("# --") for c in comments):
            documented_block_indent = indent
    assert not undocumented, "values.yaml keys without a comment: " + ", ".join(undocumented)


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaf_paths(v, prefix + (k,))
    else:
        yield prefix


def _schema_at(schema, root, path):
    node = schema
    for key in path:
        while "$ref" in node:
            node = root["definitions"][node["$ref"].split("/")[-1]]
        props = node.get("properties")
        if props is None or key not in props:
            return node if node.get("type") == "object" and node.get("additionalProperties") is not False else None
        node = props[key]
    return node


def test_schema_types_every_value_and_nothing_more():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    for path in _leaf_paths(values):
        node = _schema_at(schema, schema, path)
        assert node is not None, f"values.yaml {'.'.join(path)} is not in values.schema.json"
    # And no option hides in the schema without a default in values.yaml.
    def walk(node, path):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        for key, sub in node.get("properties", {}).items():
            if path == () and key == "global":
                continue
            here = path + (key,)
            cur = values
            for p in path:
                cur = cur.get(p, {}) if isinstance(cur, dict) else {}
            if isinstance(cur, dict) and key in cur:
                walk(sub, here)
            elif len(here) <= 3 and not (set(path) & {"resources", "securityContext", "podSecurityContext",
                                                        "affinity", "dns", "serviceAccount"}):
                pytest.fail(f"values.schema.json has {'.'.join(here)} but values.yaml has no default")
    walk(schema, ())


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert re.match(r"^>=1\.31", chart["kubeVersion"])
    pyproject = (CHART.parents[1] / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject, "appVersion must match the package version"


def test_older_clusters_are_refused(helm):
    """Jobs rely on podFailurePolicy (GA in 1.31): the chart refuses to install on older clusters."""
    proc = helm.template(BASE_VALUES, "--kube-version", "1.30.9", check=False)
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr
    helm.template(BASE_VALUES, "--kube-version", "1.31.0")


def test_names_match_the_api_module(render):
    """The RBAC rules and the NetworkPolicy use the API's own group, plural and pod label."""
    import lectern_operator.api.v1alpha1 as api
    rendered = render("networkpolicy")
    groups = {(g, r) for role in rendered.kind("Role") for rule in role["rules"]
              for g in rule["apiGroups"] for r in rule["resources"] if "videotranscodes" in r}
    assert groups == {(api.GROUP, api.PLURAL), (api.GROUP, f"{api.PLURAL}/status"),
                      (api.GROUP, f"{api.PLURAL}/finalizers")}
    np = rendered.one("NetworkPolicy", "-transcoder", "media-a")
    assert np["spec"]["podSelector"]["matchExpressions"][0]["key"] == api.LABEL_TRANSCODE
    # Chart defaults agree with the settings' defaults where both name the same thing.
    Settings = settings_class()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    assert values["transcode"]["serviceAccount"]["name"] == defaults["transcoder_service_account"]
    assert values["transcode"]["runAsUser"] == defaults["transcoder_run_as_user"]
    assert values["cloudinary"]["secretKey"] == defaults["cloudinary_secret_key"]
    assert values["queue"] == {"name": defaults["queue_name"], "prefix": defaults["queue_prefix"]}
    assert values["notifications"]["channel"] == defaults["notifications_channel"]
    assert values["notifications"]["stream"] == defaults["notifications_stream"]
    assert (values["healthPort"], values["metrics"]["port"]) == (defaults["health_port"], defaults["metrics_port"])
