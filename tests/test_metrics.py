"""tagpulse.metrics: naming rules, bounded labels, the top-tags selection and the /metrics endpoint."""
from __future__ import annotations

import re
import urllib.request

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tagpulse import metrics
from tagpulse.core.windows import WINDOW_ROW_FIELDS, window_row_tuple
from tagpulse.metrics import OTHER_TAG, TagGauges, TopTags, reason_label


def _ours():
    metrics.sink_metrics()
    return [c for c in REGISTRY._names_to_collectors.values()  # noqa: SLF001
            if getattr(c, "_name", "").startswith("tagpulse_")]


def test_names_follow_prometheus_practice():
    seen = set()
    for collector in _ours():
        name, kind = collector._name, collector._type
        if name in seen:
            continue
        seen.add(name)
        assert re.fullmatch(r"tagpulse_[a-z0-9_]+", name), name
        if kind == "counter":
            # prometheus_client strips _total from the stored name and adds it on exposition.
            assert not name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
        for unit in ("_ms", "_milliseconds", "_minutes", "_bytes_kb"):
            assert not name.endswith(unit), f"{name}: use base units"
        for label in collector._labelnames:
            assert label not in {"text", "author_id", "author_handle", "post_id", "user"}, (name, label)
    for required in ("tagpulse_posts_in", "tagpulse_duplicates", "tagpulse_late_events", "tagpulse_invalid",
                     "tagpulse_dead_letters", "tagpulse_watermark_lag_seconds", "tagpulse_consumer_lag",
                     "tagpulse_window_close_latency_seconds", "tagpulse_sink_batch_rows",
                     "tagpulse_sink_batch_seconds", "tagpulse_sink_errors", "tagpulse_state_entries",
                     "tagpulse_transactions", "tagpulse_tag_posts_per_minute", "tagpulse_tag_potential_reach_1h",
                     "tagpulse_tag_impressions_1h", "tagpulse_tag_spike_score", "tagpulse_spikes"):
        assert required in seen, required


def test_every_metric_is_documented_in_the_table():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    for collector in _ours():
        exposed = collector._name + ("_total" if collector._type == "counter" else "")
        assert f"`{exposed}" in doc, f"{exposed} missing from docs/metrics.md"


def test_invalid_reasons_are_bounded_and_stripped_of_details():
    seen: set[str] = set()
    assert reason_label("missing field: 'author_id' at line 3", seen) == "missing_field"
    assert reason_label("Missing field: 'x'", seen) == "missing_field"
    labels = {reason_label(f"reason{i}: detail", seen, limit=5) for i in range(100)}
    assert len(seen) == 5
    assert "other" in labels and len(labels) == 5
    assert reason_label("", set()) == "unknown"


def test_top_tags_watch_list_top_n_and_spiking():
    top = TopTags(watch=frozenset({"watched"}), n=2, spiking=1)
    posts = {"a": 10, "b": 30, "c": 20, "d": 0, "watched": 0}
    assert top.select(posts) == {"watched", "b", "c"}
    assert top.select(posts, {"d": 3.0, "a": 1.0}) == {"watched", "b", "c", "d"}
    # Ties are broken by name: the selection is stable.
    assert TopTags(n=1).select({"y": 5, "x": 5}) == {"x"}


def test_fold_sums_the_rest_under_other():
    folded = TopTags.fold({"a": 1, "b": 2, "c": 3}, {"a", "z"})
    assert folded == {"a": 1.0, "z": 0.0, OTHER_TAG: 5.0}
    assert TopTags.fold({"a": 1, "b": 7, "c": 3}, {"a"}, how="max")[OTHER_TAG] == 7.0
    assert TopTags.fold({}, set()) == {OTHER_TAG: 0.0}


def _row(tag, platform, size, end, posts, reach, impressions):
    return {"tag": tag, "platform": platform, "window_size": size, "window_start": end - size, "window_end": end,
            "posts": posts, "potential_reach": reach, "impressions": impressions}


