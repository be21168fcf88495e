"""The transcoder Job for one VideoTranscode: a pure function of the CR and the settings.

Nothing here talks to the API server, so the manifest can be unit-tested and validated
offline (`kubernetes-validate --strict`)."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any, Mapping

from lectern_operator.api import v1alpha1 as api
from lectern_operator.settings import Settings

CONTAINER = "transcoder"
SCRATCH = "/scratch"
EXIT_UNUSABLE_INPUT = 65
EXIT_OUT_OF_MEMORY = 71  # ffmpeg OOM-killed (transcoder/errors.py): the same limit fails the same way
TERMINATION_LOG = "/dev/termination-log"
# The status report's credentials, where in-cluster clients look for them (transcoder/report.py).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The shortest lifetime the API server grants a projected token; the kubelet renews it at 80 %.
TOKEN_SECONDS = 600


def api_access_volume() -> dict[str, Any]:
    """What the automounted `kube-api-access-*` volume holds, minus its one-hour-plus token: a
    ServiceAccount token bound to the pod for 10 minutes (the API server's own audience; the
    kubelet renews it), the cluster CA and the namespace. Mounted in the transcoder container
    only, read-only; the pod spec turns the automount off (issue 12, item 4)."""
    return {"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                      "fieldPath": "metadata.namespace"}}]}},
    ]}}

_SUFFIXES = {
    "m": Decimal("0.001"), "": Decimal(1),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def parse_quantity(value: str) -> Decimal:
    """A Kubernetes quantity (the subset the CRD admits) as a number of base units."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def clamp_quantity(value: str | None, default: str, low: str, high: str) -> str:
    """`value` (or `default`) kept within [low, high], returned in the spelling it came in."""
    chosen = value or default
    q = parse_quantity(chosen)
    if q < parse_quantity(low):
        return low
    if q > parse_quantity(high):
        return high
    return chosen


def _min_quantity(a: str, b: str) -> str:
    return a if parse_quantity(a) <= parse_quantity(b) else b


def job_name(cr_name: str, uid: str | None) -> str:
    """Deterministic per CR *instance*: the same CR always maps to the same Job (a restart
    never makes a second one); a deleted and re-created CR of the same name gets a new Job
    instead of adopting the old one's leftovers. At most 63 characters (label-safe)."""
    digest = hashlib.sha256(f"{cr_name}/{uid or ''}".encode()).hexdigest()[:8]
    # A CR name is a DNS subdomain (dots allowed, 253 long); a Job name ends up in the
    # `job-name` label and the pods' hostnames: a DNS label, no dots.
    stem = re.sub(r"[^a-z0-9-]+", "-", cr_name[:50]).strip("-") or "vt"
    return f"{stem}-{digest}"


def output_target(settings: Settings, lecture_id: str, raw_video_url: str) -> str:
    """`cloudinary:<folder>/<lectureId>/<sha256(rawVideoUrl)[:12]>` (docs/architecture.md)."""
    digest = hashlib.sha256(raw_video_url.encode()).hexdigest()[:12]
    return f"cloudinary:{settings.cloudinary_folder.strip('/')}/{lecture_id}/{digest}"


def hls_target(mp4_target: str) -> str:
    """The HLS set's Cloudinary folder: the MP4's public id + `-hls` (one folder per upload,
    beside its MP4, so a re-run of the same upload overwrites rather than piles up)."""
    return f"{mp4_target}-hls"


def report_path(namespace: str, name: str) -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}"


