"""Grafana without Grafana: dashboards validated against Grafana's dashboard model (grafana-foundation-sdk), and
every panel, variable and annotation query executed against a real Prometheus and chDB (tests/grafana_queries.py).

The SQL runs on chDB with the real DDL (sinks/sql) and a small fixture of the #einBuchfuerKai campaign; the
PromQL on a real Prometheus scraping a process that exports tagpulse's metrics. For demo data use
`python tests/grafana_queries.py --help`.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

import grafana_queries as gq
import promkit

REPO = Path(__file__).resolve().parents[1]
PROVISIONING = REPO / "grafana" / "provisioning"
DASHBOARDS = gq.load_dashboards()
DATASOURCES = gq.load_datasources()


# ----------------------------------------------------------------------------- structure
def test_provisioning_files():
    ds = [d for p in (PROVISIONING / "datasources").glob("*.yml") for d in yaml.safe_load(p.read_text())["datasources"]]
    by_type = {d["type"]: d for d in ds}
    assert by_type["prometheus"]["uid"] == "tagpulse-prometheus"
    clickhouse = by_type["grafana-clickhouse-datasource"]
    assert clickhouse["uid"] == "tagpulse-clickhouse"
    assert clickhouse["jsonData"]["defaultDatabase"] == "tagpulse"
    providers = [p for f in (PROVISIONING / "dashboards").glob("*.yml") for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers and all(p["type"] == "file" and p["options"]["path"] for p in providers)


def test_the_three_dashboards_exist():
    titles = {d["title"] for d in DASHBOARDS.values()}
    assert titles == {"tagpulse / Pipeline health", "tagpulse / Hashtag reach", "tagpulse / Spikes"}
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


def _panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    d = DASHBOARDS[name]
    for key in ("uid", "title", "panels", "schemaVersion", "templating", "annotations", "time"):
        assert key in d, f"{name}: missing {key}"
    ids, cells = set(), set()
    for panel in _panels(d):
        where = f"{name}: panel {panel.get('title')!r}"
        assert panel["id"] not in ids, f"{where}: duplicate id"
        ids.add(panel["id"])
        g = panel["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in "xywh") and g["w"] > 0 and g["h"] > 0, where
        assert g["x"] + g["w"] <= 24, f"{where}: wider than the 24-column grid"
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), f"{where}: overlaps another panel"
        cells |= mine
        if panel["type"] in ("row", "text"):
            continue
        assert panel.get("targets"), f"{where}: no queries"
        assert panel["datasource"]["uid"] in DATASOURCES, f"{where}: unknown datasource"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refId"
        for t in panel["targets"]:
            uid = (t.get("datasource") or panel["datasource"])["uid"]
            assert uid in DATASOURCES, f"{where}: target datasource {uid} not provisioned"
            text = t.get("expr") if DATASOURCES[uid] == "prometheus" else t.get("rawSql")
            assert text and text.strip(), f"{where}: empty query"
    for var in d["templating"]["list"]:
        assert var["datasource"]["uid"] in DATASOURCES and var["query"], f"{name}: variable {var['name']}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_round_trips_through_grafanas_model(name):
    """grafana-foundation-sdk's Dashboard model (generated from Grafana's schema) decodes every panel type and
    keeps every key we wrote: a misspelt or unknown key would be dropped on the way back."""
    sdk = pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk (test extra)")
    from grafana_foundation_sdk.cog import plugins, runtime
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard
    assert sdk
    plugins.register_default_plugins()
    d = DASHBOARDS[name]
    back = json.loads(json.dumps(Dashboard.from_json(d), cls=JSONEncoder))
    assert set(d) <= set(back), set(d) - set(back)
    for ours, theirs in zip(d["panels"], back["panels"]):
        where = f"{name}: {ours['title']!r}"
        assert ours["type"] == "row" or runtime.panelcfg_config(ours["type"]) is not None, f"{where}: unknown type"
        assert set(ours) <= set(theirs), f"{where}: keys unknown to Grafana's model: {set(ours) - set(theirs)}"
        assert theirs["gridPos"] == ours["gridPos"]
        for t_ours, t_theirs in zip(ours["targets"], theirs["targets"]):
            assert set(t_ours) <= set(t_theirs), f"{where}: target keys lost {set(t_ours) - set(t_theirs)}"
    assert len(back["templating"].get("list", [])) == len(d["templating"]["list"])


# ----------------------------------------------------------------------------- substitution (pure)
def test_macros_and_variables_are_substituted():
    tr = gq.TimeRange(1432080000, 1432339200, interval_s=300, rate_interval="2m")
    text = gq.substitute_variables("tag = '${tag}' AND platform IN (${platform:singlequote}) AND $__conditionalAll(x IN ($platform), $platform)",
                                   {"tag": ["kai"], "platform": ["twitter", "o'brien"]}, {"platform"})
    assert text == "tag = 'kai' AND platform IN ('twitter','o\\'brien') AND 1=1"
    sql = gq.substitute_sql("SELECT $__timeInterval(t) FROM x WHERE $__timeFilter(toDateTime(t)) LIMIT $__interval_s", tr)
    assert sql == ("SELECT toStartOfInterval(toDateTime(t), INTERVAL 300 second) FROM x WHERE toDateTime(t) >= "
                   "toDateTime(1432080000) AND toDateTime(t) <= toDateTime(1432339200) LIMIT 300")
    assert gq.substitute_promql("rate(x[$__rate_interval]) + increase(y[$__range])", tr) == \
        "rate(x[2m]) + increase(y[259200s])"
    with pytest.raises(ValueError, match="unresolved"):
        gq.substitute_sql("SELECT $nosuchvar", tr)


# ----------------------------------------------------------------------------- live queries
def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def _fixture_rows():
    """A small slice of the #einBuchfuerKai campaign plus a background tag, in every table."""
    posts, windows, late, spikes = [], [], [], []
    base = _ts("2015-05-21T08:00:00")
    for i in range(30):
        platform = ("facebook", "twitter", "instagram")[i % 3]
        t = base + 97 * i
        posts.append((platform, f"p{i}", f"a{i % 11}", f"@fan{i % 11}", 100 + 37 * i, t, "de",
                      "#einBuchfuerKai kauft das Buch", ["einbuchfuerkai"] + (["kai"] if i % 4 == 0 else []),
                      i % 2 == 1, "p0" if i % 2 else "", i, 0, 0, 0, t + 1))
    posts.append(("mastodon", "m1", "b1", "@barista", 80, base + 60, "de", "#kaffee", ["kaffee"], False, "",
                  1, 0, 0, 0, base + 61))
    for tag, platforms, scale in (("einbuchfuerkai", ("facebook", "twitter", "instagram"), 10), ("kaffee", ("mastodon",), 1)):
        for platform in platforms:
            for m in range(0, 180, 1):
                start = base + 60 * m
                windows.append((tag, platform, 60, start, start + 60, scale, scale // 2, scale - scale // 2,
                                max(1, scale - 1), 1000 * scale, 1200 * scale, 5 * scale, start + 70))
            for m in range(0, 180, 5):
                start = base + 60 * m - 3300
                windows.append((tag, platform, 3600, start, start + 3600, 60 * scale, 30 * scale, 30 * scale,
                                50 * scale, 60000 * scale, 72000 * scale, 300 * scale, start + 3610))
            late.append((tag, platform, 60, base + 600, 2))
    spikes.append(("einbuchfuerkai", "facebook", 3600, base, base + 3600, 600, 40.5, 6.3, "poisson+authors",
                   "600 posts where 40.5 were expected; 540 authors where 35 were expected"))
    return posts, windows, late, spikes


