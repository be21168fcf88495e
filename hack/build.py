"""Builds the local cluster's binaries from the Go modules pinned under hack/, once per version.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and FerretDB are built from
source with the machine's Go and the Go module proxy (no container, no downloaded binary). Each
component is cached outside the clone under `$LECTERN_CACHE` (default `~/.cache/lectern`), keyed
by its go.mod/go.sum and the Go version, so a second clone, `make test` after `make demo`, or CI
on the same machine never rebuilds. A cold build of the Kubernetes binaries on 2 cores takes
most of half an hour; it says so while it runs.

    python hack/build.py            # build what is missing, print NAME=PATH per binary
    python hack/build.py --sync     # regenerate hack/controlplane/go.mod's replace block
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HACK = Path(__file__).resolve().parent

# Upstream builds these the same way (hack/lib/golang.sh, hack/lib/version.sh).
KUBE_TAGS = "selinux,notest,grpcnotrace"
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


@dataclass(frozen=True)
class Component:
    name: str             # cache folder prefix
    module: Path          # the Go module that pins it
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    pinned: str           # the module whose version names the build

    def version(self) -> str:
        """The pinned version, read from the module's go.mod require lines."""
        text = (self.module / "go.mod").read_text()
        match = re.search(rf"^\s*{re.escape(self.pinned)} (v\S+)", text, re.M)
        if not match:
            raise SystemExit(f"hack/build.py: {self.pinned} is not required in {self.module}/go.mod")
        return match.group(1)

    def cache_key(self, go_version: str) -> str:
        digest = hashlib.sha256(go_version.encode())
        for name in ("go.mod", "go.sum"):
            digest.update((self.module / name).read_bytes())
        return f"{self.name}-{self.version()}-{digest.hexdigest()[:12]}"

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        if self.name == "kubernetes":
            version = self.version()
            major, minor = version.lstrip("v").split(".")[:2]
            for pkg in VERSION_PACKAGES:
                flags += [f"-X {pkg}.{key}={value}" for key, value in (
                    ("gitVersion", version), ("gitMajor", major), ("gitMinor", minor),
                    ("gitTreeState", "clean"), ("buildDate", "1970-01-01T00:00:00Z"))]
        return " ".join(flags)


COMPONENTS = (
    Component("kubernetes", HACK / "controlplane",
              ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
               "k8s.io/kubernetes/cmd/kube-scheduler"),
              ("kube-apiserver", "kube-controller-manager", "kube-scheduler"), "k8s.io/kubernetes"),
    Component("etcd", HACK / "etcd", ("go.etcd.io/etcd/server/v3",), ("etcd",), "go.etcd.io/etcd/server/v3"),
    Component("ferretdb", HACK / "ferretdb", ("github.com/FerretDB/FerretDB/cmd/ferretdb",), ("ferretdb",),
              "github.com/FerretDB/FerretDB"),
)


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("LECTERN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lectern"
    return Path(base)


def go_version() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("`go` is not on the PATH: the local cluster is built from its Go modules (Go >= 1.26)")
    return subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def _say(message: str) -> None:
    print(f"[hack/build] {message}", file=sys.stderr, flush=True)


def _build(component: Component, target: Path) -> None:
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=mod"}
    argv = ["go", "build", "-trimpath", "-ldflags", component.ldflags(), "-o", str(staging) + "/"]
    if component.name == "kubernetes":
        argv += ["-tags", KUBE_TAGS]
    argv += list(component.packages)
    hint = " (cold: 20-30 min on 2 cores, several GB of Go cache)" if component.name == "kubernetes" else ""
    _say(f"building {component.name} {component.version()}: {', '.join(component.binaries)}{hint}")
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=component.module, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(f"go build of {component.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    missing = [b for b in component.binaries if not (staging / b).is_file()]
    if missing:
        raise BuildError(f"go build of {component.name} produced no {', '.join(missing)}")
    (staging / "build.json").write_text(json.dumps({
        "component": component.name, "version": component.version(), "go": go_version(),
        "seconds": round(time.monotonic() - started, 1)}))
    os.replace(staging, target)
    _say(f"built {component.name} in {time.monotonic() - started:.0f} s -> {target}")


def ensure_binaries(names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """{binary: path} for every binary of the wanted components, building what is not cached.
    Safe to call from several processes at once (one builds, the others wait for it)."""
    wanted = [c for c in COMPONENTS if names is None or c.name in names]
    root = cache_root() / "bin"
    root.mkdir(parents=True, exist_ok=True)
    goversion = None
    paths: dict[str, Path] = {}
    for component in wanted:
        goversion = goversion or go_version()
        target = root / component.cache_key(goversion)
        if not target.is_dir():
            with open(root / f".{component.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not target.is_dir():
                    _build(component, target)
        for binary in component.binaries:
            paths[binary] = target / binary
    return paths


def sync_replaces() -> None:
    """Rewrite the replace block of hack/controlplane/go.mod from k8s.io/kubernetes' go.mod:
    each staging module it points at ./staging/src/... is pinned to the matching v0.X.Y."""
    module = COMPONENTS[0]
    version = module.version()
    info = json.loads(subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                                     cwd=module.module, check=True, capture_output=True, text=True).stdout)
    upstream = Path(info["GoMod"]).read_text()
    staging_version = "v0." + version.lstrip("v").split(".", 1)[1]
    staged = re.findall(r"^\s*(k8s\.io/\S+) => \./staging/src/\S+$", upstream, re.M)
    block = "replace (\n" + "".join(f"\t{m} => {m} {staging_version}\n" for m in staged) + ")\n"
    gomod = module.module / "go.mod"
    text = gomod.read_text()
    text = re.sub(r"replace \(\n.*?\n\)\n", block, text, count=1, flags=re.S) if "replace (" in text else text + "\n" + block
    gomod.write_text(text)
    _say(f"{len(staged)} staging modules pinned to {staging_version} in {gomod}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/build.py", description=__doc__.splitlines()[0])
    ap.add_argument("--sync", action="store_true", help="regenerate the control plane's replace block")
    ap.add_argument("components", nargs="*", metavar="COMPONENT",
                    help=f"only these of {', '.join(c.name for c in COMPONENTS)} (default: all)")
    args = ap.parse_args(argv)
    unknown = set(args.components) - {c.name for c in COMPONENTS}
    if unknown:
        ap.error(f"unknown component(s): {', '.join(sorted(unknown))}")
    if args.sync:
        sync_replaces()
        return 0
    try:
        paths = ensure_binaries(tuple(args.components) or None)
    except BuildError as exc:
        print(f"hack/build.py: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
