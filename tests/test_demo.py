"""`tagpulse demo` end to end: real Kafka, the worker, the sink, chDB — the seed campaign's figures."""
import re

import pytest

pytestmark = pytest.mark.integration


def figure(stdout: str, label: str) -> str:
    line = next(line for line in stdout.splitlines() if label in line)
    return line.split("->")[-1].strip()


def test_demo_prints_the_seed_campaign_figures(demo_run):
    _, stdout = demo_run
    assert "#einbuchfuerkai" in stdout
    shares = int(figure(stdout, "facebook shares").replace(",", ""))
    impressions = float(figure(stdout, "twitter impressions by 2015-05-22 12:50").split()[0])
    instagram = int(figure(stdout, "instagram posts").replace(",", ""))
    assert abs(shares - 12_800) <= 128
    assert abs(impressions - 14.8) <= 0.15
    assert abs(instagram - 40) <= 4
    # The report's per-platform totals come from the same exact tables.
    assert re.search(r"^facebook\s+12,8\d\d\s+12,8\d\d", stdout, re.M)


def test_demo_windows_are_exact_and_unique(demo_db):
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=demo_db)
    try:
        dupes = client.query("SELECT count() FROM (SELECT tag, platform, window_size, window_start, count() c "
                             "FROM tagpulse.reach_windows GROUP BY ALL HAVING c > 1)").result_rows[0][0]
        assert dupes == 0
        # 1-minute tumbling windows partition the posts: their sum equals the posts table, per platform.
        by_windows = dict(client.query(
            "SELECT platform, sum(posts) FROM tagpulse.reach_windows "
            "WHERE tag = 'einbuchfuerkai' AND window_size = 60 GROUP BY platform").result_rows)
        by_posts = dict(client.query(
            "SELECT platform, count() FROM tagpulse.posts WHERE has(hashtags, 'einbuchfuerkai') "
            "AND post_id NOT LIKE 'demo-straggler-%' GROUP BY platform").result_rows)
        assert by_windows == by_posts and by_posts["facebook"] > 12_000
        # The replay's disorder stays within the grace period: only the demo's three deliberate
        # stragglers (days behind the watermark) are late, in each of their 1 + 12 + 24 windows per tag.
        late = client.query("SELECT tag, sum(events) FROM tagpulse.late_events GROUP BY tag ORDER BY tag")
        assert late.result_rows == [("einbuchfuerkai", 3 * 37), ("lesen", 3 * 37)]
        stored = client.query("SELECT count() FROM tagpulse.posts WHERE post_id LIKE 'demo-straggler-%'")
        assert stored.result_rows[0][0] == 3
        dead = client.query("SELECT count() FROM tagpulse.dead_letters").result_rows[0][0]
        assert dead == 3
    finally:
        client.close()


def test_a_second_demo_run_prints_the_same_report(demo_run):
    from conftest import DEMO_RUNS

    first, second, second_log = DEMO_RUNS[0]
    assert "was replayed into namespace" in second_log
    # Everything but run times: the same figures, the same late posts, the same spikes.
    strip = [line for line in first.splitlines() if "after" not in line.lower() or "late" in line.lower()]
    again = [line for line in second.splitlines() if "after" not in line.lower() or "late" in line.lower()]
    assert again == strip
