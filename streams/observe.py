"""Prometheus metrics of the worker: the stages report here after every transaction.

Counters are at-least-once (a batch retried after a crash counts again); the
exact figures live in ClickHouse. Per-tag gauges are bounded (tagpulse.metrics.TagGauges).
"""
from __future__ import annotations

import logging
import time
from operator import itemgetter

from tagpulse import metrics as m
from tagpulse.core.windows import ROW_END, ROW_SIZE

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


# Windows that ended longer ago than this close in a replay or a catch-up, not live: their timing
# line is a debug line (not one per step of a backlog), and stage 1 does not wait for their close.
LIVE_CLOSE_S = 600


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
    closing = [ps for ps in map(itemgetter(0), result.partials) if ps not in result.early]
    if closing:
        end = max(closing) + state.width
        after = time.time() - (end + _grace)
        log.log(logging.INFO if after < LIVE_CLOSE_S else logging.DEBUG,
                "dedup-window partition %d: pane shares ending by %s UTC committed %.2f s after pane end + grace",
                partition, time.strftime("%H:%M:%S", time.gmtime(end)), after)
    for ps in result.early:
        log.debug("dedup-window partition %d: pane shares ending by %s UTC shipped early, %.2f s before pane end",
                  partition, time.strftime("%H:%M:%S", time.gmtime(ps + state.width)),
                  ps + state.width - time.time())
    m.STATE_ENTRIES.labels(kind="dedup_keys").set(len(state.dedup))
    m.STATE_ENTRIES.labels(kind="open_panes").set(len(state.panes))
    m.TRANSACTIONS.inc()


def stage2(partition, result, state, step_s: float, path=None, flush: bool = True) -> None:
    """`flush=False` during a live close: the per-tag gauge export (≈ 7–9 µs a tag, python -m bench.tag_export) would
    otherwise run on the event loop right after a boundary's first commit, while the worker's other partition's
    step and commit wait for it; the worker's one-second timer exports once the close is over."""
    now = time.time()
    for (_tag, _platform, size, _start), n in result.late.items():
        m.LATE_EVENTS.labels(window_size=str(size)).inc(n)
    m.STATE_ENTRIES.labels(kind="merge_panes").set(len(state.panes))
    m.TRANSACTIONS.inc()
    if result.rows:
        # One size per step (tagpulse.core.stage2), labelled by its first row: only a close a restart
        # interrupted is finished in one result. The first step of a batch also applied its records.
        size = result.rows[0][ROW_SIZE]
        m.CLOSE_STEP_SECONDS.labels(window_size=str(size)).observe(step_s)
        end = max(map(itemgetter(ROW_END), result.rows))
        closed_at = end + _grace
        after = now - closed_at
        # Where the wait went, each after window end + grace: the batch's last record written by stage 1,
        # taken by the agent, the step that applied them begun (the first step of the batch).
        where = "" if path is None else ", records written %+.2f, taken %+.2f, step from %+.2f" % tuple(
            t - closed_at for t in path)
        log.log(logging.INFO if after < LIVE_CLOSE_S else logging.DEBUG,
                "merge partition %d: %d final rows of %d s windows ending by %s UTC, step %.3f s, "
                "committed %.2f s after window end + grace%s", partition, len(result.rows), size,
                time.strftime("%H:%M:%S", time.gmtime(end)), step_s, after, where)
    if _tags is None:
        return
    # One latency per window end: the rows that end together were emitted together, and a
    # histogram observation per row cost seconds for the million rows of a day's close.
    for window_end in set(map(itemgetter(ROW_END), result.rows)):
        m.observe_window_close(window_end, _grace, now)
    _tags.add_windows(result.rows)
    for spike in getattr(result, "spikes", ()):
        _tags.add_spike(spike.tag, spike.platform, spike.score, spike.detected_at)
    if flush:
        flush_tag_gauges(now)


# An export ranks every tag seen in the last hour (tens of milliseconds for 10k tags; at one a second
# that was 4 % of a worker replaying 1 M posts): at most one per scrape interval of the local stack's
# Prometheus (5 s; docker compose scrapes every 15 s) while windows arrive — fresher values than a
# scrape are never read — and one every SPIKE_EXPIRY_CHECK_S without news, for spikes whose hold
# time ran out.
EXPORT_EVERY_S = 5.0
SPIKE_EXPIRY_CHECK_S = 30.0


def flush_tag_gauges(now: float | None = None) -> None:
    """Called every second by the worker's timer too, so the last windows of a batch are exported."""
    global _last_export
    if _tags is None:
        return
    now = time.time() if now is None else now
    since = now - _last_export
    if since >= SPIKE_EXPIRY_CHECK_S or (_tags.changed and since >= EXPORT_EVERY_S):
        _last_export = now
        _tags.export()


def consumer_lag(topic: str, partition: int, lag: int) -> None:
    m.CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(max(0, lag))
