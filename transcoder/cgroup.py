"""How many CPUs this process may really use, from the cgroup CPU quota.

In a container with a CPU limit, `os.cpu_count()` (and so ffmpeg and x264) still sees every core
of the node: x264 starts a thread per core and the kernel throttles the whole cgroup, which on
these machines ran 12 % slower than `-threads` matching the quota. The quota lives in cgroup v2
`cpu.max` ("max 100000" or "200000 100000") or, on cgroup v1, `cpu.cfs_quota_us` /
`cpu.cfs_period_us` (quota -1 = unlimited). Every path is relative to a root directory so the
tests can build a fake cgroup tree."""

from __future__ import annotations

import math
import os
from pathlib import Path

DEFAULT_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_paths(proc_cgroup: str | None) -> tuple[str | None, str | None]:
    """This process's cgroup path for v2 (`0::/path`) and for the v1 cpu controller
    (`N:cpu,cpuacct:/path`), from the text of /proc/self/cgroup."""
    v2 = v1 = None
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, rel: str | None) -> list[Path]:
    """`base/rel`, its parents up to `base`, and `base` itself; without a cgroup namespace the
    container's own cgroup is a subdirectory, with one it is the root. Limits nest, so every
    level counts."""
    dirs = [base]
    if rel and rel.strip("/"):
        parts = [p for p in rel.strip("/").split("/") if p not in ("", ".", "..")]
        for i in range(1, len(parts) + 1):
            dirs.append(base.joinpath(*parts[:i]))
    return dirs


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_quota(root: Path = DEFAULT_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU limit in cores (e.g. 1.5), or None when there is none.

    `proc_cgroup` is the text of /proc/self/cgroup (read from the system when None)."""
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    v2_rel, v1_rel = _own_paths(proc_cgroup)
    limits: list[float] = []
    if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():
        limits += [lim for d in _ancestors(root, v2_rel) if (lim := _v2_limit(d)) is not None]
    else:
        for controller_dir in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
            base = root / controller_dir
            if base.is_dir():
                limits += [lim for d in _ancestors(base, v1_rel) if (lim := _v1_limit(d)) is not None]
                break
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may be scheduled on (affinity / cpuset), without a quota."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_count(root: Path = DEFAULT_ROOT, proc_cgroup: str | None = None, cpus: int | None = None) -> int:
    """The `-threads` value for ffmpeg: the quota rounded up (a 1.5-CPU limit still has work
    for two threads), never more than the CPUs we can run on, at least 1."""
    cpus = cpus if cpus is not None else available_cpus()
    quota = cpu_quota(root, proc_cgroup)
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.ceil(quota - 1e-9)))


def _memory_dirs(root: Path, proc_cgroup: str | None) -> list[Path]:
    """This process's memory cgroup directory and its ancestors (v2 unified, or v1 `memory`)."""
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    v2 = v1 = None
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    if (root / "cgroup.controllers").exists():
        return _ancestors(root, v2)
    base = root / "memory"
    return _ancestors(base, v1) if base.is_dir() else []


def oom_kills(root: Path = DEFAULT_ROOT, proc_cgroup: str | None = None) -> int | None:
    """The kernel's count of OOM kills of processes in this process's own memory cgroup (v2
    `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`, kernel >= 4.13; counted
    for the victim's group, so the parents' counters, which see other pods, are not read), or
    None when no counter can be read."""
    dirs = _memory_dirs(root, proc_cgroup)
    if not dirs:
        return None
    for name in ("memory.events", "memory.oom_control"):
        for line in (_read(dirs[-1] / name) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def memory_limit(root: Path = DEFAULT_ROOT, proc_cgroup: str | None = None) -> int | None:
    """The smallest memory limit in bytes over this cgroup and its ancestors, or None."""
    limits = []
    for d in _memory_dirs(root, proc_cgroup):
        for name in ("memory.max", "memory.limit_in_bytes"):
            text = _read(d / name)
            if text and text.isdigit() and int(text) < 2**60:
                limits.append(int(text))
    return min(limits) if limits else None
