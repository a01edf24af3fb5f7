"""Every Prometheus metric tagpulse exposes, defined once (documented in docs/metrics.md).

Naming follows Prometheus practice: `tagpulse_` prefix, base units (seconds), `_total` for counters, and
labels with a bounded set of values only — never post text, author ids or free-form reasons:

- invalid-record reasons are folded into at most MAX_INVALID_REASONS distinct values (the rest: "other");
- per-tag gauges exist for a watch-list plus the top-N tags by posts in the last hour (plus the few tags that
  spiked recently); every other tag is summed under tag="_other" (`TopTags`, pure, and `TagGauges`).

The process and platform collectors of prometheus_client are on by default (process_cpu_seconds_total, ...).

Metrics are at-least-once counters: a batch retried after a crash counts twice here, never in ClickHouse
(docs/streaming.md). Dashboards therefore read exact figures from ClickHouse and rates from Prometheus.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Iterable, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from tagpulse.core.windows import (ROW_END, ROW_IMPRESSIONS, ROW_PLATFORM, ROW_POSTS, ROW_REACH, ROW_SIZE,
                                   ROW_TAG, WindowRow)


def _metric(kind, name: str, documentation: str, labelnames: Iterable[str] = (), **kwargs):
    """Create a collector, or return the one already registered under that name.

    Lets this module be imported next to code that registered the same metric
    itself (tests import several components into one process) without the
    "Duplicated timeseries" error; the definitions here are the reference.
    """
    existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - no public lookup exists
    if existing is not None:
        return existing
    return kind(name, documentation, list(labelnames), **kwargs)


# ----------------------------------------------------------------------------- pipeline (worker)
POSTS_IN = _metric(Counter, "tagpulse_posts_in_total", "Valid posts read by the worker (before dedup)", ["platform"])
DUPLICATES = _metric(Counter, "tagpulse_duplicates_total", "Posts dropped as duplicates of an earlier post",
                     ["platform"])
LATE_EVENTS = _metric(Counter, "tagpulse_late_events_total",
                      "Posts that arrived for an already closed window, per window size in seconds",
                      ["window_size"])
INVALID = _metric(Counter, "tagpulse_invalid_total", "Records rejected as invalid, by bounded reason", ["reason"])
DEAD_LETTERS = _metric(Counter, "tagpulse_dead_letters_total", "Records written to the dead-letter topic",
                       ["stage"])
SKIPPED = _metric(Counter, "tagpulse_skipped_total",
                  "Well-formed records that are deliberately not posts (deletes, edits, stream notices)")
WATERMARK_LAG = _metric(Gauge, "tagpulse_watermark_lag_seconds",
                        "Wall clock minus the event-time watermark of a raw partition (huge for replays of old data)",
                        ["partition"])
CONSUMER_LAG = _metric(Gauge, "tagpulse_consumer_lag",
                       "Messages between the consumer position and the end of the partition",
                       ["topic", "partition"])
WINDOW_CLOSE_LATENCY = _metric(
    Histogram, "tagpulse_window_close_latency_seconds",
    "Processing time from a window's end + grace to the emission of its final row (live data only)",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600))
STATE_ENTRIES = _metric(Gauge, "tagpulse_state_entries",
                        "Entries held in worker state (kind: dedup_keys, open_panes, merge_panes)", ["kind"])
TRANSACTIONS = _metric(Counter, "tagpulse_transactions_total", "Kafka transactions committed by the worker")
TRANSACTION_SECONDS = _metric(
    Histogram, "tagpulse_transaction_seconds",
    "Time to encode a partition's changelog record and commit its Kafka transaction (record: delta, snapshot)",
    ["stage", "record"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CLOSE_STEP_SECONDS = _metric(
    Histogram, "tagpulse_close_step_seconds",
    "Time the merge stage took to assemble one close step's final rows, before their transaction",
    ["window_size"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# ----------------------------------------------------------------------------- sink
# sinks/service.py still declares these itself (same names and buckets); until it imports them from here they
# are created lazily, on first access (PEP 562), so importing this module first never makes that module's own
# registration fail with "Duplicated timeseries". Access returns whichever collector is registered.
_SINK_METRICS = {
    "SINK_BATCH_ROWS": (Histogram, "tagpulse_sink_batch_rows", "Rows per ClickHouse insert", ["table"],
                        {"buckets": (1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000)}),
    "SINK_BATCH_SECONDS": (Histogram, "tagpulse_sink_batch_seconds", "Duration of one successful ClickHouse insert",
                           ["table"], {"buckets": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)}),
    "SINK_ERRORS": (Counter, "tagpulse_sink_errors_total", "Failed ClickHouse inserts (each is retried)", ["table"], {}),
    "SINK_ROWS": (Counter, "tagpulse_sink_rows_total", "Rows written to ClickHouse", ["table"], {}),
    "SINK_RETRYING": (Gauge, "tagpulse_sink_retrying",
                      "1 while the sink backs off after a ClickHouse failure (consuming paused)", [], {}),
    "SINK_LAST_INSERT": (Gauge, "tagpulse_sink_last_insert_timestamp_seconds",
                         "Wall time of the last successful insert", ["table"], {}),
}


def __getattr__(name: str):
    if name in _SINK_METRICS:
        kind, metric, doc, labels, kwargs = _SINK_METRICS[name]
        collector = _metric(kind, metric, doc, labels, **kwargs)
        globals()[name] = collector
        return collector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sink_metrics() -> None:
    """Register the sink's metrics now (a process that serves them before the first insert)."""
    for name in _SINK_METRICS:
        __getattr__(name)


