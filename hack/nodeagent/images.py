"""Images without a container runtime: an image is its config (entrypoint, cmd, env, working
directory, user) and its filesystem is this machine's, with the image's `/opt/lectern/bin` mapped
to the repo's `.venv/bin`. So the chart's pods run the same console scripts the images would, and
an image the node does not know behaves like a failed pull."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

# The PATH and locale of the python:3.11-slim base image both Dockerfiles start from.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
IMAGE_BIN = "/opt/lectern/bin"


def repository_of(image: str) -> str:
    """`ghcr.io/x/y:1.0@sha256:...` -> `ghcr.io/x/y` (a port in the registry host is not a tag)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def image_id(repository: str, config: dict) -> str:
    """A stable digest-shaped ID, so `imageID` changes exactly when the image's config does."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return f"{repository}@sha256:{digest}"


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _exec_form(rest: str) -> list[str]:
    if rest.startswith("["):
        return list(json.loads(rest))
    return ["/bin/sh", "-c", rest]


def parse_dockerfile(text: str) -> dict[str, Any]:
    """The final stage's image config. ENV/USER/WORKDIR/ENTRYPOINT/CMD only; base-image config
    other than PATH and LANG is not known here."""
    config: dict[str, Any] = {"entrypoint": [], "cmd": [], "env": dict(BASE_ENV), "workingDir": "", "user": ""}
    for line in _logical_lines(text):
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            config = {"entrypoint": [], "cmd": [], "env": dict(BASE_ENV), "workingDir": "", "user": ""}
        elif instr == "ENV":
            words = shlex.split(rest)
            if words and "=" not in words[0]:               # legacy `ENV KEY value with spaces`
                key, _, value = rest.partition(" ")
                config["env"][key] = _expand(value.strip(), config["env"])
            else:
                for word in words:
                    key, _, value = word.partition("=")
                    config["env"][key] = _expand(value, config["env"])
        elif instr == "USER":
            config["user"] = _expand(rest, config["env"])
        elif instr == "WORKDIR":
            config["workingDir"] = str(Path(config["workingDir"] or "/") / _expand(rest, config["env"]))
        elif instr == "ENTRYPOINT":
            config["entrypoint"] = _exec_form(rest)
            config["cmd"] = []                               # as Docker does: ENTRYPOINT resets CMD
        elif instr == "CMD":
            config["cmd"] = _exec_form(rest)
    return config


def _map_to_venv(config: dict[str, Any], venv_bin: Path) -> dict[str, Any]:
    env = dict(config["env"])
    env["PATH"] = ":".join(str(venv_bin) if p == IMAGE_BIN else p for p in env.get("PATH", "").split(":"))

    def resolve(argv: list[str]) -> list[str]:
        if argv and "/" not in argv[0] and (venv_bin / argv[0]).exists():
            return [str(venv_bin / argv[0]), *argv[1:]]
        return list(argv)

    # Where the image's files really are: the venv, the Python it links to, the repo (editable install).
    python_home = Path(os.path.realpath(venv_bin / "python")).parents[1]
    paths = [str(venv_bin.parent), str(python_home), str(Path(__file__).resolve().parents[2])]
    return {**config, "env": env, "entrypoint": resolve(config["entrypoint"]), "cmd": resolve(config["cmd"]),
            "paths": paths}


def images_from_dockerfiles(repo_root: str | Path, venv_bin: str | Path) -> dict[str, dict[str, Any]]:
    """The node's image list: the chart's default repositories -> the configs of the repo's
    Dockerfiles, with executables resolved in `venv_bin`."""
    root, venv_bin = Path(repo_root), Path(venv_bin)
    values = yaml.safe_load((root / "helm/lectern/values.yaml").read_text())
    operator = parse_dockerfile((root / "Dockerfile.operator").read_text())
    transcoder = parse_dockerfile((root / "Dockerfile.transcoder").read_text())
    images = {
        repository_of(values["image"]["operator"]["repository"]): _map_to_venv(operator, venv_bin),
        repository_of(values["image"]["transcoder"]["repository"]): _map_to_venv(transcoder, venv_bin),
    }
    settings = (root / "operator/settings.py").read_text()
    match = re.search(r'transcoder_image:\s*str\s*=\s*"([^"]+)"', settings)
    if match:
        images.setdefault(repository_of(match.group(1)), _map_to_venv(transcoder, venv_bin))
    return images


def load_images(path: Path) -> dict[str, dict[str, Any]]:
    raw = json.loads(path.read_text())
    return {repository_of(k): {"entrypoint": [], "cmd": [], "env": {}, "workingDir": "", "user": "", **v}
            for k, v in raw.items()}
