"""Starting and stopping container processes: the agent's side of launch.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

LAUNCH = Path(__file__).with_name("launch.py")


class StartError(Exception):
    """The runtime could not start the program (a runtime's StartError, exit code 128)."""


def _read_all(fd: int) -> bytes:
    chunks = []
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def spawn(spec: dict, stdout: Path | None) -> asyncio.subprocess.Process:
    """Start launch.py with `spec` on a pipe; return once it has exec'd the program (the status
    pipe closes) or raise StartError with what went wrong."""
    spec_r, spec_w = os.pipe()
    status_r, status_w = os.pipe()
    out = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) if stdout else None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(LAUNCH), str(spec_r), str(status_w),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out if out is not None else asyncio.subprocess.DEVNULL,
            stderr=out if out is not None else asyncio.subprocess.DEVNULL,
            pass_fds=(spec_r, status_w))
    except BaseException:
        for fd in (spec_r, spec_w, status_r, status_w):
            os.close(fd)
        raise
    finally:
        if out is not None:
            os.close(out)
    os.close(spec_r)
    os.close(status_w)
    await asyncio.to_thread(_write_all, spec_w, json.dumps(spec).encode())
    error = await asyncio.to_thread(_read_all, status_r)
    if error:
        await proc.wait()
        raise StartError(error.decode("utf-8", "replace"))
    return proc


def signal_group(pid: int, sig: int) -> None:
    """The container's process group (launch.py made it a session leader), else the process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, `grace` seconds, then SIGKILL, as a runtime's StopContainer does."""
    if proc.returncode is not None:
        return
    signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=max(grace, 0))
    except asyncio.TimeoutError:
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
    signal_group(proc.pid, signal.SIGKILL)     # whatever the main process left in its group


def exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode
