"""The local cluster's throw-away PKI, made with the `openssl` command line tool (EC P-256: fast
to generate), as kubeadm lays it out: one CA that signs the API server's serving certificate,
every client certificate (admin, controller manager, scheduler, the node, the API server's
client to the node) and the node's serving certificate, plus the ServiceAccount signing key.

Identities are the ones Kubernetes' authorizers expect: `system:masters` for the admin,
`system:kube-controller-manager`, `system:kube-scheduler`, and `system:node:<name>` in
`system:nodes` for the node agent (the Node authorizer and NodeRestriction key on that)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class PkiError(RuntimeError):
    pass


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Pair
    apiserver: Pair            # serving
    admin: Pair                # system:masters
    controller_manager: Pair
    scheduler: Pair
    node: Pair                 # system:node:<name>, client
    node_serving: Pair         # the node agent's HTTPS endpoint (logs)
    apiserver_kubelet_client: Pair
    sa_key: Path               # ServiceAccount token signing key
    sa_pub: Path


def _leaf(d: Path, name: str, subject: str, usage: str, san: str | None = None) -> Pair:
    _openssl("req", "-new", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
           f"extendedKeyUsage={usage}", "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    if san:
        ext.append(f"subjectAltName={san}")
    (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "30", "-extfile", f"{name}.ext", cwd=d)
    (d / f"{name}.csr").unlink()
    (d / f"{name}.ext").unlink()
    return Pair(d / f"{name}.crt", d / f"{name}.key")


def make_pki(directory: Path, node_name: str) -> Pki:
    """Create every key and certificate in `directory` (kept for the cluster's life)."""
    if not shutil.which("openssl"):
        raise PkiError("the openssl command line tool is not installed (apt-get install openssl)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    _openssl("req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
             "-subj", "/CN=lectern-local-cluster-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
             "-addext", "subjectKeyIdentifier=hash", cwd=d)
    api_san = ("IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
               "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    return Pki(
        directory=d,
        ca=Pair(d / "ca.crt", d / "ca.key"),
        apiserver=_leaf(d, "apiserver", "/CN=kube-apiserver", "serverAuth", api_san),
        admin=_leaf(d, "admin", "/O=system:masters/CN=kubernetes-admin", "clientAuth"),
        controller_manager=_leaf(d, "controller-manager", "/CN=system:kube-controller-manager", "clientAuth"),
        scheduler=_leaf(d, "scheduler", "/CN=system:kube-scheduler", "clientAuth"),
        node=_leaf(d, "node", f"/O=system:nodes/CN=system:node:{node_name}", "clientAuth"),
        node_serving=_leaf(d, "node-serving", f"/CN={node_name}", "serverAuth",
                           f"IP:127.0.0.1,DNS:localhost,DNS:{node_name}"),
        apiserver_kubelet_client=_leaf(d, "apiserver-kubelet-client",
                                       "/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth"),
        sa_key=d / "sa.key", sa_pub=d / "sa.pub",
    )


def kubeconfig(server: str, ca: Path, client: Pair, user: str, namespace: str = "default") -> str:
    """A kubeconfig with the CA and client credentials embedded (one file to hand over)."""
    import base64

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return f"""apiVersion: v1
kind: Config
clusters:
- name: lectern-local
  cluster:
    server: {server}
    certificate-authority-data: {b64(ca)}
users:
- name: {user}
  user:
    client-certificate-data: {b64(client.cert)}
    client-key-data: {b64(client.key)}
contexts:
- name: {user}@lectern-local
  context: {{cluster: lectern-local, user: {user}, namespace: {namespace}}}
current-context: {user}@lectern-local
"""