# ----------------------------------------------------------------------------- domain (bounded tags)
OTHER_TAG = "_other"
TAG_POSTS_PER_MINUTE = _metric(Gauge, "tagpulse_tag_posts_per_minute",
                               "Posts per minute of the tag in the last closed 1-minute window", ["tag"])
TAG_POTENTIAL_REACH_1H = _metric(Gauge, "tagpulse_tag_potential_reach_1h",
                                 "Potential reach (followers of unique authors) of the tag over the last hour",
                                 ["tag"])
TAG_IMPRESSIONS_1H = _metric(Gauge, "tagpulse_tag_impressions_1h",
                             "Impressions (followers summed over posts) of the tag over the last hour", ["tag"])
TAG_SPIKE_SCORE = _metric(Gauge, "tagpulse_tag_spike_score",
                          "Poisson score (eta) of the tag's latest spike in the last hour, 0 if none; max for _other",
                          ["tag"])
SPIKES = _metric(Counter, "tagpulse_spikes_total", "Spikes raised by the detector", ["platform"])


def init_spike_counters(platforms: Iterable[str] | None = None) -> None:
    """Export tagpulse_spikes_total at 0 for every known platform.

    A labelled counter appears on its first inc(), already at 1, and increase()/rate() need a previous
    sample to see a rise: without this, the first spike of each platform in a worker's life would be
    invisible to every rule that uses the counter.
    """
    if platforms is None:
        from schemas.post import KNOWN_PLATFORMS as platforms
    for platform in sorted(platforms):
        SPIKES.labels(platform=platform)


# ----------------------------------------------------------------------------- bounded invalid reasons
MAX_INVALID_REASONS = 20
_reasons_seen: set[str] = set()
_reasons_lock = threading.Lock()


def reason_label(reason: str, seen: set[str], limit: int = MAX_INVALID_REASONS) -> str:
    """The label value for an invalid-record reason: its first word-ish prefix, at most `limit` distinct ones.

    Reasons may carry details ("missing field 'x' at line 3"); only the part before ':' is a label,
    truncated, so the label set stays small and free of user data. Pure apart from updating `seen`.
    """
    key = (reason or "unknown").split(":", 1)[0].strip().lower()[:40] or "unknown"
    key = "".join(c if c.isalnum() or c in "_-. " else "_" for c in key).replace(" ", "_")
    if key in seen:
        return key
    if len(seen) >= limit:
        return "other"
    seen.add(key)
    return key


def count_invalid(reason: str, n: int = 1) -> None:
    with _reasons_lock:
        label = reason_label(reason, _reasons_seen)
    INVALID.labels(reason=label).inc(n)


def observe_window_close(window_end: float, grace_s: float, emitted_at: float | None = None) -> None:
    """Record how long after `window_end + grace` a final row was emitted.

    Only meaningful for live data: for a replay of old data the difference is years, so values
    beyond a day are not observed at all.
    """
    latency = (time.time() if emitted_at is None else emitted_at) - (window_end + grace_s)
    if 0 <= latency <= 86400:
        WINDOW_CLOSE_LATENCY.observe(latency)