@pytest.fixture(scope="module")
def chdb_client(tmp_path_factory):
    from sinks.clickhouse import apply_migrations, connect
    client = connect(f"chdb://{tmp_path_factory.mktemp('grafana-chdb') / 'db'}")
    apply_migrations(client)
    posts, windows, late, spikes = _fixture_rows()
    to_dt = lambda t: datetime.fromtimestamp(t, timezone.utc)  # noqa: E731
    client.insert("tagpulse.posts", [(*r[:5], to_dt(r[5]), *r[6:15], to_dt(r[15])) for r in posts],
                  column_names=["platform", "post_id", "author_id", "author_handle", "author_followers", "created_at",
                                "lang", "text", "hashtags", "is_share", "original_post_id", "likes", "shares",
                                "replies", "quotes", "ingested_at"])
    client.insert("tagpulse.reach_windows",
                  [(*r[:3], to_dt(r[3]), to_dt(r[4]), *r[5:12], to_dt(r[12])) for r in windows],
                  column_names=["tag", "platform", "window_size", "window_start", "window_end", "posts", "originals",
                                "shares", "unique_authors", "potential_reach", "impressions", "engagement",
                                "closed_at"])
    client.insert("tagpulse.late_events", [(*r[:3], to_dt(r[3]), r[4]) for r in late],
                  column_names=["tag", "platform", "window_size", "window_start", "events"])
    client.insert("tagpulse.spikes", [(*r[:3], to_dt(r[3]), to_dt(r[4]), *r[5:]) for r in spikes],
                  column_names=["tag", "platform", "window_size", "window_start", "detected_at", "observed",
                                "expected", "score", "method", "reason"])
    client.insert("tagpulse.dead_letters", [("worker", "bad json", "{", 1, "tagpulse.posts.raw/0/7", to_dt(base_t()))],
                  column_names=["stage", "reason", "raw", "raw_bytes", "source", "at"])
    yield client
    client.close()


