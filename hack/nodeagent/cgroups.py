"""Pod resource limits with cgroup v1, as the kubelet's cgroupfs driver sets them: one group per
pod in the `cpu` and `memory` hierarchies (`<root>/lectern-<node>-<workdir hash>/<pod uid>`), CFS quota from
limits.cpu, shares from requests.cpu, a hard memory limit from limits.memory. The container's
process joins the groups before it execs, so the kernel enforces the limits from its first
instruction and the OOM killer acts inside the group as it would on a node."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nodeagent.cgroups")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
MIN_SHARES = 2


def shares_for(request_millicpu: int | None) -> int:
    """The kubelet's MilliCPUToShares."""
    if not request_millicpu:
        return MIN_SHARES
    return max(MIN_SHARES, request_millicpu * 1024 // 1000)


def quota_for(limit_millicpu: int | None) -> int:
    """The kubelet's MilliCPUToQuota: -1 (no quota) without a limit, at least 1 ms per period."""
    if not limit_millicpu:
        return -1
    return max(1000, limit_millicpu * PERIOD_US // 1000)


@dataclass
class PodGroup:
    cpu: Path | None
    memory: Path | None

    @property
    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in (self.cpu, self.memory) if p]

    def oom_kills(self) -> int:
        """The group's OOM-kill counter (memory.oom_control `oom_kill`, kernel >= 4.13)."""
        if not self.memory:
            return 0
        try:
            for line in (self.memory / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
            return int((self.memory / "memory.failcnt").read_text())
        except OSError:
            return 0

    def pids(self) -> list[int]:
        found: set[int] = set()
        for group in (self.cpu, self.memory):
            try:
                found.update(int(p) for p in (group / "cgroup.procs").read_text().split()) if group else None
            except OSError:
                pass
        return sorted(found)


class Cgroups:
    def __init__(self, name: str = "lectern-node", root: Path = CGROUP_ROOT):
        self.cpu_base = root / "cpu" / name
        self.memory_base = root / "memory" / name
        self.enabled = False

    def check(self) -> bool:
        """Create, configure and remove a probe group; False (with one plain log line) when this
        machine does not let us, and then limits are not enforced."""
        try:
            for base in (self.cpu_base, self.memory_base):
                base.mkdir(exist_ok=True)
                probe = base / "probe"
                probe.mkdir(exist_ok=True)
                try:
                    if base == self.cpu_base:
                        (probe / "cpu.cfs_quota_us").write_text("50000")
                    else:
                        (probe / "memory.limit_in_bytes").write_text(str(64 * 2**20))
                finally:
                    probe.rmdir()
            self.enabled = True
            log.info("cgroups v1 cpu+memory usable under %s: pod limits are enforced", self.cpu_base.name)
        except OSError as e:
            self.enabled = False
            log.warning("cgroups not usable (%s): resource limits are NOT enforced on this node", e)
        return self.enabled

    def sweep(self) -> None:
        """A node that restarts has no containers left: kill what a previous agent left behind."""
        if not self.enabled:
            return
        for base in (self.cpu_base, self.memory_base):
            for group in [p for p in base.iterdir() if p.is_dir()]:
                self.remove(PodGroup(group if base == self.cpu_base else None, group if base == self.memory_base else None))

    def create(self, pod_uid: str, cpu_limit_m: int | None, cpu_request_m: int | None,
               memory_limit: int | None) -> PodGroup | None:
        if not self.enabled:
            return None
        cpu, memory = self.cpu_base / pod_uid, self.memory_base / pod_uid
        cpu.mkdir(exist_ok=True)
        memory.mkdir(exist_ok=True)
        (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota_for(cpu_limit_m)))
        (cpu / "cpu.shares").write_text(str(shares_for(cpu_request_m)))
        (memory / "memory.limit_in_bytes").write_text(str(memory_limit) if memory_limit else "-1")
        with_swap = memory / "memory.memsw.limit_in_bytes"
        if memory_limit and with_swap.exists():
            try:
                with_swap.write_text(str(memory_limit))   # no swapping past the limit, as with swap off
            except OSError:
                pass
        log.info("cgroup %s: cpu quota %s/%s us, shares %s, memory limit %s", pod_uid,
                 quota_for(cpu_limit_m), PERIOD_US, shares_for(cpu_request_m), memory_limit or "none")
        return PodGroup(cpu, memory)

    def remove(self, group: PodGroup | None) -> None:
        if group is None:
            return
        for _ in range(50):
            pids = group.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                for path in (group.cpu, group.memory):
                    if path and path.exists():
                        path.rmdir()
                return
            except OSError:
                time.sleep(0.05)
        log.warning("cgroup %s could not be removed", group.cpu or group.memory)