def resources(settings: Settings, overrides: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """Chart defaults; a CR may ask for a different CPU/memory *limit*, clamped to the chart's
    [min, max]. The request never exceeds the limit."""
    overrides = overrides or {}
    cpu_limit = clamp_quantity(overrides.get("cpu"), settings.transcoder_cpu_limit,
                               settings.transcoder_min_cpu, settings.transcoder_max_cpu)
    mem_limit = clamp_quantity(overrides.get("memory"), settings.transcoder_memory_limit,
                               settings.transcoder_min_memory, settings.transcoder_max_memory)
    return {
        "requests": {"cpu": _min_quantity(settings.transcoder_cpu_request, cpu_limit),
                     "memory": _min_quantity(settings.transcoder_memory_request, mem_limit),
                     "ephemeral-storage": _min_quantity(settings.transcoder_scratch_request,
                                                        settings.transcoder_scratch_size)},
        "limits": {"cpu": cpu_limit, "memory": mem_limit},
    }


def labels(cr_name: str, lecture_id: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lectern-transcoder",
        "app.kubernetes.io/component": "transcoder",
        "app.kubernetes.io/part-of": "lectern",
        "app.kubernetes.io/managed-by": "lectern-operator",
        api.LABEL_TRANSCODE: api.label_value(cr_name),
        api.LABEL_LECTURE_ID: api.label_value(lecture_id),
    }


def build_job(body: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The batch/v1 Job manifest for a VideoTranscode object (`body` as read from the API)."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta.get("namespace", "default"), meta.get("uid")
    spec = api.VideoTranscodeSpec.model_validate(body.get("spec") or {})
    max_height = spec.mp4_max_height()
    target = output_target(settings, spec.lecture_id, spec.raw_video_url)
    job_labels = labels(name, spec.lecture_id)

    env: list[dict[str, Any]] = [
        {"name": "CLOUDINARY_URL", "valueFrom": {"secretKeyRef": {
            "name": settings.cloudinary_secret_name, "key": settings.cloudinary_secret_key}}},
        {"name": "LECTERN_ALLOWED_HOSTS", "value": ",".join(settings.allowed_hosts)},
        {"name": "LECTERN_MAX_DOWNLOAD_BYTES", "value": str(settings.max_download_bytes)},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "HOME", "value": SCRATCH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]

    container = {
        "name": CONTAINER,
        "image": settings.transcoder_image,
        "imagePullPolicy": settings.transcoder_image_pull_policy,
        "command": ["lectern-transcode"],
        "args": [
            spec.raw_video_url,
            target,
            "--lecture-id", spec.lecture_id,
            *(["--report-cr", report_path(namespace, name)] if settings.transcoder_report_progress else []),
            "--max-height", str(max_height),
            *(["--hls", hls_target(target)] if spec.wants_hls(settings.hls_default) else []),
        ],
        "env": env,
        "resources": resources(settings, spec.resources.model_dump(exclude_none=True) if spec.resources else None),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH},
                         *([{"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}]
                           if settings.transcoder_report_progress else [])],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.transcoder_run_as_user,
            "runAsGroup": settings.transcoder_run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods
        "serviceAccountName": settings.transcoder_service_account,
        # The token is needed for one thing: PATCH videotranscodes/status of its own CR (the
        # chart's Role allows nothing else, its admission policy only this pod's CR's report).
        # Not the automounted one (an hour or more, extended by the API server): a 10-minute
        # projected token in the transcoder container only (api_access_volume).
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.transcoder_run_as_user,
            "runAsGroup": settings.transcoder_run_as_user,
            "fsGroup": settings.transcoder_run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        # No status report (chart transcode.reportProgress=false): no token at all.
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": settings.transcoder_scratch_size}},
                    *([api_access_volume()] if settings.transcoder_report_progress else [])],
    }
    if settings.transcoder_node_selector:
        pod_spec["nodeSelector"] = dict(settings.transcoder_node_selector)
    if settings.transcoder_tolerations:
        pod_spec["tolerations"] = list(settings.transcoder_tolerations)
    if settings.transcoder_affinity:
        pod_spec["affinity"] = dict(settings.transcoder_affinity)
    if settings.transcoder_priority_class_name:
        pod_spec["priorityClassName"] = settings.transcoder_priority_class_name
    if settings.transcoder_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.transcoder_image_pull_secrets]

    owner = {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": name,
             "controller": True, "blockOwnerDeletion": True}
    if uid:
        owner["uid"] = uid

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, uid),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {f"{api.GROUP}/raw-video-url-sha256": hashlib.sha256(spec.raw_video_url.encode()).hexdigest()},
            "ownerReferences": [owner],
        },
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": settings.transcoder_backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds or settings.transcoder_active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.transcoder_ttl_seconds_after_finished,
            "podFailurePolicy": {"rules": [
                # Unusable input: retrying cannot help, fail the Job at once.
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_UNUSABLE_INPUT]}},
                # ffmpeg killed by the kernel for memory: a retry under the same limit ends the same.
                # (A bare 137 is not listed: a kubelet also reports a container lost in a node
                # reboot as 137, and that one must be retried.)
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_OUT_OF_MEMORY]}},
                # Node drain, eviction, preemption: retry without spending the failure budget.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": dict(job_labels)},
                "spec": pod_spec,
            },
        },
    }