def test_tag_gauges_snapshot_bounds_labels_and_expires():
    wall = [1000.0]
    g = TagGauges(watch={"kai"}, top_n=1, wall=lambda: wall[0])
    g.add_window(_row("big", "mastodon", 3600, 7200, 100, 1000, 5000))
    g.add_window(_row("big", "bluesky", 3600, 7200, 50, 10, 20))
    g.add_window(_row("small", "mastodon", 3600, 7200, 3, 30, 40))
    g.add_window(_row("big", "mastodon", 60, 7200, 4, 1, 1))
    g.add_window(_row("big", "mastodon", 3600, 6900, 999, 999, 999))  # older than the one shown: ignored
    snap = g.snapshot()
    assert snap["impressions_1h"] == {"big": 5020.0, "kai": 0.0, OTHER_TAG: 40.0}
    assert snap["potential_reach_1h"]["big"] == 1010.0
    assert snap["posts_per_minute"] == {"big": 4.0, "kai": 0.0, OTHER_TAG: 0.0}
    g.add_spike("small", "mastodon", 2.5, detected_at=7200)
    assert g.snapshot()["spike_score"]["small"] == 2.5  # a spiking tag gets its own label
    # An hour later (event time) every window above has expired …
    g.add_window(_row("late", "mastodon", 3600, 7200 + 3600, 1, 1, 1))
    snap = g.snapshot()
    assert set(snap["impressions_1h"]) == {"late", "kai", "small", OTHER_TAG}
    # … but the spike stays until it has also been shown for an hour of wall time (a replay runs
    # hours of event time per second; Prometheus must get to scrape it).
    assert snap["spike_score"]["small"] == 2.5
    wall[0] += 3599
    assert g.snapshot()["spike_score"]["small"] == 2.5
    wall[0] += 1
    snap = g.snapshot()
    assert set(snap["impressions_1h"]) == {"late", "kai", OTHER_TAG}
    assert snap["spike_score"]["late"] == 0.0


def _as_tuple(row: dict) -> tuple:
    """A row as stage 2 emits it (fields the gauges do not read are zero)."""
    return window_row_tuple({**dict.fromkeys(WINDOW_ROW_FIELDS, 0), **row})


def test_tag_gauges_batch_feed_equals_row_by_row():
    """add_windows (stage 2's row tuples) keeps only the newest window per key: the gauges must not notice."""
    import random

    rnd = random.Random(5)
    rows = [_row(f"t{rnd.randrange(6)}", rnd.choice(["mastodon", "bluesky"]), rnd.choice([60, 3600, 86400]),
                 300 * rnd.randrange(30, 60), rnd.randrange(50), rnd.randrange(500), rnd.randrange(900))
            for _ in range(400)]
    one, batch = TagGauges(top_n=3), TagGauges(top_n=3)
    for i in range(0, len(rows), 100):
        for row in rows[i:i + 100]:
            one.add_window(row)
        batch.add_windows([_as_tuple(row) for row in rows[i:i + 100]])
        assert batch.snapshot() == one.snapshot()
    assert one.snapshot()["posts_per_minute"]


def test_spike_score_live_leaves_after_an_hour_of_event_time():
    """Live data: an hour of wall time has passed by the time event time moved an hour on."""
    wall = [0.0]
    g = TagGauges(top_n=0, wall=lambda: wall[0])
    g.add_window(_row("kai", "twitter", 3600, 7200, 40, 1, 1))
    g.add_spike("kai", "twitter", 3.5, detected_at=7200)
    wall[0] = 1800.0
    g.add_window(_row("other", "twitter", 3600, 7200 + 1800, 1, 1, 1))
    assert g.snapshot()["spike_score"]["kai"] == 3.5
    wall[0] = 3600.0
    g.add_window(_row("other", "twitter", 3600, 7200 + 3600, 1, 1, 1))
    assert "kai" not in g.snapshot()["spike_score"]


def test_spike_counter_starts_at_zero_for_every_platform(tmp_path):
    """increase() needs a sample before the first spike, so the counter is exported at 0 up front."""
    metrics.init_spike_counters({"mastodon", "bluesky"})
    port = metrics.start_metrics_server(0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'tagpulse_spikes_total{platform="mastodon"}' in body
    assert 'tagpulse_spikes_total{platform="bluesky"}' in body


def test_endpoint_serves_the_exported_tags(tmp_path):
    g = TagGauges(watch={"einbuchfuerkai"}, top_n=1)
    g.add_window(_row("kaitest", "mastodon", 3600, 3600, 7, 70, 700))
    g.add_window(_row("rest1", "mastodon", 3600, 3600, 1, 10, 100))
    g.add_window(_row("rest2", "mastodon", 3600, 3600, 1, 10, 200))
    g.export()
    metrics.count_invalid("bad json: line 1")
    port = metrics.start_metrics_server(0)
    assert port > 0
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    values = {s.labels["tag"]: s.value for s in families["tagpulse_tag_impressions_1h"].samples}
    assert values["kaitest"] == 700 and values[OTHER_TAG] == 300 and values["einbuchfuerkai"] == 0
    assert "rest1" not in values
    invalid = {s.labels["reason"] for s in families["tagpulse_invalid"].samples if s.name.endswith("_total")}
    assert "bad_json" in invalid
    assert "process_cpu_seconds" in families or "process_cpu_seconds_total" in body
    # A tag that drops out of the selection disappears from the endpoint.
    g.top = TopTags(frozenset({"einbuchfuerkai"}), 0)
    g.export()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'tagpulse_tag_impressions_1h{tag="kaitest"}' not in body
