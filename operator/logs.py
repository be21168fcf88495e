"""Logging for the operator and the intake processes (one image, one format).

JSON lines by default (LECTERN_LOG_FORMAT=json), one object per record, so a cluster's log
pipeline can index them; `text` for a person at a terminal. The HTTP and API-client libraries
are held at INFO or above even when LECTERN_LOG_LEVEL=DEBUG: their DEBUG output carries whole
request bodies and headers, which can hold tokens."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from lectern_operator.settings import Settings

QUIET = ("aiohttp", "asyncio", "urllib3")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if hasattr(record, "k8s_ref"):  # kopf: the object a record is about
            out["k8s_ref"] = record.k8s_ref
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def routine(record: logging.LogRecord) -> bool:
    """False for kopf's per-object "Timer 'x' succeeded." / "Handler 'x' succeeded." lines: one
    per resync tick of every transcode in flight (hundreds a minute at a cap of 100), no news."""
    return not (record.name == "kopf.objects" and record.levelno == logging.INFO
                and isinstance(record.msg, str) and record.msg.endswith(" succeeded."))


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(routine)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
