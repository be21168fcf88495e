"""What a cluster user sees: the CRDs the chart installs, and `kubectl get vt` / `-o wide` /
`describe` with the real kubectl against the real local cluster's API server (printer columns
served from the CRD's JSONPaths, the status subresource), as docs/kubernetes.md and NOTES.txt
tell people to type. The session installs the CRDs from crds/, byte-for-byte the chart's (the
first test checks it); each test works in a fresh namespace."""

from __future__ import annotations

import pathlib
import re
import textwrap

import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import CHART, ROOT

CRD_FILE = "videotranscodes.media.lectern.dev.yaml"


def test_chart_crd_is_the_generated_crd():
    """helm/lectern/crds/ ships byte-for-byte the CRD generated into crds/ (`lectern-crds --write`)."""
    generated, shipped = ROOT / "crds" / CRD_FILE, CHART / "crds" / CRD_FILE
    if not generated.exists() or not shipped.exists():
        pytest.fail("the VideoTranscode CRD has not been generated yet (lectern-crds --write)")
    assert shipped.read_bytes() == generated.read_bytes(), "run `lectern-crds --write`"


@pytest.mark.parametrize("path", sorted((CHART / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_chart_crds_are_valid_kubernetes(path: pathlib.Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all(d["kind"] == "CustomResourceDefinition" for d in docs)
    for doc in docs:
        for version in ("1.31.0", "1.37.0"):
            kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.{doc['spec']['group']}"


@pytest.fixture()
def on_cluster(kube, kubectl):
    if not (CHART / "crds" / CRD_FILE).exists():
        pytest.fail("the VideoTranscode CRD has not been generated yet")
    return kube, kubectl


def _table(text: str) -> list[dict[str, str]]:
    """Parse kubectl's column output: header names are separated by 2+ spaces ("VIDEO URL" is one)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    bounds = list(zip(starts, starts[1:] + [None]))
    names = [header[a:b].strip() for a, b in bounds]
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds)} for row in lines[1:]]


def test_get_vt_shows_lecture_phase_progress_attempts_and_wide_adds_job_and_url(on_cluster):
    kube, kubectl = on_cluster
    sample = ROOT / "examples" / "videotranscode.yaml"
    if not sample.exists():
        pytest.fail("no examples/videotranscode.yaml yet")
    obj = yaml.safe_load(sample.read_text())
    name, lecture = obj["metadata"]["name"], obj["spec"]["lectureId"]
    kubectl("apply", "-f", str(sample))

    # Freshly created: no status yet, the columns are empty but present.
    rows = _table(kubectl("get", "vt").stdout)
    assert list(rows[0]) == ["NAME", "LECTURE", "PHASE", "PROGRESS", "ATTEMPTS", "AGE"]
    assert rows[0]["NAME"] == name and rows[0]["LECTURE"] == lecture

    url = f"https://res.cloudinary.com/demo/video/upload/lectern/lectures/{lecture}/abc.mp4"
    kube.patch("videotranscodes", name, {"status": {
        "phase": "Succeeded", "progress": 100, "attempts": 2, "jobName": f"{name}-t",
        "videoUrl": url, "message": "720p H.264/AAC, 41.2 MB"}}, subresource="status")
    row = _table(kubectl("get", "vt").stdout)[0]
    assert (row["PHASE"], row["PROGRESS"], row["ATTEMPTS"]) == ("Succeeded", "100", "2")
    assert row["AGE"]
    wide = _table(kubectl("get", "vt", "-o", "wide").stdout)[0]
    assert wide["JOB"] == f"{name}-t" and wide["VIDEO URL"] == url
    # The short name, the category and the full plural all work.
    for what in ("videotranscodes", "lectern", "videotranscode.media.lectern.dev"):
        assert name in kubectl("get", what).stdout
    # The reason of a transcode is one jsonpath away (docs/kubernetes.md, NOTES.txt).
    assert kubectl("get", "vt", name, "-o", "jsonpath={.status.videoUrl}").stdout == url


def test_describe_tells_the_story(on_cluster):
    kube, kubectl = on_cluster
    sample = ROOT / "examples" / "videotranscode.yaml"
    if not sample.exists():
        pytest.fail("no examples/videotranscode.yaml yet")
    kubectl("apply", "-f", str(sample))
    obj = yaml.safe_load(sample.read_text())
    vt = kube.get("videotranscodes", obj["metadata"]["name"])
    kube.patch("videotranscodes", vt["metadata"]["name"], {"status": {
        "phase": "Failed", "attempts": 1,
        "message": "input is not a usable video: no video stream (exit 65)"}}, subresource="status")
    kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "vt-failed.1"},
                 "involvedObject": {"apiVersion": vt["apiVersion"], "kind": "VideoTranscode", "namespace": kube.namespace,
                                    "name": vt["metadata"]["name"], "uid": vt["metadata"].get("uid")},
                 "reason": "Failed", "message": "input is not a usable video: no video stream",
                 "type": "Warning", "count": 1, "source": {"component": "lectern-operator"}})
    out = kubectl("describe", "vt", vt["metadata"]["name"]).stdout
    status, events = out.split("\nEvents:", 1)
    assert re.search(r"Message:\s+input is not a usable video: no video stream \(exit 65\)", status), status
    assert "Failed" in events and "input is not a usable video" in events, out


def _crd_schema() -> dict:
    path = CHART / "crds" / CRD_FILE
    if not path.exists():
        pytest.fail("the VideoTranscode CRD has not been generated yet")
    return yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _samples_in_docs() -> list[tuple[str, dict]]:
    out = []
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and doc.get("kind") == "VideoTranscode":
            out.append(("docs/kubernetes.md", doc))
    return out


def test_the_samples_people_copy_are_valid(helm):
    """The VideoTranscode in NOTES.txt and in docs/kubernetes.md passes the CRD's schema."""
    import jsonschema

    from tests.helm.conftest import BASE_VALUES, NAMESPACE, RELEASE

    schema = _crd_schema()
    proc = helm.run("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                    "--values", helm.values_file(BASE_VALUES))
    notes = proc.stdout.split("NOTES:", 1)[1]
    block = re.search(r"cat <<YAML \| kubectl apply -f -\n(.*?)\n\s*YAML\n", notes, re.S).group(1)
    samples = [("NOTES.txt", yaml.safe_load(textwrap.dedent(block)))] + _samples_in_docs()
    assert len(samples) >= 2
    hosts = yaml.safe_load((CHART / "values.yaml").read_text())["media"]["allowedHosts"]
    for where, doc in samples:
        jsonschema.Draft7Validator(schema).validate(doc)
        assert doc["apiVersion"] == "media.lectern.dev/v1alpha1", where
        assert re.match(r"https://([^/]+)/", doc["spec"]["rawVideoUrl"]).group(1) in hosts, where
