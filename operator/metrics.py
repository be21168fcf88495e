"""Prometheus metrics (served by `lectern-operator` on LECTERN_METRICS_PORT, path /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRANSCODES = Gauge("lectern_transcodes", "VideoTranscodes in flight, by phase (Running, Queued, Pending)", ["phase"])
QUEUE_LENGTH = Gauge("lectern_queue_length", "VideoTranscodes waiting for a slot (phase Queued)")
RUNNING = Gauge("lectern_running_transcodes", "VideoTranscodes holding a slot (phase Running)")
FINISHED = Counter("lectern_transcodes_finished_total", "Transcodes that reached a final phase", ["phase"])
DURATION = Histogram(
    "lectern_transcode_duration_seconds", "Running -> final phase, by final phase", ["phase"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf")))
QUEUE_WAIT = Histogram(
    "lectern_queue_wait_seconds", "Queued -> Running",
    buckets=(0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, float("inf")))
RETRIES = Counter("lectern_transcode_retries_total", "Pods started beyond the first one of a transcode")
STALLS = Counter("lectern_watchdog_restarts_total", "Pods the watchdog deleted because progress stalled")
LECTURE_WRITE_ERRORS = Counter("lectern_lecture_write_errors_total", "Lecture writes that could not reach MongoDB")
NOTIFICATIONS = Counter("lectern_notifications_total", "Notifications published", ["type"])
ENCODE_SPEED = Histogram("lectern_encode_speed_ratio", "Encode speed of finished transcodes (x realtime)",
                         buckets=(0.25, 0.5, 1, 2, 4, 8, 16, float("inf")))
EXPIRED = Counter("lectern_transcodes_expired_total", "Finished VideoTranscodes deleted after the retention period")
IN_FLIGHT = Gauge("lectern_transcodes_tracked", "Transcodes whose Job and pods the operator keeps in its watch cache")
CPU_SECONDS = Counter("lectern_transcode_cpu_seconds_total", "CPU seconds reported by finished transcodes")


def serve(port: int) -> None:
    if port:
        start_http_server(port)
