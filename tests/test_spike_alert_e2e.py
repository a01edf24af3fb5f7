"""Issue 7 end to end from a live worker: a spike reaches ClickHouse, Prometheus and an Alertmanager webhook.

`tagpulse simulate einbuchfuerkai` (the stream `tagpulse demo` replays) goes through the real producer into the
raw topic; the real worker detects spikes and the real sink stores them in chDB. A real Prometheus (our
prometheus.yml and rule files, 1 s intervals) scrapes the worker and the sink and evaluates ViralSpike; a real
Alertmanager (our alertmanager.yml) posts it to a webhook in this test. Everything Prometheus and the webhook
show is compared with the rows of tagpulse.spikes.
"""
from __future__ import annotations

import asyncio
import time
import urllib.request

import orjson
import pytest

import promkit
from conftest import free_port, free_port_block
from promkit import needs_alertmanager, needs_prometheus

pytestmark = [needs_prometheus, needs_alertmanager, pytest.mark.integration, pytest.mark.timeout(420)]

HOUR = 3600
CAMPAIGN = "einbuchfuerkai"


def campaign_keys(posts) -> tuple[set, set]:
    """(tag, platform) keys that the campaign's posts carry, and those fed only by flat background streams."""
    every, campaign = set(), set()
    for post in posts:
        keys = {(tag, post["platform"]) for tag in post["hashtags"]}
        every |= keys
        if {"einbuchfuerkai", "einbildfuerkai"} & set(post["hashtags"]):
            campaign |= keys
    return campaign, every - campaign


def worker_metrics_target(pipe, base: int) -> str:
    """host:port the worker serves /metrics on: its base port, or the next free one of base … base+3."""
    def serving():
        pipe.check_alive()
        for port in range(base, base + 4):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    if b"tagpulse_spikes_total" in r.read():
                        return f"127.0.0.1:{port}"
            except OSError:
                continue
        return None
    return promkit.wait_until(serving, "the worker to serve /metrics", timeout=120)


def value(prometheus, promql: str) -> dict[tuple, float]:
    return {tuple(sorted((k, v) for k, v in s["metric"].items() if k not in ("job", "instance", "__name__"))):
            float(s["value"][1]) for s in promkit.query(prometheus, promql)}


