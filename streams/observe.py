"""Prometheus metrics of the worker: the stages report here after every transaction.

Counters are at-least-once (a batch retried after a crash counts again); the
exact figures live in ClickHouse. Per-tag gauges are bounded (tagpulse.metrics.TagGauges).
"""
from __future__ import annotations

import logging
import time

from tagpulse import metrics as m

log = logging.getLogger("tagpulse.streams")

_tags: m.TagGauges | None = None
_grace = 0.0
_last_export = 0.0


def start_worker_metrics(settings, watch=()) -> int | None:
    global _tags, _grace
    _tags = m.TagGauges(watch=watch)
    m.init_spike_counters()
    _grace = float(settings.grace_s)
    # Several workers on one machine take the next free port; Prometheus scrapes base..base+3.
    for candidate in range(settings.worker_metrics_port, settings.worker_metrics_port + 4):
        try:
            port = m.start_metrics_server(candidate)
            log.info("worker metrics on port %s", port)
            return port
        except OSError:
            continue
    log.warning("no free metrics port in %d..%d; metrics not served",
                settings.worker_metrics_port, settings.worker_metrics_port + 3)
    return None


def stage1(partition, result, state) -> None:
    for platform, n in result.posts_in.items():
        m.POSTS_IN.labels(platform=platform).inc(n)
    for platform, n in result.duplicates.items():
        m.DUPLICATES.labels(platform=platform).inc(n)
    for (_tag, _platform, size, _start), n in result.late.items():
        m.LATE_EVENTS.labels(window_size=str(size)).inc(n)
    for row in result.dead_letters:
        m.count_invalid(row["reason"])
    if result.dead_letters:
        m.DEAD_LETTERS.labels(stage="worker").inc(len(result.dead_letters))
    if result.skipped:
        m.SKIPPED.inc(result.skipped)
    if state.watermark is not None:
        m.WATERMARK_LAG.labels(partition=str(partition)).set(time.time() - state.watermark)
    m.STATE_ENTRIES.labels(kind="dedup_keys").set(len(state.dedup))
    m.STATE_ENTRIES.labels(kind="open_panes").set(len(state.panes))
    m.TRANSACTIONS.inc()


def stage2(partition, result, state) -> None:
    global _last_export
    now = time.time()
    for (_tag, _platform, size, _start), n in result.late.items():
        m.LATE_EVENTS.labels(window_size=str(size)).inc(n)
    m.STATE_ENTRIES.labels(kind="merge_panes").set(len(state.panes))
    m.TRANSACTIONS.inc()
    if _tags is None:
        return
    # One latency per window end: the rows that end together were emitted together, and a
    # histogram observation per row cost seconds for the million rows of a day's close.
    for window_end in {row["window_end"] for row in result.rows}:
        m.observe_window_close(window_end, _grace, now)
    for row in result.rows:
        _tags.add_window(row)
    for spike in getattr(result, "spikes", ()):
        _tags.add_spike(spike.tag, spike.platform, spike.score, spike.detected_at)
    if result.rows and now - _last_export >= 1.0:
        _last_export = now
        _tags.export()


def flush_tag_gauges() -> None:
    """Called every second by the worker's timer, so the last windows of a batch are exported too."""
    if _tags is not None:
        _tags.export()


def consumer_lag(topic: str, partition: int, lag: int) -> None:
    m.CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(max(0, lag))
