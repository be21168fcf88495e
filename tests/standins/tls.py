"""A throw-away certificate authority for local TLS stand-ins (the Cloudinary emulator's https
listener), made with the `openssl` command line tool at fixture time: nothing is committed.

    certs = make_test_certs(tmp_dir)        # CA + a server certificate for 127.0.0.1 / localhost
    CloudinaryEmulator(tls=(certs.cert, certs.key))
    env["SSL_CERT_FILE"] = str(certs.ca)    # what a client must trust (the CA only)

The server certificate is a proper leaf (CA:FALSE, serverAuth, SAN IP:127.0.0.1, IP:::1,
DNS:localhost) signed by a separate CA certificate (CA:TRUE, keyCertSign), so strict X.509
verification (Python 3.13's VERIFY_X509_STRICT) accepts the chain. Keys are EC P-256: fast
to generate."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path


class TlsUnavailable(RuntimeError):
    """No `openssl` binary on the PATH."""


@dataclasses.dataclass(frozen=True)
class TestCerts:
    __test__ = False  # not a pytest test class

    ca: Path     # the CA certificate: the trust anchor clients load (SSL_CERT_FILE)
    cert: Path   # the server's certificate chain (leaf, then CA)
    key: Path    # the server's private key


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def make_test_certs(directory: str | Path, days: int = 2) -> TestCerts:
    """Create `ca.pem`, `server.pem` (chain) and `server.key` in `directory`."""
    if not shutil.which("openssl"):
        raise TlsUnavailable("the openssl command line tool is not installed")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
             "-subj", "/CN=Lectern test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server-leaf.pem", "-days", str(days), "-sha256",
             "-extfile", "server.ext", cwd=d)
    (d / "server.pem").write_text((d / "server-leaf.pem").read_text() + (d / "ca.pem").read_text())
    for name in ("server.csr", "server.ext", "server-leaf.pem", "ca.srl", "ca.key"):
        (d / name).unlink(missing_ok=True)  # the CA key is not needed again
    return TestCerts(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
