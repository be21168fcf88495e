"""The concurrency cap: at most `max_concurrent` VideoTranscodes in phase Running.

The queue is *derived from the cluster*, never held only in memory: a kopf index of the
VideoTranscodes in flight (filled from the API server's list+watch before any handler runs),
keyed by phase (`Running`, `Queued`, `Pending` = not yet validated), gives each one's
priority and creation time. A finished transcode is in no key: a pass costs O(running +
waiting), whatever the history. Admission counts the Running ones and starts the
best Queued ones: higher `spec.priority` first, then first come, first served
(creationTimestamp, then the operator's `status.queuedAt`, then name). After an operator
restart the index is rebuilt from the cluster, so the cap and the order survive it.

The index lags our own writes by one watch event; `_overrides` bridges that gap (a CR we
just started counts as Running, one that just finished as finished) until the index shows
the same, so two admission runs in quick succession never over-commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from lectern_operator import metrics
from lectern_operator.api import v1alpha1 as api
from lectern_operator.settings import Settings

WAITING = ("Queued",)
log = logging.getLogger("lectern.operator.queue")


@dataclass(frozen=True)
class Entry:
    namespace: str
    name: str
    phase: str | None
    priority: int
    created: str
    queued_at: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def order(self) -> tuple:
        # creationTimestamp has one-second resolution: within a second, the order the operator
        # queued them in (status.queuedAt, microseconds); not yet known sorts last.
        return (-self.priority, self.created, self.queued_at or "~", self.name)


def entry_from_body(body: Any) -> Entry:
    meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
    try:
        priority = int(spec.get("priority") or 0)
    except (TypeError, ValueError):
        priority = 0
    return Entry(namespace=meta.get("namespace", ""), name=meta.get("name", ""), phase=status.get("phase"),
                 priority=priority, created=str(meta.get("creationTimestamp") or ""),
                 queued_at=str(status.get("queuedAt") or ""))


IN_FLIGHT = ("Running", "Queued", "Pending")


def index_entry(body: Any) -> dict[str, Entry]:
    """The kopf index value of one VideoTranscode: {phase: entry} while in flight, {} once
    final (an empty mapping, not None: kopf keeps an object's old value when the indexing
    function returns None; with {} it drops it)."""
    e = entry_from_body(body)
    phase = e.phase or "Pending"
    return {phase: e} if phase in IN_FLIGHT else {}


def in_flight(index: Any) -> list[Entry]:
    """Every indexed entry (Running, Queued, Pending); `index` is the kopf index, or a plain
    mapping of the same shape, or already a list of entries."""
    if index is None:
        return []
    if hasattr(index, "get"):
        return [e for phase in IN_FLIGHT for e in index.get(phase, ())]
    return list(index)


StartFn = Callable[[Entry], Awaitable[bool]]


class Admission:
    def __init__(self, settings: Settings, start: StartFn) -> None:
        self.settings = settings
        self._start = start
        self._lock = asyncio.Lock()
        self._overrides: dict[tuple[str, str], tuple[str, float, str]] = {}
        self._last_run = 0.0
        self._pending = False
        self._source: Any = ()
        self.last_counts: dict[str, int] = {}

    def override(self, namespace: str, name: str, phase: str, queued_at: str = "") -> None:
        self._overrides[(namespace, name)] = (phase, time.monotonic(), queued_at)

    def _view(self, entries: Iterable[Entry]) -> list[Entry]:
        now = time.monotonic()
        out: list[Entry] = []
        seen: set[tuple[str, str]] = set()
        for e in entries:
            seen.add(e.key)
            ov = self._overrides.get(e.key)
            if ov is not None:
                phase, _, queued_at = ov
                if e.phase == phase or (e.phase in api.FINAL_PHASES):
                    del self._overrides[e.key]  # the index caught up
                else:
                    e = Entry(e.namespace, e.name, phase, e.priority, e.created, e.queued_at or queued_at)
            out.append(e)
        for key, (_, at, _q) in list(self._overrides.items()):
            if key not in seen and now - at > 120:
                del self._overrides[key]
        return out

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def due(self) -> bool:
        """Whether an unforced (periodic) run is due: none for an admit interval."""
        return time.monotonic() - self._last_run >= self.settings.admit_interval_seconds

    async def admit(self, entries: Any, *, force: bool = True) -> list[Entry]:
        """Start as many waiting transcodes as there are free slots; returns those started.

        Requests coalesce: while a pass runs, further requests only mark it to run once more
        (with the newest view), so a burst of creations costs a few passes, not one each.
        `force=False` (the periodic safety net) skips unless an admit interval has passed."""
        if not force and not self.due():
            return []
        self._source = entries
        self._pending = True
        if self._lock.locked():
            return []
        started: list[Entry] = []
        async with self._lock:
            while self._pending:
                self._pending = False
                started += await self._pass(in_flight(self._source))
        return started

    async def _pass(self, entries: list[Entry]) -> list[Entry]:
        self._last_run = time.monotonic()
        view = self._view(entries)
        counts: dict[str, int] = {p: 0 for p in IN_FLIGHT}
        for e in view:
            if e.phase in api.FINAL_PHASES or e.phase == "Deleted":
                continue  # an override: it just finished or went away
            counts[e.phase or "Pending"] = counts.get(e.phase or "Pending", 0) + 1
        running = counts["Running"]
        waiting = sorted((e for e in view if e.phase in WAITING), key=Entry.order)
        free = self.settings.max_concurrent - running
        log.debug("admission: running=%d free=%d waiting=%s", running, free, [e.name for e in waiting[:10]])
        started: list[Entry] = []
        candidates = iter(waiting)
        while len(started) < free:
            batch = [e for _, e in zip(range(min(free - len(started), 16)), candidates)]
            if not batch:
                break
            results = await asyncio.gather(*(self._start(e) for e in batch), return_exceptions=True)
            for e, ok in zip(batch, results):
                if isinstance(ok, BaseException):
                    log.warning("could not start %s/%s: %s", e.namespace, e.name, ok)
                elif ok:
                    self.override(e.namespace, e.name, "Running")
                    started.append(e)
        counts["Running"] += len(started)
        counts["Queued"] = len(waiting) - len(started)
        counts.pop("Pending", None)
        self.last_counts = counts
        for phase, n in counts.items():
            metrics.TRANSCODES.labels(phase=phase).set(n)
        metrics.QUEUE_LENGTH.set(counts["Queued"])
        metrics.RUNNING.set(counts["Running"])
        return started
