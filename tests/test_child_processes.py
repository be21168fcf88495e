"""Every child a test starts dies with the test runner (issue 13): long-lived children go
through tests.standins.services.spawn (PR_SET_PDEATHSIG from a thread that lives as long as the
runner), and no test looks processes up machine-wide (`pgrep -f`, `pkill`, `killall`): on a
machine shared with other test runs that finds, and kills, theirs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.standins.services import die_with_parent, wait_until

ROOT = Path(__file__).resolve().parent.parent

# A stand-in test runner: starts a long-lived child through spawn(), once from its main thread
# and once from a thread that ends straight away (as an asyncio.to_thread worker does), prints
# both pids, then waits to be killed.
RUNNER = """
import sys, threading, time
sys.path.insert(0, sys.argv[1])
from tests.standins.services import spawn
pids = [spawn(["sleep", "300"]).pid]
t = threading.Thread(target=lambda: pids.append(spawn(["sleep", "300"]).pid))
t.start(); t.join()
print(*pids, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_die_with_a_killed_runner():
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT)], stdout=subprocess.PIPE, text=True,
                              preexec_fn=die_with_parent)
    pids: list[int] = []
    try:
        pids = [int(p) for p in runner.stdout.readline().split()]
        assert len(pids) == 2
        # The thread that started the second child has ended (joined before the print): a bounded
        # watch for its death signal, failing as soon as either child goes.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert all(alive(p) for p in pids), "a child died with the thread that started it"
            time.sleep(0.02)
        runner.send_signal(signal.SIGKILL)  # no cleanup code runs: only the kernel's death signal
        runner.wait(10)
        wait_until(lambda: not any(alive(p) for p in pids), 10, 0.05, "the children to die with the runner")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in pids:  # when the test fails: leave nothing behind ourselves
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _sources() -> list[Path]:
    files = [p for p in (ROOT / "tests").rglob("*.py") if "node_modules" not in p.parts]
    return files + [p for p in (ROOT / "hack").rglob("*.py")] + [ROOT / "Makefile"]


def test_no_machine_wide_process_lookup():
    words = ["pg" + "rep", "pk" + "ill", "kill" + "all"]
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in _sources() if p != Path(__file__).resolve()
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_long_lived_children_are_started_through_spawn():
    # subprocess.run with a timeout ends with its call; Popen outlives it, so it goes through spawn()
    allowed = {"tests/standins/services.py", "tests/test_child_processes.py",
               "hack/cluster.py"}  # its own PR_SET_PDEATHSIG preexec (_die_with_parent)
    call = "subprocess." + "Popen("
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in _sources() if str(p.relative_to(ROOT)) not in allowed
            for n, line in enumerate(p.read_text().splitlines(), 1) if call in line]
    assert hits == []