# ----------------------------------------------------------------------------- top tags (pure)
@dataclass(frozen=True)
class TopTags:
    """Which tags get their own label: the watch-list, the top `n` by posts in the last hour, and the
    top `spiking` tags by spike score (so a spike of a small tag is never hidden under "_other")."""

    watch: frozenset[str] = frozenset()
    n: int = 50
    spiking: int = 10

    def select(self, posts_1h: Mapping[str, float], spike_scores: Mapping[str, float] | None = None) -> set[str]:
        chosen = {t for t in self.watch if t != OTHER_TAG}
        # Ties broken by name so the exported set does not flicker between scrapes.
        ranked = sorted((t for t, v in posts_1h.items() if v > 0 and t != OTHER_TAG), key=lambda t: (-posts_1h[t], t))
        chosen.update(ranked[: self.n])
        if spike_scores:
            hot = sorted((t for t, s in spike_scores.items() if s > 0 and t != OTHER_TAG),
                         key=lambda t: (-spike_scores[t], t))
            chosen.update(hot[: self.spiking])
        return chosen

    @staticmethod
    def fold(values: Mapping[str, float], chosen: set[str], how: str = "sum") -> dict[str, float]:
        """Values per exported label: chosen tags as they are (0 if absent), the rest combined under "_other"."""
        out = {t: float(values.get(t, 0.0)) for t in chosen}
        rest = [float(v) for t, v in values.items() if t not in chosen]
        out[OTHER_TAG] = (max(rest) if how == "max" else sum(rest)) if rest else 0.0
        return out


@dataclass
class _TagWindow:
    end: int
    by_platform: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # posts, potential reach, impressions

    def totals(self) -> tuple[int, int, int]:
        # Author ids are platform-scoped, so sums over platforms are exact (docs/metrics-definitions.md).
        posts = sum(v[0] for v in self.by_platform.values())
        reach = sum(v[1] for v in self.by_platform.values())
        impressions = sum(v[2] for v in self.by_platform.values())
        return posts, reach, impressions


