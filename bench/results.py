"""bench/results.json: the one file every figure the README quotes comes from.

Each benchmark calls `record(name, figures)` once it has measured: its section of the file is
replaced whole by this run's figures, with the exact command that produced them and the
machine they were measured on (cores, CPU quota, load average before and after, the commit).
Sections of benchmarks not run this time stay as they were, each with its own command and
date, so a partial rerun never mixes figures of two runs inside one section.

`tests/test_bench_results.py` checks that every decimal figure in the README's "Measured"
section is in this file."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"

_LOAD_AT_IMPORT = os.getloadavg()
_STARTED_AT = time.time()


def _commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+changes" if dirty else "") if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_quota() -> float | None:
    """The cgroup's CPU limit in cores (None when unlimited): a container may see 64 cores and own 2."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else round(int(quota) / int(period), 2)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else round(quota / period, 2)
    except (OSError, ValueError):
        return None


def machine() -> dict:
    """What the figures were measured under; the load average matters most on a shared machine."""
    return {
        "cores": os.cpu_count(),
        "cpu_quota_cores": _cpu_quota(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in _LOAD_AT_IMPORT],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as a person reruns it from the checkout's root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        argv[0] = str(script.relative_to(ROOT))
    except ValueError:
        pass
    return shlex.join([".venv/bin/python", *argv])


def record(name: str, figures: dict, *, argv: list[str] | None = None, path: Path = RESULTS) -> dict:
    """Replace section `name` of bench/results.json with `figures`, the command and the machine."""
    section = {
        "command": command_line(argv),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - _STARTED_AT, 1),
        "commit": _commit(),
        "machine": machine(),
        "figures": figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = section
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
        tmp.replace(path)
    print(f"results: section {name!r} of {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} written",
          file=sys.stderr)
    return section
