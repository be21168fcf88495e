"""The transcode pod carries no ServiceAccount token it does not need (issue 12, item 4), on the
real cluster: the API server's ServiceAccount admission adds no `kube-api-access-*` volume, the
only token is the 10-minute projected one in the transcoder container, and the status report
(made with it by the fake transcoder, as transcoder/report.py does) still arrives."""

from __future__ import annotations

from lectern_operator import jobs
from tests.operator.conftest import LONG, lecture, make_cr, release, running_pod, status_of, wait_until


async def test_the_pod_reports_with_a_short_projected_token_only(kube, operator, plan, lectures):
    lecture(lectures, "token")
    plan("token", progress=[30], hang=LONG)
    kube.create(make_cr("vt-token", "token"))
    await kube.await_for("vt", "vt-token", predicate=lambda o: (o.get("status") or {}).get("progress") == 30,
                         timeout=40)  # the report arrived, sent with the projected token
    report = status_of(kube, "vt-token")["report"]
    job = status_of(kube, "vt-token")["jobName"]
    pod = await wait_until(lambda: running_pod(kube, job), what="the running pod")
    assert report["pod"] == pod["metadata"]["name"]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    tokens = [(v["name"], src["serviceAccountToken"]) for v in spec["volumes"]
              for src in (v.get("projected") or {}).get("sources") or [] if "serviceAccountToken" in src]
    assert tokens == [("kube-api-access", {"path": "token", "expirationSeconds": jobs.TOKEN_SECONDS})], tokens
    assert not any(v["name"].startswith("kube-api-access-") for v in spec["volumes"])
    (container,) = spec["containers"]
    assert {"name": "kube-api-access", "mountPath": jobs.SERVICE_ACCOUNT_DIR, "readOnly": True} in container["volumeMounts"]
    assert not spec.get("initContainers") and not spec.get("ephemeralContainers")
    await release(kube, plan, "vt-token", "token")
    await kube.await_for("vt", "vt-token", predicate=lambda o: (o.get("status") or {}).get("phase") == "Succeeded",
                         timeout=40)