def base_t() -> int:
    return _ts("2015-05-21T08:00:00")


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory):
    if promkit.PROMETHEUS is None:
        pytest.skip("prometheus binary not installed (apt-get install prometheus; CI installs it)")
    tmp = tmp_path_factory.mktemp("grafana-prom")
    exporter, target = promkit.start_exporter(tmp / "exporter", mode="live")
    prometheus = None
    try:
        prometheus = promkit.start_prometheus(tmp / "prometheus", {"tagpulse-worker": [target]})
        promkit.wait_for_scrape(prometheus, "tagpulse-worker")
        # rate() and histogram_quantile() need two scrapes that saw the counters move.
        promkit.wait_until(lambda: promkit.query(
            prometheus, "count_over_time(tagpulse_transactions_total[1m]) >= 4"), "four scrapes of moving counters")
        yield prometheus
    finally:
        if prometheus:
            prometheus.stop()
        promkit.stop_process(exporter)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_every_panel_query_returns_data(chdb_client, live_prometheus):
    sql_tr = gq.TimeRange(_ts("2015-05-20T00:00:00"), _ts("2015-05-23T00:00:00"), interval_s=300)
    # 1 s steps up to just past now: the data is only seconds old, so the last steps are the ones that have it.
    now = int(time.time()) + 1
    prom_tr = gq.TimeRange(now - 30, now, interval_s=1, rate_interval="1m")
    runner = gq.SplitRunner(live_prometheus.base_url, chdb_client, sql_tr, prom_tr)
    outcomes = []
    for name, dashboard in DASHBOARDS.items():
        outcomes += gq.run_dashboard(name, dashboard, runner, DATASOURCES)
    kinds = {(o.query.kind, o.query.where.split()[0]) for o in outcomes}
    assert {("sql", "panel"), ("promql", "panel"), ("sql", "variable"), ("sql", "annotation")} <= kinds
    failed = [o for o in outcomes if not o.ok]
    assert not failed, "\n" + gq.report(failed) + "\n\nrendered:\n" + "\n".join(o.rendered for o in failed)
    # The variables resolved to the fixture's values, not to something accidental.
    reach = {o.query.where: o for o in outcomes if o.query.dashboard == "hashtag-reach"}
    assert reach["variable tag"].sample[0] == "einbuchfuerkai"
    assert set(reach["variable platform"].sample) <= {"facebook", "instagram", "mastodon", "twitter"}


@pytest.mark.integration
def test_a_broken_query_is_reported(chdb_client):
    """The harness can fail: a query against a column that does not exist is an error, not 'no data'."""
    runner = gq.Runner(None, chdb_client, gq.TimeRange(0, 1))
    query = gq.Query("x", "panel 'broken' A", "sql", "SELECT nosuchcolumn FROM tagpulse.spikes WHERE $__timeFilter(detected_at)")
    outcome = gq.run_dashboard("x", {"panels": [{"title": "broken", "targets": [
        {"refId": "A", "datasource": {"uid": "tagpulse-clickhouse"}, "rawSql": query.text}]}]}, runner, DATASOURCES)[0]
    assert not outcome.ok and "nosuchcolumn" in outcome.error.lower()
    empty = gq.run_dashboard("x", {"panels": [{"title": "empty", "targets": [
        {"refId": "A", "datasource": {"uid": "tagpulse-clickhouse"},
         "rawSql": "SELECT tag FROM tagpulse.spikes WHERE tag = 'never'"}]}]}, runner, DATASOURCES)[0]
    assert empty.error is None and not empty.ok


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_every_panel_query_returns_data_on_the_demo_database(demo_db, live_prometheus):
    """The same harness, in its own process (one chDB directory per process), on what `tagpulse demo` stored."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("grafana_queries.py")),
         "--prometheus", live_prometheus.base_url, "--clickhouse", demo_db,
         "--from", "2015-05-20T00:00:00Z", "--to", "2015-05-24T00:00:00Z", "--prom-window", "120"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
