"""Real servers the tests start on free loopback ports: `redis-server` and `nx-27017`.

Each is a subprocess owned by the test session (or by one test, for restart scenarios), so a
test can stop and start it again on the same port to exercise reconnects."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy (returned), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def python_main(module: str, *args: str) -> list[str]:
    """argv running `from <module> import main; main(sys.argv[1:])` with this interpreter, the
    repo root first on sys.path (use a cwd outside the repo: its `operator/` shadows stdlib)."""
    if not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"not a module name: {module!r}")
    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            f"from {module} import main; main(sys.argv[1:])")
    return [sys.executable, "-c", code, *args]


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
    """Send `sig`, wait up to `grace` seconds, then SIGKILL; returns the exit status (None: no
    process). Every child the tests start is stopped this way."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_ready_file(proc: subprocess.Popen, path: Path, timeout: float, what: str,
                    log: Callable[[], str]) -> dict:
    """The JSON a child writes (atomically) once it listens. Raises RuntimeError with its log if
    it exits first, TimeoutError (after stopping it) if it is not ready in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{log()}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise TimeoutError(f"{what} was not ready after {timeout:g}s:\n{log()}")
        time.sleep(0.02)
    return json.loads(path.read_text())


class _Server:
    """A restartable server process on a fixed port."""

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"lectern-{type(self).__name__.lower()}-"))
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_Server":
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer(_Server):
    """redis-server without persistence: a restart loses pub/sub subscribers and, unless
    `appendonly` is on, data; tests that restart it to check reconnects keep AOF on."""

    def __init__(self, *a, appendonly: bool = True, **kw) -> None:
        super().__init__(*a, **kw)
        self.appendonly = appendonly

    def argv(self) -> list[str]:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MongoServer(_Server):
    """nx-27017, a MongoDB wire-protocol server on SQLite, reached with the real pymongo."""

    def argv(self) -> list[str]:
        exe = Path(sys.executable).with_name("nx-27017")
        return [str(exe), "--host", "127.0.0.1", "-p", str(self.port), "--db", str(self.workdir / "mongo.db"),
                "--log-file", str(self.workdir / "nx.log"), "--pid-file", str(self.workdir / "nx.pid")]

    @property
    def url(self) -> str:
        return os.environ.get("MONGO_URL") or f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
