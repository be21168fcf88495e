"""Pod status as a kubelet computes it (pkg/kubelet/kubelet_pods.go getPhase and
generateAPIPodStatus, pkg/kubelet/status/generate.go), so the Job controller, kubectl and the
operator read the same fields they would on a real node."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
MAX_MESSAGE = 4096            # kubelet: maxContainerTerminationMessageLength
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRecord:
    name: str
    image: str
    image_id: str = ""
    container_id: str = ""
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    started: bool = False
    ready: bool = False

    def kind(self) -> str:
        return next(iter(self.state))

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "image": self.image, "imageID": self.image_id,
                               "ready": self.ready, "restartCount": self.restart_count,
                               "started": self.started, "state": self.state, "lastState": self.last_state}
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def phase(records: list[ContainerRecord], restart_policy: str, terminal: bool) -> str:
    running = waiting = stopped = succeeded = 0
    for r in records:
        kind = r.kind()
        if kind == "running":
            running += 1
        elif kind == "terminated":
            stopped += 1
            succeeded += r.state["terminated"].get("exitCode") == 0
        elif r.last_state.get("terminated"):
            stopped += 1                     # waiting to restart: it ran before
        else:
            waiting += 1
    if waiting and not terminal:
        return "Pending"
    if running and not terminal:
        return "Running"
    if terminal or restart_policy == "Never":
        if stopped and stopped == succeeded and not waiting:
            return "Succeeded"
        return "Failed"
    if restart_policy == "OnFailure" and stopped == succeeded and stopped:
        return "Succeeded"
    return "Running"


def conditions(records: list[ContainerRecord], pod_phase: str, sandbox_ready: bool,
               previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The four conditions the kubelet owns; lastTransitionTime kept while the status holds."""
    before = {c["type"]: c for c in previous}
    unready = [r.name for r in records if not r.ready]
    completed = pod_phase == "Succeeded"
    if completed:
        ready_reason, ready_message = "PodCompleted", ""
    elif pod_phase == "Failed":
        ready_reason, ready_message = "PodFailed", ""
    else:
        ready_reason = "ContainersNotReady"
        ready_message = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
    ready = not unready and pod_phase == "Running"
    wanted = [
        ("PodReadyToStartContainers", sandbox_ready, "", ""),
        ("Initialized", True, "PodCompleted" if completed else "", ""),
        ("ContainersReady", ready, "" if ready else ready_reason, "" if ready else ready_message),
        ("Ready", ready, "" if ready else ready_reason, "" if ready else ready_message),
    ]
    out = []
    for type_, ok, reason, message in wanted:
        status = "True" if ok else "False"
        old = before.get(type_)
        cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                                "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        out.append(cond)
    return out


def termination_message(file_text: bytes, policy: str, exit_code: int, log_tail: bytes) -> str:
    message = file_text[:MAX_MESSAGE]
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = log_tail.splitlines(keepends=True)[-FALLBACK_LINES:]
        message = b"".join(lines)[-FALLBACK_BYTES:]
    return message.decode("utf-8", "replace")


def terminated(exit_code: int, reason: str, message: str, started: str, finished: str, container_id: str) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": finished}
    if message:
        state["message"] = message
    if container_id:
        state["containerID"] = container_id
    return {"terminated": state}