class TagGauges:
    """Per-tag gauges with bounded cardinality, fed with final window rows and spikes.

    Keeps the latest closed 1-minute and 1-hour window per tag (event time), and the latest spike score
    per tag for an hour; `export()` writes the gauges for `TopTags.select(...)` plus "_other" and removes
    label sets that dropped out. Feeding is pure bookkeeping; only `export()` touches the registry.

    A spike leaves the score gauge only when it is an hour old in event time *and* has been shown for
    `spike_hold_s` of wall time (`wall`, injectable for tests). Live, both clocks agree; in a replay or a
    catch-up, event time runs hours per second and a spike would vanish before any scrape saw it, so
    ViralSpike would never fire (docs/metrics.md).
    """

    def __init__(self, watch: Iterable[str] = (), top_n: int = 50, spiking: int = 10, minute: int = 60,
                 hour: int = 3600, spike_hold_s: float = 3600.0, wall=time.monotonic):
        self.top = TopTags(frozenset(watch), top_n, spiking)
        self.minute, self.hour = minute, hour
        self.spike_hold_s, self.wall = float(spike_hold_s), wall
        self.minute_windows: dict[str, _TagWindow] = {}
        self.hour_windows: dict[str, _TagWindow] = {}
        # tag -> (score, event time detected, wall time raised)
        self.spikes: dict[str, tuple[float, float, float]] = {}
        self.clock = 0  # latest window end seen (event time): "the last hour" is relative to the data
        self._exported: set[str] = set()
        self.changed = False  # fed since the last export()

    def add_windows(self, rows: Iterable[WindowRow]) -> None:
        """Final window rows as stage 2 emits them (tuples, tagpulse.core.windows.WINDOW_ROW_FIELDS),
        the newest window per (tag, platform, size) only.

        A close emits 12 overlapping hour windows per key and many day windows; only the newest
        hour and minute window can change a gauge, so the others are skipped without a call each.
        """
        sizes = (self.minute, self.hour)
        rows = rows if isinstance(rows, list) else list(rows)
        # A close step's rows are of one window size, most often the day windows no gauge shows:
        # a look at the sizes in C skips such a batch without a Python step per row.
        if not any(size in sizes for size in set(map(itemgetter(ROW_SIZE), rows))):
            return
        newest: dict[tuple, tuple] = {}
        for row in rows:
            size = row[ROW_SIZE]
            if size in sizes:
                key = (row[ROW_TAG], row[ROW_PLATFORM], size)
                known = newest.get(key)
                if known is None or row[ROW_END] >= known[ROW_END]:
                    newest[key] = row
        for row in newest.values():
            self._set(row[ROW_TAG], row[ROW_PLATFORM], row[ROW_SIZE], row[ROW_END], row[ROW_POSTS], row[ROW_REACH],
                      row[ROW_IMPRESSIONS])

    def add_window(self, row: Mapping) -> None:
        """One final window row as a mapping of WINDOW_ROW_FIELDS (extra keys are ignored)."""
        self._set(str(row["tag"]), str(row["platform"]), int(row["window_size"]), int(row["window_end"]),
                  int(row["posts"]), int(row["potential_reach"]), int(row["impressions"]))

    def _set(self, tag: str, platform: str, size: int, end: int, posts: int, reach: int, impressions: int) -> None:
        self.changed = True
        if size == self.minute:
            table = self.minute_windows
        elif size == self.hour:
            table = self.hour_windows
        else:
            return
        self.clock = max(self.clock, end)
        current = table.get(tag)
        if current is None or end > current.end:
            current = table[tag] = _TagWindow(end)
        elif end < current.end:
            return  # an older window than the one we show
        current.by_platform[platform] = (posts, reach, impressions)

    def add_spike(self, tag: str, platform: str, score: float, detected_at: float) -> None:
        self.changed = True
        SPIKES.labels(platform=platform).inc()
        old = self.spikes.get(tag)
        if old is None or detected_at >= old[1]:
            self.spikes[tag] = (float(score), float(detected_at), self.wall())

    def _expire(self) -> None:
        horizon = self.clock - self.hour
        for table in (self.minute_windows, self.hour_windows):
            for tag in [t for t, w in table.items() if w.end <= horizon]:
                del table[tag]
        shown_since = self.wall() - self.spike_hold_s
        for tag in [t for t, (_, at, raised) in self.spikes.items() if at <= horizon and raised <= shown_since]:
            del self.spikes[tag]

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Gauge values per metric and exported tag (pure: what export() would write)."""
        self._expire()
        hour = {t: w.totals() for t, w in self.hour_windows.items()}
        minute = {t: w.totals()[0] for t, w in self.minute_windows.items()}
        scores = {t: s for t, (s, _, _) in self.spikes.items()}
        chosen = self.top.select({t: v[0] for t, v in hour.items()}, scores)
        return {
            "posts_per_minute": TopTags.fold(minute, chosen),
            "potential_reach_1h": TopTags.fold({t: v[1] for t, v in hour.items()}, chosen),
            "impressions_1h": TopTags.fold({t: v[2] for t, v in hour.items()}, chosen),
            # Summing scores of unrelated tags means nothing; "_other" shows the largest.
            "spike_score": TopTags.fold(scores, chosen, how="max"),
        }

    def export(self) -> None:
        self.changed = False
        snap = self.snapshot()
        gauges = {"posts_per_minute": TAG_POSTS_PER_MINUTE, "potential_reach_1h": TAG_POTENTIAL_REACH_1H,
                  "impressions_1h": TAG_IMPRESSIONS_1H, "spike_score": TAG_SPIKE_SCORE}
        labels = set(snap["posts_per_minute"])
        for key, gauge in gauges.items():
            for tag, value in snap[key].items():
                gauge.labels(tag=tag).set(value)
            for tag in self._exported - labels:
                try:
                    gauge.remove(tag)
                except KeyError:
                    pass
        self._exported = labels


# ----------------------------------------------------------------------------- the endpoint
def metrics_addr() -> str:
    """Interface to serve /metrics on: loopback unless the settings say otherwise (containers need 0.0.0.0)."""
    from tagpulse import config

    return getattr(config.load(), "metrics_addr", None) or "127.0.0.1"


def start_metrics_server(port: int = 0, addr: str | None = None) -> int:
    """Serve /metrics of the default registry on addr:port (0 = any free port); returns the bound port.

    Raises OSError when the port is taken, so callers can try the next one.
    """
    from prometheus_client import start_http_server

    addr = addr or metrics_addr()

    result = start_http_server(port, addr=addr)
    if isinstance(result, tuple):  # prometheus_client >= 0.20 returns (server, thread)
        return int(result[0].server_address[1])
    if port:
        return port
    raise RuntimeError("this prometheus_client cannot report the bound port; pass an explicit port")
