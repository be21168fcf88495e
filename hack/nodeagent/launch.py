"""The container's first instructions, run as a fresh single-threaded process (never a
`preexec_fn` in the agent's threaded event loop), then replaced by the container's program with
exec, so its PID is the container's.

It reads its spec (JSON) from an inherited pipe, then: new session; joins the pod's cgroups;
a private mount namespace with each volume bind-mounted at its mountPath (secrets read-only);
with readOnlyRootFilesystem every other mount except /proc, /sys and /dev is remounted read-only
(bind remount per mount: this works here as root); drops to the pod's uid/gid/groups; sets
no_new_privs; chdir; exec. An exec failure is written to the status pipe (closed on exec when
it succeeds), so the agent reports StartError as a runtime does.

With `join_pid` (exec probes) it enters that container's mount namespace instead of making one.

Limits of a process-based node: a mountPath that does not exist on this machine is created
(an empty directory or file left on the host, e.g. /scratch); there is no pid, network, IPC or
user namespace, no seccomp and no capability bounding beyond what dropping root does.
Stdlib only, on purpose: it starts with `python -I -S`.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_NO_NEW_PRIVS = 38
KEEP_WRITABLE = ("/proc", "/sys", "/dev")

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, flags: int) -> None:
    _check(libc.mount(src.encode() if src else None, dst.encode(), None, ctypes.c_ulong(flags), None), f"mount {dst}")


def _mountinfo() -> list[tuple[str, set[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            out.append((point, set(fields[5].split(","))))
    return out


def _flags(options: set[str]) -> int:
    table = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
             "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
    return sum(v for k, v in table.items() if k in options)


def _ensure_target(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        open(path, "a").close()


def setup_mounts(spec: dict) -> None:
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", MS_REC | MS_PRIVATE)
    targets = set()
    mounts = spec.get("mounts", [])
    # Every source is opened before anything is mounted: a volume at /tmp would otherwise hide
    # the sources of the volumes after it when the node's workdir is under /tmp.
    sources = [(os.open(m["source"], os.O_PATH), os.path.isdir(m["source"])) for m in mounts]
    # The image's own files are this machine's (the venv, the repo, Python): a volume mounted
    # over a folder that holds them (an emptyDir at /tmp, with the clone under /tmp) would hide
    # them, as no real image keeps its software under /tmp. They are bound back over it.
    image = [(os.path.normpath(k), os.open(k, os.O_PATH)) for k in spec.get("imagePaths", []) if os.path.isdir(k)]
    for m, (fd, is_dir) in zip(mounts, sources):
        dst = m["target"]
        _ensure_target(dst, is_dir)
        mount(f"/proc/self/fd/{fd}", dst, MS_BIND | MS_REC)
        os.close(fd)
        if m.get("readOnly"):
            mount(None, dst, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        targets.add(os.path.normpath(dst))
    for path, fd in image:
        if any(path.startswith(t.rstrip("/") + "/") for t in targets):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
            if spec.get("readOnlyRoot"):
                mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    if spec.get("readOnlyRoot"):
        for point, options in _mountinfo():
            if point in targets or any(point == k or point.startswith(k + "/") for k in KEEP_WRITABLE):
                continue
            if any(point.startswith(t.rstrip("/") + "/") for t in targets):
                continue
            try:
                mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags(options))
            except OSError:
                if point == "/":
                    raise


def join_mounts_of(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        _check(libc.setns(fd, CLONE_NEWNS), "setns(mnt)")
    finally:
        os.close(fd)


def exec_in_path(argv: list, env: dict) -> None:
    """execvpe by hand: after the uid drop this interpreter may not read its own stdlib, and
    os.execvpe imports lazily. argv[0] is looked up in the container's PATH, as runc does."""
    name = argv[0]
    if "/" in name:
        os.execve(name, argv, env)
    error: OSError = FileNotFoundError(2, f'exec: "{name}": executable file not found in $PATH')
    for folder in (env.get("PATH") or "").split(":"):
        candidate = os.path.join(folder or ".", name)
        try:
            os.execve(candidate, argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as e:
            error = e
    raise error


def main() -> None:
    spec_fd, status_fd = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(status_fd, False)          # closed by a successful exec: EOF means started
    with os.fdopen(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    try:
        if os.getsid(0) != os.getpid():
            os.setsid()
        for procs in spec.get("cgroups", []):
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if spec.get("join_pid"):
            join_mounts_of(int(spec["join_pid"]))
        elif spec.get("mounts") or spec.get("readOnlyRoot"):
            setup_mounts(spec)
        cwd = spec.get("workingDir") or "/"
        if not os.path.isdir(cwd):
            os.makedirs(cwd, exist_ok=True)
        os.setgroups([int(g) for g in spec.get("groups", [])])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        if spec.get("noNewPrivs"):
            _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        os.chdir(cwd)
        os.umask(0o022)
        exec_in_path(spec["argv"], spec["env"])
    except Exception as e:
        os.write(status_fd, f"{type(e).__name__}: {e}".encode()[:2000])
        os._exit(128)


if __name__ == "__main__":
    main()
