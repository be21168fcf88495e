"""Real servers the tests start on free loopback ports: `redis-server` and FerretDB (the MongoDB).

Each is a subprocess owned by the test session (or by one test, for restart scenarios), so a
test can stop and start it again on the same port to exercise reconnects. FerretDB v1.24.2 on
its SQLite backend is built from the Go module pinned in hack/ferretdb (hack/build.py, cached
once per machine)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn`: the child gets SIGTERM when the thread that started it ends, so a test
    runner that dies (even by SIGKILL) leaves nothing running. Per thread, not per process:
    long-lived children are started through `spawn()`, whose thread lives as long as the runner."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# One thread that lives as long as the process: a child started from a short-lived thread
# (an asyncio.to_thread worker, a fixture's helper thread) would otherwise get its SIGTERM
# when that thread ends.
_spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="child-spawner")


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen for a child that must die with the test runner (see die_with_parent);
    `preexec_fn` in kwargs runs after it."""
    extra = kwargs.pop("preexec_fn", None)

    def preexec() -> None:
        die_with_parent()
        if extra is not None:
            extra()

    return _spawner.submit(subprocess.Popen, argv, preexec_fn=preexec, **kwargs).result()


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

    start_timeout = 15.0

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"lectern-{type(self).__name__.lower()}-"))
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the (running) server serves requests; by default: its port accepts connections."""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.workdir / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "_Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with open(self.workdir / "server.log", "ab") as log:
            self.proc = spawn(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        what = f"{type(self).__name__} on 127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.start_timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{what} was not ready after {self.start_timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.02)
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


@cache
def ferretdb_binary() -> Path:
    """The FerretDB binary, built from hack/ferretdb on first use (then cached under
    `$LECTERN_CACHE`); tests/conftest.py asks for it once before the first test runs.
    `LECTERN_FERRETDB=/path/to/ferretdb` uses that binary instead."""
    if os.environ.get("LECTERN_FERRETDB"):
        return Path(os.environ["LECTERN_FERRETDB"])
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.append(root)  # appended: the repo root's `operator/` must not shadow the stdlib
    from hack.build import ensure_binaries
    return ensure_binaries(("ferretdb",))["ferretdb"]


class MongoServer(_Server):
    """The MongoDB the tests and the demo talk to with pymongo: FerretDB v1.24.2 on its SQLite
    backend, its database files in `<workdir>/data/` (one `<db>.sqlite` per database), so a
    restart on the same port keeps the data. Ready once it answers `ping`.

    `url` is always this local server, also when `MONGO_URL` is set: a test that stops and
    starts a server talks to the one it stops (the session's `mongo_server` fixture is what
    `MONGO_URL` replaces, see `ExternalMongo`)."""

    start_timeout = 30.0

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def argv(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)  # FerretDB does not create it
        return [str(ferretdb_binary()), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
                f"--listen-addr=127.0.0.1:{self.port}", "--telemetry=disable", "--debug-addr=-",
                "--state-dir=-"]

    def ready(self) -> bool:
        import pymongo
        import pymongo.errors

        if not super().ready():  # not listening yet: no need for a client
            return False
        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
        try:
            return client.admin.command("ping").get("ok") == 1
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"


class ExternalMongo:
    """A MongoDB given by `MONGO_URL`, used in place of the session's local server. It is not
    ours: nothing stops or restarts it (tests of Mongo outages start their own `MongoServer`)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> "ExternalMongo":
        return self

    def stop(self) -> None:
        raise RuntimeError("MONGO_URL is an external MongoDB: a test must not stop it (start a MongoServer)")

    restart = stop


class ConnectionTrap:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts: the host of a URL
    that must be refused before any request, so "no connection was made" can be seen to fail."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
