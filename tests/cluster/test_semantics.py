"""What the real API server and controllers do with Lectern's objects: the CRD's CEL rules and
schema, the garbage collector and the TTL controller. No operator runs here: these are the
guarantees the operator builds on, checked against Kubernetes itself."""

from __future__ import annotations

import pytest

from lectern_operator import jobs
from lectern_operator.api import v1alpha1 as api
from lectern_operator.settings import Settings
from tests.kube_client import ApiError, KubeClient


def vt(name: str, lecture_id: str = "lec-1", **spec) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": {"lectureId": lecture_id, "instructorId": "inst-1",
                     "rawVideoUrl": f"https://res.cloudinary.com/demo/video/upload/{lecture_id}.mov", **spec}}


def test_cel_rule_refuses_a_new_lecture_id(kube: KubeClient):
    kube.create(vt("immutable"))
    with pytest.raises(ApiError) as err:
        kube.patch("vt", "immutable", {"spec": {"lectureId": "lec-2"}})
    assert err.value.code == 422
    assert "lectureId is immutable" in err.value.message
    assert kube.get("vt", "immutable")["spec"]["lectureId"] == "lec-1"
    # a field without the rule may change
    kube.patch("vt", "immutable", {"spec": {"priority": 5}})


@pytest.mark.parametrize("spec, field, words", [
    ({"rawVideoUrl": "http://res.cloudinary.com/x.mov"}, "spec.rawVideoUrl", "should match"),
    ({"lectureId": "bad id!"}, "spec.lectureId", "should match"),
    ({"outputs": [{"type": "mp4", "maxHeight": 4000}]}, "spec.outputs[0].maxHeight", "less than or equal to 720"),
    ({"resources": {"cpu": "lots"}}, "spec.resources.cpu", "should match"),
])
def test_server_refuses_an_invalid_spec_with_the_schemas_message(kube: KubeClient, spec, field, words):
    with pytest.raises(ApiError) as err:
        kube.create(vt("invalid", **spec))
    assert err.value.code == 422
    assert field in err.value.message and words in err.value.message, err.value.message
    assert kube.get("vt", "invalid") is None


def test_garbage_collector_removes_a_deleted_transcodes_job_and_pods(kube: KubeClient):
    cr = kube.create(vt("gc-owner", "lec-gc"))
    settings = Settings(transcoder_image="lectern.test/fake-transcoder", transcoder_service_account="default")
    job = kube.create(jobs.build_job(cr, settings))
    name = job["metadata"]["name"]
    # The Job controller makes its pod for real (it may run or fail: no Cloudinary Secret here).
    kube.wait_for("jobs", name, predicate=lambda j: j and (j.get("status") or {}).get("startTime"))
    assert kube.list("pods", labels=f"job-name={name}")
    kube.delete("vt", "gc-owner")
    kube.wait_for("jobs", name, predicate=lambda j: j is None, timeout=60)
    for _ in range(600):
        if not kube.list("pods", labels=f"job-name={name}"):
            break
        import time
        time.sleep(0.1)
    assert not kube.list("pods", labels=f"job-name={name}")


def test_ttl_controller_removes_a_finished_job(kube: KubeClient, fake_transcoder):
    cr = kube.create(vt("ttl-owner", "lec-ttl"))
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lectern-cloudinary"},
                 "stringData": {"CLOUDINARY_URL": "cloudinary://k:s@demo"}})
    settings = Settings(transcoder_image="lectern.test/fake-transcoder", transcoder_service_account="default",
                        transcoder_ttl_seconds_after_finished=1)
    job = kube.create(jobs.build_job(cr, settings))
    name = job["metadata"]["name"]
    kube.wait_for("jobs", name, predicate=lambda j: j is None or any(
        c["type"] == "Complete" and c["status"] == "True" for c in (j.get("status") or {}).get("conditions") or []),
        timeout=60)
    kube.wait_for("jobs", name, predicate=lambda j: j is None, timeout=60)
