"""Prometheus metrics of the worker: the stages report here after every transaction."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("tagpulse.streams")

_metrics = None


def start_worker_metrics(settings) -> None:
    global _metrics
    try:
        from tagpulse import metrics
    except ImportError:
        return
    _metrics = metrics
    port = None
    for candidate in range(settings.worker_metrics_port, settings.worker_metrics_port + 4):
        try:
            port = metrics.start_metrics_server(candidate)
            break
        except OSError:
            continue
    log.info("worker metrics on port %s", port)


def stage1(partition, result, state) -> None:
    m = _metrics
    if m is None:
        return
    for platform, n in result.posts_in.items():
        m.POSTS_IN.labels(platform=platform).inc(n)
    for platform, n in result.duplicates.items():
        m.DUPLICATES.labels(platform=platform).inc(n)
    for (tag, platform, size, start), n in result.late.items():
        m.LATE_EVENTS.labels(window_size=str(size)).inc(n)
    for row in result.dead_letters:
        m.count_invalid(row["reason"])
        m.DEAD_LETTERS.labels(stage="worker").inc()
    if state.watermark is not None:
        m.WATERMARK_LAG.labels(partition=str(partition)).set(time.time() - state.watermark)
    m.STATE_ENTRIES.labels(kind="dedup_keys").set(len(state.dedup))
    m.TRANSACTIONS.inc()


def stage2(partition, result, state) -> None:
    m = _metrics
    if m is None:
        return
    for (tag, platform, size, start), n in result.late.items():
        m.LATE_EVENTS.labels(window_size=str(size)).inc(n)
    m.STATE_ENTRIES.labels(kind="pending_windows").set(len(state.pending))
    m.TRANSACTIONS.inc()
