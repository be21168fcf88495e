"""Progress: ffmpeg's `-progress` output turned into one integer 0–100 for the whole transcode.

The platform shows this number to instructors (BullMQ job progress, via the CR), so it must
only ever go up, end at exactly 100, and not flood the Kubernetes API: it changes at most about
once a second and only when the integer changes. Download and upload have their share of the
bar so that a long upload does not sit at 100 %.

ffmpeg's `out_time_us` and (despite its name) `out_time_ms` are both in microseconds."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator

# Share of the overall bar per stage, normalised over the stages a run actually has.
STAGE_WEIGHTS = {"downloading": 10.0, "probing": 0.0, "encoding": 80.0, "uploading": 10.0}


def parse_progress(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """Group ffmpeg `-progress` key=value lines into one dict per block (a block ends with
    `progress=continue` or `progress=end`)."""
    block: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or "=" not in line:
            continue
        key, _, value = line.partition("=")
        block[key.strip()] = value.strip()
        if key.strip() == "progress":
            yield block
            block = {}


def out_time_seconds(block: dict[str, str]) -> float | None:
    """Encoded media time of a block in seconds (None while ffmpeg still says N/A)."""
    for key in ("out_time_us", "out_time_ms"):  # both microseconds
        value = block.get(key, "")
        try:
            us = int(value)
        except ValueError:
            continue
        if us >= 0:
            return us / 1_000_000
    return None


def speed_of(block: dict[str, str]) -> float | None:
    """ffmpeg's `speed=1.93x` as 1.93 (None for N/A)."""
    try:
        return float(block.get("speed", "").rstrip("x").strip())
    except ValueError:
        return None


def fraction_done(block: dict[str, str], duration: float) -> float | None:
    """How far an encode is, 0.0–1.0, measured against the probed input duration."""
    if block.get("progress") == "end":
        return 1.0
    t = out_time_seconds(block)
    if t is None or duration <= 0:
        return None
    return max(0.0, min(1.0, t / duration))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a progress hook receives: enough for a bar, a JSON line and the CR report."""

    stage: str
    progress: int
    speed: float | None = None
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    input_duration_seconds: float | None = None


Hook = Callable[[Snapshot], None]


class ProgressTracker:
    """Combines per-stage fractions into the overall integer and calls the hooks.

    Thread-safe: the upload runs in a worker thread and reports bytes from there."""

    def __init__(self, stages: Iterable[str], hooks: Iterable[Hook] = (), min_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stages = [s for s in stages if s in STAGE_WEIGHTS]
        total = sum(STAGE_WEIGHTS[s] for s in self.stages) or 1.0
        self._share = {s: STAGE_WEIGHTS[s] / total for s in self.stages}
        self._before: dict[str, float] = {}
        acc = 0.0
        for s in self.stages:
            self._before[s] = acc
            acc += self._share[s]
        self.hooks = list(hooks)
        self.min_interval = min_interval
        self.clock = clock
        self._lock = threading.Lock()
        self.stage = "downloading" if "downloading" in self.stages else (self.stages[0] if self.stages else "encoding")
        self.progress = 0
        self.speed: float | None = None
        self.bytes_downloaded = 0
        self.bytes_uploaded = 0
        self.input_duration_seconds: float | None = None
        self._last_emit: float | None = None
        self._last_emitted: tuple[str, int] | None = None

    def snapshot(self) -> Snapshot:
        return Snapshot(self.stage, self.progress, self.speed, self.bytes_downloaded,
                        self.bytes_uploaded, self.input_duration_seconds)

    def _emit(self, force: bool) -> None:
        key = (self.stage, self.progress)
        now = self.clock()
        if key == self._last_emitted:
            return
        stage_changed = self._last_emitted is None or self._last_emitted[0] != self.stage
        if not (force or stage_changed) and self._last_emit is not None and now - self._last_emit < self.min_interval:
            return
        self._last_emit, self._last_emitted = now, key
        snap = self.snapshot()
        for hook in self.hooks:
            hook(snap)

    def start_stage(self, stage: str) -> None:
        """Enter a stage (reported at once); progress jumps to where the stage starts."""
        with self._lock:
            self.stage = stage
            if stage in self._before:
                self.progress = max(self.progress, int(self._before[stage] * 100))
            self._emit(force=True)

    def update(self, fraction: float | None, *, speed: float | None = None, bytes_downloaded: int | None = None,
               bytes_uploaded: int | None = None) -> None:
        """Progress within the current stage (0.0–1.0); never lowers the overall value and
        holds back 100 until `finish()`, so 100 means the output really exists."""
        with self._lock:
            if speed is not None:
                self.speed = speed
            if bytes_downloaded is not None:
                self.bytes_downloaded = bytes_downloaded
            if bytes_uploaded is not None:
                self.bytes_uploaded = bytes_uploaded
            if fraction is not None and self.stage in self._share:
                f = max(0.0, min(1.0, fraction))
                overall = int((self._before[self.stage] + self._share[self.stage] * f) * 100)
                self.progress = max(self.progress, min(99, overall))
            self._emit(force=False)

    def finish(self, stage: str = "done") -> None:
        with self._lock:
            self.stage = stage
            self.progress = 100
            self._emit(force=True)
