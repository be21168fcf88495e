"""`lectern-operator`: the kopf operator for VideoTranscodes.

Runs kopf with the handlers of `lectern_operator.handlers`, namespaced (LECTERN_NAMESPACES),
with peering (two replicas never both act; LECTERN_STANDALONE=true turns it off), kopf's
health endpoint on LECTERN_HEALTH_PORT (/healthz) and Prometheus metrics on
LECTERN_METRICS_PORT (/metrics)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import kopf

from lectern_operator import metrics
from lectern_operator.handlers import Services, build_registry
from lectern_operator.logs import setup_logging
from lectern_operator.settings import Settings


def operator_kwargs(s: Settings) -> dict[str, Any]:
    priority = s.peering_priority if s.peering_priority is not None else random.SystemRandom().randint(1, 2**30)
    return dict(clusterwide=False, namespaces=list(s.namespaces), standalone=s.standalone,
                peering_name=None if s.standalone else s.peering_name, priority=priority)


async def run(settings: Settings, *, stop_flag: asyncio.Event | None = None,
              ready_flag: asyncio.Event | None = None, services: Services | None = None,
              liveness_endpoint: str | None = None) -> None:
    """Run the operator in the current event loop until `stop_flag` is set (tests, bench)."""
    await kopf.operator(registry=build_registry(settings, services), memo=kopf.Memo(),
                        stop_flag=stop_flag, ready_flag=ready_flag, liveness_endpoint=liveness_endpoint,
                        **operator_kwargs(settings))


def main() -> None:
    s = Settings()
    setup_logging(s)
    metrics.serve(s.metrics_port)
    kopf.run(registry=build_registry(s), memo=kopf.Memo(),
             liveness_endpoint=f"http://0.0.0.0:{s.health_port}/healthz" if s.health_port else None,
             **operator_kwargs(s))


if __name__ == "__main__":
    main()