@pytest.fixture
def pipeline_settings(namespace_settings, monkeypatch):
    """The test's namespace with ports of its own for the worker's and the sink's endpoints."""
    from tagpulse import config

    monkeypatch.setenv("TAGPULSE_WORKER_METRICS_PORT", str(free_port_block(4)))
    monkeypatch.setenv("TAGPULSE_SINK_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("TAGPULSE_SQL_PORT", str(free_port()))
    return config.load()


def test_campaign_spike_reaches_clickhouse_prometheus_and_the_webhook(pipeline_settings, tmp_path):
    from producers.kafka_producer import produce_posts
    from producers.simulate import TAKEOFF, simulate_einbuchfuerkai
    from tagpulse import pipeline
    from tagpulse.commands.sql import run_query

    settings = pipeline_settings
    began = time.monotonic()
    posts = list(simulate_einbuchfuerkai(seed=0))
    campaign, flat = campaign_keys(posts)
    stops = []
    webhook = promkit.Webhook().start()
    stops.append(webhook.stop)
    pipe = pipeline.Pipeline(settings, tmp_path / "logs")
    stops.append(pipe.stop)
    try:
        alertmanager = promkit.start_alertmanager(tmp_path / "alertmanager", webhook.url)
        stops.append(alertmanager.stop)
        pipe.start_worker()
        pipe.start_sink()
        worker_target = worker_metrics_target(pipe, settings.worker_metrics_port)
        sink_target = f"127.0.0.1:{settings.sink_metrics_port}"
        prometheus = promkit.start_prometheus(
            tmp_path / "prometheus", {"tagpulse-worker": [worker_target], "tagpulse-sink": [sink_target]},
            alertmanager.base_url.removeprefix("http://"))
        stops.append(prometheus.stop)
        # Prometheus holds the spike counters at 0 before the first spike, so increase() can see it.
        promkit.wait_until(lambda: value(prometheus, 'tagpulse_spikes_total{platform="facebook"}')
                           == {(("platform", "facebook"),): 0.0}, "Prometheus to scrape the idle worker")

        asyncio.run(produce_posts(settings, posts))
        asyncio.run(pipeline.wait_until_final(settings, timeout=240, pipeline=pipe))

        # (a) ClickHouse: the spike rows the sink stored.
        body = run_query(settings, "SELECT tag, platform, window_size, toUnixTimestamp(detected_at) AS detected_at, "
                                   "observed, expected, score, method, reason FROM tagpulse.spikes "
                                   "ORDER BY detected_at, tag, platform", "JSONEachRow")
        spikes = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        keys = {(s["tag"], s["platform"]) for s in spikes}
        for platform in ("twitter", "facebook"):
            first = min(s["detected_at"] for s in spikes if (s["tag"], s["platform"]) == (CAMPAIGN, platform))
            assert TAKEOFF < first <= TAKEOFF + HOUR, (platform, first - TAKEOFF)
        ours = [s for s in spikes if s["tag"] == CAMPAIGN]
        assert all(s["window_size"] == HOUR and s["reason"].startswith(f"{s['observed']:,} posts by") for s in ours)
        # Flat background tags raise none; only keys the campaign's posts carry (its co-tags #buchtipp and
        # #Kinderbuch on twitter ride the same tweets) may spike, and instagram's 40 posts do not.
        assert len(flat) >= 8 and not keys & flat, keys & flat
        assert keys <= campaign and not [k for k in keys if k[1] == "instagram"]

        # (b) Prometheus: the worker's counter per platform equals the rows, the sink wrote them all, and the
        # tag's gauge holds the η of its latest spike. Nothing was retried, so the at-least-once counters are exact.
        by_platform = {}
        for s in spikes:
            by_platform[s["platform"]] = by_platform.get(s["platform"], 0) + 1
        promkit.wait_until(lambda: {dict(k)["platform"]: v for k, v in value(
            prometheus, "sum by (platform) (tagpulse_spikes_total) > 0").items()} == by_platform,
            f"Prometheus to count the spikes {by_platform}")
        increase = value(prometheus, 'increase(tagpulse_spikes_total{platform="facebook"}[10m])')
        assert increase[(("platform", "facebook"),)] > 0, "the first spike of a platform is an increase"
        promkit.wait_until(lambda: value(prometheus, 'tagpulse_sink_rows_total{table="spikes"}')
                           == {(("table", "spikes"),): float(len(spikes))}, "the sink's spike rows in Prometheus")
        latest = {}
        for s in spikes:
            latest[s["tag"]] = s["score"]   # rows are in detection order
        gauges = promkit.wait_until(lambda: (lambda g: g if set(g) == set(latest) else None)(
            {dict(k)["tag"]: v for k, v in value(prometheus, 'tagpulse_tag_spike_score{tag!="_other"} > 0').items()}),
            "Prometheus to show every spiking tag's score")
        assert gauges == pytest.approx(latest)

        # (c) The shipped rules fire ViralSpike; Alertmanager posts it, per tag, saying why.
        def delivered():
            alerts = [a for a in webhook.alerts() if a["labels"].get("alertname") == "ViralSpike"
                      and a["status"] == "firing"]
            return alerts if {a["labels"]["tag"] for a in alerts} >= set(latest) else None

        alerts = promkit.wait_until(delivered, f"ViralSpike for {sorted(latest)} at the webhook", timeout=120)
        assert {a["labels"]["tag"] for a in alerts} == set(latest)
        alert = next(a for a in alerts if a["labels"]["tag"] == CAMPAIGN)
        assert alert["labels"]["severity"] == "info"
        assert f"η = {latest[CAMPAIGN]:.2f}" in alert["annotations"]["summary"]
        why = alert["annotations"]["description"]
        assert "above its own baseline" in why and "distinct authors" in why
        assert f"FROM tagpulse.spikes WHERE tag = '{CAMPAIGN}'" in why
    finally:
        for stop in reversed(stops):
            stop()
    print(f"end to end in {time.monotonic() - began:.0f}s: {len(posts)} deliveries, spikes {sorted(keys)}")
