"""The API: CRD generated from the models, checked in, structural; samples valid/invalid;
the Job manifest valid against the real Kubernetes OpenAPI schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lectern_operator import jobs
from lectern_operator.api import crd, v1alpha1 as api
from lectern_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"


def _schema() -> dict:
    doc = yaml.safe_load((ROOT / "crds" / crd.FILE_NAME).read_text())
    return crd.jsonschema_for_crd(doc)


def test_crd_checked_in_matches_the_models():
    exe = Path(sys.executable).with_name("lectern-crds")
    result = subprocess.run([str(exe), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_crd_check_detects_drift(tmp_path):
    for rel in crd.TARGETS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(crd.render().replace("maxItems: 8", "maxItems: 9"))
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert crd.main(["--write", "--root", str(tmp_path)]) == 0
    assert crd.main(["--check", "--root", str(tmp_path)]) == 0


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_crd_is_structural():
    doc = crd.crd()
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for bad in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "additionalProperties"):
            assert bad not in node or path.endswith(".properties"), f"{bad} at {path}"
        if "properties" in node and not path.endswith(".properties"):
            assert node.get("type") == "object", path
    # free-form only where needed: metadata is the only typeless object
    assert not [p for p, n in _walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert version["subresources"] == {"status": {}}
    names = doc["spec"]["names"]
    assert names["shortNames"] == ["vt"] and names["categories"] == ["lectern"]
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(cols)[:5] == ["Lecture", "Phase", "Progress", "Attempts", "Age"]
    assert cols["Job"]["priority"] == 1 and cols["Video URL"]["priority"] == 1
    assert cols["HLS URL"] == {"name": "HLS URL", "type": "string", "jsonPath": ".status.hlsUrl", "priority": 1}
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["instructorId", "lectureId", "rawVideoUrl"]
    assert schema["properties"]["status"]["properties"]["phase"]["enum"] == list(api.PHASES)
    assert spec["properties"]["resources"]["properties"]["cpu"]["nullable"] is True


def test_every_status_field_the_operator_writes_is_in_the_schema():
    # the API server prunes unknown fields: a field missing here would silently vanish
    status = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for field in ("phase", "progress", "attempts", "jobName", "videoUrl", "message", "observedGeneration",
                  "queuedAt", "startedAt", "completedAt", "progressAt", "stalls", "conditions", "cost",
                  "lecture", "notified", "report"):
        assert field in status, field
    assert set(status["cost"]["properties"]) >= {"cpuSeconds", "bytesDownloaded", "bytesUploaded", "speed", "wallSeconds"}
    assert set(status["report"]["properties"]) >= {"progress", "stage", "videoUrl", "hlsUrl", "posterUrl",
                                                   "cpuSeconds", "speed"}
    assert {"hlsUrl", "posterUrl"} <= set(status)


def test_valid_sample_passes_the_schema():
    sample = yaml.safe_load((ROOT / "examples" / "videotranscode.yaml").read_text())
    jsonschema.validate(sample, _schema())
    api.VideoTranscodeSpec.model_validate(sample["spec"])


def test_invalid_sample_is_refused_by_the_schema():
    sample = yaml.safe_load((ROOT / "examples" / "invalid-videotranscode.yaml").read_text())
    errors = list(jsonschema.Draft7Validator(_schema()).iter_errors(sample))
    paths = {".".join(str(p) for p in e.absolute_path) for e in errors}
    assert {"spec.lectureId", "spec.rawVideoUrl", "spec.priority", "spec.outputs.0.type"} <= paths


@pytest.mark.parametrize("spec", [
    {"instructorId": "u", "rawVideoUrl": "https://res.cloudinary.com/a.mp4"},                      # no lectureId
    {"lectureId": "l", "instructorId": "u", "rawVideoUrl": "https://res.cloudinary.com/a b.mp4"},  # whitespace
    {"lectureId": "l", "instructorId": "u", "rawVideoUrl": "ftp://x/a.mp4"},
    {"lectureId": "-l", "instructorId": "u", "rawVideoUrl": "https://x/a.mp4"},
    {"lectureId": "l", "instructorId": "u", "rawVideoUrl": "https://x/a.mp4", "outputs": []},
    {"lectureId": "l", "instructorId": "u", "rawVideoUrl": "https://x/a.mp4", "resources": {"cpu": "lots"}},
    {"lectureId": "l", "instructorId": "u", "rawVideoUrl": "https://x/a.mp4", "activeDeadlineSeconds": 5},
])
def test_bad_specs_are_refused(spec):
    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, _schema())


def _cr(**spec) -> dict:
    base = {"lectureId": "65f1c2a9e4b0c3d2a1f00001", "instructorId": "inst-1",
            "rawVideoUrl": "https://res.cloudinary.com/demo/video/upload/raw.mov"}
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": "lecture-1", "namespace": "lectern", "uid": "0b6f7c1e-1111-2222-3333-444455556666"},
            "spec": {**base, **spec}}


def _settings(**kw) -> Settings:
    return Settings(transcoder_node_selector={"lectern.dev/pool": "transcode"},
                    transcoder_tolerations=[{"key": "transcode", "operator": "Exists", "effect": "NoSchedule"}],
                    transcoder_affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "preference": {"matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}}]}},
                    transcoder_priority_class_name="lectern-batch", transcoder_image_pull_secrets="regcred",
                    **kw)


def test_job_manifest_has_every_field():
    s = _settings(hls_default=False)  # the HLS arguments: test_job_hls_* below
    job = jobs.build_job(_cr(resources={"cpu": "3", "memory": "64Gi"}, activeDeadlineSeconds=900), s)
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == jobs.job_name("lecture-1", "0b6f7c1e-1111-2222-3333-444455556666")
    assert meta["name"] == jobs.build_job(_cr(), s)["metadata"]["name"]  # deterministic
    assert len(meta["name"]) <= 63
    assert meta["labels"][api.LABEL_TRANSCODE] == "lecture-1"
    assert meta["ownerReferences"] == [{"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "lecture-1",
                                        "uid": "0b6f7c1e-1111-2222-3333-444455556666",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["backoffLimit"] == s.transcoder_backoff_limit
    assert spec["ttlSecondsAfterFinished"] == s.transcoder_ttl_seconds_after_finished
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "transcoder", "operator": "In", "values": [65]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"][api.LABEL_TRANSCODE] == "lecture-1"
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == s.transcoder_service_account
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["nodeSelector"] == {"lectern.dev/pool": "transcode"}
    assert pod["tolerations"][0]["key"] == "transcode"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "lectern-batch"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": s.transcoder_scratch_size}},
                              jobs.api_access_volume()]
    # no automounted token (an hour or more): a 10-minute projected one, API server audience (issue 12)
    assert pod["automountServiceAccountToken"] is False
    (token,) = [src["serviceAccountToken"] for src in jobs.api_access_volume()["projected"]["sources"]
                if "serviceAccountToken" in src]
    assert token == {"path": "token", "expirationSeconds": 600}
    (c,) = pod["containers"]
    assert c["image"] == s.transcoder_image and c["command"] == ["lectern-transcode"]
    assert c["args"] == ["https://res.cloudinary.com/demo/video/upload/raw.mov",
                         c["args"][1], "--lecture-id", "65f1c2a9e4b0c3d2a1f00001",
                         "--report-cr", "/apis/media.lectern.dev/v1alpha1/namespaces/lectern/videotranscodes/lecture-1",
                         "--max-height", "720"]
    assert c["args"][1].startswith("cloudinary:lectern/lectures/65f1c2a9e4b0c3d2a1f00001/") and len(c["args"][1].rsplit("/", 1)[1]) == 12
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"},
                                 {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                  "readOnly": True}]
    env = {e["name"]: e for e in c["env"]}
    assert env["TMPDIR"]["value"] == "/scratch"
    assert env["CLOUDINARY_URL"] == {"name": "CLOUDINARY_URL", "valueFrom": {"secretKeyRef": {
        "name": s.cloudinary_secret_name, "key": s.cloudinary_secret_key}}}
    # per-CR overrides clamped to the chart's bounds
    assert c["resources"]["limits"] == {"cpu": "3", "memory": s.transcoder_max_memory}
    assert c["resources"]["requests"]["cpu"] == s.transcoder_cpu_request


def test_no_status_report_no_token():
    """transcode.reportProgress=false: the pod has no API permission, so it gets no token at all."""
    s = Settings(transcoder_report_progress=False)
    job = jobs.build_job(_cr(), s)
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert [v["name"] for v in pod["volumes"]] == ["scratch"]
    (c,) = pod["containers"]
    assert [m["name"] for m in c["volumeMounts"]] == ["scratch"] and "--report-cr" not in c["args"]


def test_resource_overrides_are_clamped():
    s = Settings()
    assert jobs.resources(s, {"cpu": "100m"})["limits"]["cpu"] == s.transcoder_min_cpu
    assert jobs.resources(s, {"cpu": "64"})["limits"]["cpu"] == s.transcoder_max_cpu
    small = jobs.resources(s, {"cpu": "500m", "memory": "300Mi"})
    assert small["requests"]["cpu"] == "500m" and small["requests"]["memory"] == "300Mi"  # request <= limit
    assert jobs.resources(s, None)["limits"] == {"cpu": s.transcoder_cpu_limit, "memory": s.transcoder_memory_limit}


def test_job_manifest_is_valid_kubernetes():
    job = jobs.build_job(_cr(resources={"cpu": "3"}), _settings(kube_api_url="http://127.0.0.1:1"))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_no_secret_in_job_or_crd():
    s = Settings(mongo_url="mongodb://user:hunter2@db/", redis_url="redis://:hunter2@redis/0")
    text = yaml.safe_dump(jobs.build_job(_cr(), s)) + crd.render()
    assert "hunter2" not in text


def test_crd_is_valid_kubernetes():
    doc = yaml.safe_load((ROOT / "crds" / crd.FILE_NAME).read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- spec.outputs: the HLS ladder (issue 15) ------------------------------------------------------

def _args(job: dict) -> list[str]:
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("outputs,default,hls", [
    (None, True, True),                                             # absent: the chart's default
    (None, False, False),
    ([{"type": "mp4"}], True, False),                               # listing only mp4 is the opt-out
    ([{"type": "mp4", "maxHeight": 720}], False, False),
    ([{"type": "mp4"}, {"type": "hls"}], False, True),              # listing hls opts in whatever the default
    ([{"type": "hls"}], False, True),                               # the MP4 is produced anyway
    ([{"type": "hls"}], True, True),
])
def test_job_hls_from_outputs_and_the_default(outputs, default, hls):
    spec = {} if outputs is None else {"outputs": outputs}
    args = _args(jobs.build_job(_cr(**spec), Settings(hls_default=default)))
    mp4 = args[1]
    assert mp4.startswith("cloudinary:lectern/lectures/65f1c2a9e4b0c3d2a1f00001/")
    if hls:
        assert args[args.index("--hls") + 1] == f"{mp4}-hls"
        assert args.count("--hls") == 1
    else:
        assert "--hls" not in args
    # what HLS-off sent before issue 15, unchanged
    assert args[:8] == ["https://res.cloudinary.com/demo/video/upload/raw.mov", mp4, "--lecture-id",
                        "65f1c2a9e4b0c3d2a1f00001", "--report-cr",
                        "/apis/media.lectern.dev/v1alpha1/namespaces/lectern/videotranscodes/lecture-1",
                        "--max-height", "720"]
    assert len(args) == (10 if hls else 8)


def test_job_hls_keeps_the_mp4_height():
    args = _args(jobs.build_job(_cr(outputs=[{"type": "hls"}, {"type": "mp4", "maxHeight": 480}]), Settings()))
    assert args[args.index("--max-height") + 1] == "480" and "--hls" in args
    args = _args(jobs.build_job(_cr(outputs=[{"type": "hls"}]), Settings()))
    assert args[args.index("--max-height") + 1] == "720"


def test_job_with_hls_is_valid_kubernetes():
    job = jobs.build_job(_cr(outputs=[{"type": "hls"}]), _settings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_outputs_schema_accepts_hls_and_stays_additive():
    schema = _schema()
    for outputs in ([{"type": "hls"}], [{"type": "mp4"}, {"type": "hls"}], [{"type": "mp4", "maxHeight": 480}]):
        obj = _cr(outputs=outputs)
        jsonschema.validate(obj, schema)
        api.VideoTranscodeSpec.model_validate(obj["spec"])
    jsonschema.validate(_cr(), schema)  # absent: still valid, and the spec model keeps it absent
    assert api.VideoTranscodeSpec.model_validate(_cr()["spec"]).outputs is None
    for bad in ([{"type": "dash"}], []):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(_cr(outputs=bad), schema)


def test_report_and_status_carry_hls_fields():
    report = api.TranscoderReport.model_validate({"videoUrl": "https://v", "hlsUrl": "https://h/master.m3u8",
                                                  "posterUrl": "https://p.jpg", "futureField": 1})
    assert (report.hls_url, report.poster_url) == ("https://h/master.m3u8", "https://p.jpg")
    dumped = report.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["hlsUrl"] == "https://h/master.m3u8" and dumped["posterUrl"] == "https://p.jpg"
    status = api.VideoTranscodeStatus.model_validate({"hlsUrl": "https://h/master.m3u8", "posterUrl": "https://p.jpg"})
    assert status.hls_url and status.poster_url
