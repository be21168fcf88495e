"""Reports the transcode's progress into its VideoTranscode's `status.report`.

The operator owns the rest of the status; the transcoder writes only `status.report`, with a
JSON merge patch on the status subresource (docs/architecture.md), so the two never contend
for a field. Reporting is best-effort: a slow or unreachable API server must never slow down
or fail a transcode, so patches are sent from a background thread that always sends the
latest state and drops the intermediate ones (coalescing), and errors are logged once."""

from __future__ import annotations

import datetime
import json
import os
import resource
import sys
import threading
from pathlib import Path

import urllib3

from lectern_operator.api.v1alpha1 import TranscoderReport

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
KUBE_API_URL_ENV = "LECTERN_KUBE_API_URL"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (ffmpeg)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


class CrReporter:
    """PATCHes `{base_url}{api_path}/status` with `{"status": {"report": {...}}}`."""

    def __init__(self, api_path: str, base_url: str, token_path: Path | None = None, ca_path: Path | None = None,
                 timeout: float = 5.0, pod: str | None = None) -> None:
        if not api_path.startswith("/apis/") or ".." in api_path or "?" in api_path:
            raise ValueError(f"--report-cr must be an API path like /apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME, "
                             f"got {api_path!r}")
        self.url = base_url.rstrip("/") + api_path.rstrip("/") + "/status"
        self.token_path = token_path
        kw: dict = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False}
        if ca_path is not None and ca_path.exists():
            kw.update(cert_reqs="CERT_REQUIRED", ca_certs=str(ca_path))
        self.http = urllib3.PoolManager(**kw)
        self.report = TranscoderReport(pod=pod)
        self.sent = 0
        self.failures = 0
        self._cond = threading.Condition()
        self._pending = False
        self._closed = False
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name="cr-reporter", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, api_path: str) -> "CrReporter | None":
        """In-cluster (service host + token + CA) or `LECTERN_KUBE_API_URL` (tests: plain
        http, no token); None (and a warning) when neither is available."""
        pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME")
        base = os.environ.get(KUBE_API_URL_ENV)
        if base:
            token = SERVICE_ACCOUNT / "token"
            return cls(api_path, base, token_path=token if token.exists() else None, pod=pod)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if host:
            host = f"[{host}]" if ":" in host else host
            return cls(api_path, f"https://{host}:{port}", token_path=SERVICE_ACCOUNT / "token",
                       ca_path=SERVICE_ACCOUNT / "ca.crt", pod=pod)
        print("lectern-transcode: warning: --report-cr given but no Kubernetes API server found "
              f"(neither in-cluster nor {KUBE_API_URL_ENV}); not reporting", file=sys.stderr)
        return None

    def update(self, **fields) -> None:
        """Merge `fields` (TranscoderReport attribute names) into the report and queue a patch."""
        with self._cond:
            data = self.report.model_dump()
            data.update(fields)
            data["cpu_seconds"] = round(cpu_seconds(), 2)
            data["updated_at"] = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            self.report = TranscoderReport(**data)
            self._pending = True
            self._cond.notify()

    def body(self) -> bytes:
        report = self.report.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json.dumps({"status": {"report": report}}).encode()

    def _send(self, body: bytes) -> None:
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        if self.token_path is not None:
            try:
                headers["Authorization"] = "Bearer " + self.token_path.read_text().strip()  # re-read: it rotates
            except OSError:
                pass
        try:
            response = self.http.request("PATCH", self.url, body=body, headers=headers)
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}")
            self.sent += 1
        except Exception as exc:  # best-effort by contract
            self.failures += 1
            if not self._warned:
                self._warned = True
                print(f"lectern-transcode: warning: cannot report to the VideoTranscode status "
                      f"({type(exc).__name__}: {exc}); continuing without", file=sys.stderr)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                self._pending = False
                body = self.body()
            self._send(body)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending (the final state) and stop, waiting at most `timeout`."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
