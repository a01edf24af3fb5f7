"""Completeness per source and window: the table, its views, the report section, and the sink path.

The worker emits JSON arrays of {platform, window_start, received, duplicates, late, invalid} on
<ns>.completeness; one (platform, window_start) may repeat across messages and must be summed.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import analyst_dataset
from sinks import clickhouse as ch
from sinks.report import Completeness, build_report, render_text

REPO = Path(__file__).resolve().parents[1]
T0 = 1432112400  # 2015-05-20 09:00:00 UTC


# ----------------------------------------------------------------------------- pure
def test_rates_are_shares_of_received_and_never_divide_by_zero():
    c = Completeness("twitter", received=200, duplicates=10, late=4, invalid=0)
    assert (c.duplicate_rate, c.late_rate, c.invalid_rate) == (0.05, 0.02, 0.0)
    unknown = Completeness("unknown", received=0, duplicates=0, late=0, invalid=7)
    assert (unknown.duplicate_rate, unknown.late_rate, unknown.invalid_rate) == (0.0, 0.0, 1.0)


def test_table_spec_reads_the_worker_rows():
    spec = ch.TABLES["completeness"]
    assert spec.topic_attr == "completeness"
    body = orjson.dumps([{"platform": "x", "window_start": 60, "received": 1, "duplicates": 0, "late": 0,
                          "invalid": 0}] * 3)
    assert ch.count_rows(spec, body) == 3
    assert "INSERT INTO tagpulse.completeness" in spec.insert_sql("t")


def report_rows() -> dict[str, list[dict]]:
    return {
        "platforms": [{"platform": "twitter", "posts": 9, "shares": 0, "unique_authors": 9, "potential_reach": 90,
                       "impressions": 90, "engagement": 0, "first_seen": T0, "last_seen": T0 + 3599}],
        "buckets": [{"platform": "twitter", "bucket": T0, "posts": 9, "shares": 0, "impressions": 90}],
        "completeness": [{"platform": "twitter", "received": "100", "duplicates": "8", "late": "2", "invalid": "0"},
                         {"platform": "unknown", "received": 0, "duplicates": 0, "late": 0, "invalid": 5}],
        "completeness_buckets": [{"platform": "twitter", "bucket": T0, "received": 100, "duplicates": 8, "late": 2},
                                 {"platform": "twitter", "bucket": T0 + 86400 * 400, "received": 1,
                                  "duplicates": 1, "late": 0}],
        "spikes": [{"platform": "twitter", "window_size": 3600, "start": T0, "detected_at": T0 + 3600,
                    "observed": 9, "expected": 1.5, "score": 3.2, "method": "poisson", "reason": "9 vs 1.5",
                    "received": 100, "duplicates": 50, "late": 0}],
    }


def test_report_model_and_text_carry_completeness():
    report = build_report("kai", "kai", None, None, 3600, report_rows())
    by = {c.platform: c for c in report.completeness}
    assert list(by) == ["twitter", "unknown", "all"]
    assert by["all"].received == 100 and by["all"].invalid == 5
    assert by["all"].invalid_rate == pytest.approx(5 / 105)
    assert by["twitter"].duplicate_rate == pytest.approx(0.08)
    # Only buckets within the tag's span: other tags' data far away must not stretch the time axis.
    assert [(b.start, b.duplicate_rate) for b in report.completeness_buckets] == [(T0, pytest.approx(0.08))]
    assert report.spikes[0].duplicate_rate == 0.5
    text = render_text(report)
    assert "Completeness of the sources" in text and "8.00%" in text and "100.00%" in text
    assert "Spikes (from tagpulse.spikes" in text and "50.00%" in text


# ----------------------------------------------------------------------------- ClickHouse (own small database)
MESSAGES = [  # (partition, offset, rows): the key (twitter, T0) arrives in three messages
    (0, 0, [{"platform": "twitter", "window_start": T0, "received": 10, "duplicates": 1, "late": 0, "invalid": 0},
            {"platform": "facebook", "window_start": T0, "received": 4, "duplicates": 0, "late": 1, "invalid": 0}]),
    (0, 1, [{"platform": "twitter", "window_start": T0, "received": 5, "duplicates": 2, "late": 1, "invalid": 0}]),
    (1, 0, [{"platform": "twitter", "window_start": T0, "received": 5, "duplicates": 0, "late": 0, "invalid": 0},
            {"platform": "twitter", "window_start": T0 + 60, "received": 3, "duplicates": 3, "late": 0, "invalid": 0},
            {"platform": "unknown", "window_start": T0 + 120, "received": 0, "duplicates": 0, "late": 0,
             "invalid": 2}]),
]
WINDOWS = [{"tag": "kai", "platform": "twitter", "window_size": 60, "window_start": T0, "window_end": T0 + 60,
            "posts": 17, "originals": 17, "shares": 0, "unique_authors": 9, "potential_reach": 9,
            "impressions": 9, "engagement": 0, "closed_at": T0 + 75.0}]
SPIKES = [{"tag": "kai", "platform": "twitter", "window_size": 120, "window_start": T0, "detected_at": T0 + 120,
           "observed": 17, "expected": 2.0, "score": 3.0, "method": "poisson", "reason": "17 vs 2"}]

LOAD = """
import sys, orjson
from sinks import clickhouse as ch
url, messages, windows, spikes = sys.argv[1], *map(orjson.loads, sys.argv[2:])
client = ch.connect(url)
ch.apply_migrations(client)
ch.insert_messages(client, url, "completeness", [(p, o, orjson.dumps(rows)) for p, o, rows in messages])
ch.insert_messages(client, url, "reach_windows", [(0, 0, orjson.dumps(windows))])
ch.insert_messages(client, url, "spikes", [(0, 0, orjson.dumps(spikes))])
"""

QUERY = """
import sys, orjson
from sinks import clickhouse as ch
client = ch.connect(sys.argv[1], readonly=True)
out = [client.raw_query(q, fmt="JSONEachRow").decode() for q in orjson.loads(sys.argv[2])]
sys.stdout.write(orjson.dumps([[orjson.loads(l) for l in o.splitlines() if l] for o in out]).decode())
"""


def query(url: str, *sqls: str) -> list[list[dict]]:
    result = subprocess.run([sys.executable, "-c", QUERY, url, orjson.dumps(list(sqls)).decode()], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def completeness_db(tmp_path_factory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('completeness') / 'clickhouse'}"
    subprocess.run([sys.executable, "-c", LOAD, url, *(orjson.dumps(x).decode() for x in (MESSAGES, WINDOWS, SPIKES))],
                   cwd=REPO, check=True, timeout=120)
    return url


def expected_sums() -> dict[tuple[str, int], list[int]]:
    sums: dict[tuple[str, int], list[int]] = {}
    for _, _, rows in MESSAGES:
        for r in rows:
            acc = sums.setdefault((r["platform"], r["window_start"]), [0, 0, 0, 0])
            for i, k in enumerate(("received", "duplicates", "late", "invalid")):
                acc[i] += r[k]
    return sums


def test_repeated_keys_are_stored_once_per_message_and_summed_by_the_view(completeness_db):
    raw, view = query(completeness_db,
                      "SELECT count() AS n FROM tagpulse.completeness",
                      "SELECT platform, toUnixTimestamp(window_start) AS t, received, duplicates, late, invalid, "
                      "duplicate_rate, late_rate, invalid_rate FROM tagpulse.source_completeness")
    assert raw[0]["n"] == sum(len(rows) for _, _, rows in MESSAGES)
    got = {(r["platform"], r["t"]): [r["received"], r["duplicates"], r["late"], r["invalid"]] for r in view}
    assert got == expected_sums()
    rates = {(r["platform"], r["t"]): (r["duplicate_rate"], r["late_rate"], r["invalid_rate"]) for r in view}
    assert rates[("twitter", T0)] == pytest.approx((3 / 20, 1 / 20, 0))
    assert rates[("unknown", T0 + 120)] == (0, 0, 1)


def test_tag_and_spike_views_join_the_sources_figures(completeness_db):
    tag, spikes = query(completeness_db, "SELECT * FROM tagpulse.tag_completeness WHERE tag = 'kai'",
                        "SELECT * FROM tagpulse.spike_completeness WHERE tag = 'kai'")
    assert [(r["posts"], r["source_received"], r["source_duplicates"]) for r in tag] == [(17, 20, 3)]
    # The spike's window covers two minutes: 20 + 3 received, 3 + 3 duplicates.
    assert [(r["source_received"], r["source_duplicates"]) for r in spikes] == [(23, 6)]
    assert spikes[0]["duplicate_rate"] == pytest.approx(6 / 23)


# ----------------------------------------------------------------------------- the campaign database
@pytest.fixture(scope="module")
def analyst_db(tmp_path_factory) -> str:
    return analyst_dataset.analyst_db_url(tmp_path_factory)


def test_report_completeness_matches_the_table(analyst_db):
    env = dict(os.environ, TAGPULSE_CLICKHOUSE=analyst_db, TAGPULSE_SQL_PORT="1")
    result = subprocess.run([sys.executable, "-m", "tagpulse.cli", "report", "#einBuchfürKai", "--json"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    (table,) = query(analyst_db, """
        SELECT platform, sum(received) AS received, sum(duplicates) AS duplicates, sum(late) AS late,
               sum(invalid) AS invalid
        FROM tagpulse.completeness
        WHERE platform = 'unknown' OR platform IN (SELECT platform FROM tagpulse.posts
                                                   WHERE has(hashtags, 'einbuchfuerkai'))
        GROUP BY platform""")
    expected = {r["platform"]: [int(r[k]) for k in ("received", "duplicates", "late", "invalid")] for r in table}
    got = {c["platform"]: [c[k] for k in ("received", "duplicates", "late", "invalid")]
           for c in report["completeness"] if c["platform"] != "all"}
    assert got == expected and len(got) >= 2
    for c in report["completeness"]:
        assert 0 <= c["duplicate_rate"] <= 1 and 0 <= c["late_rate"] <= 1 and 0 <= c["invalid_rate"] <= 1
        assert c["duplicates"] <= c["received"]
    assert report["completeness_buckets"], "completeness over time for the tag's buckets"
    text = subprocess.run([sys.executable, "-m", "tagpulse.cli", "report", "einbuchfuerkai"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "Completeness of the sources carrying the tag" in text.stdout


# ----------------------------------------------------------------------------- through Kafka and the sink
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_the_sink_stores_the_completeness_topic(namespace_settings, tmp_path):
    from aiokafka import AIOKafkaProducer

    settings = namespace_settings
    topic = settings.topics.completeness

    async def produce():
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for _, _, rows in MESSAGES:
                await producer.send_and_wait(topic, orjson.dumps(rows))
        finally:
            await producer.stop()

    asyncio.run(produce())
    env = dict(os.environ, TAGPULSE_SQL_PORT=str(_free_port()), TAGPULSE_SINK_METRICS_PORT=str(_free_port()))
    log = open(tmp_path / "sink.log", "wb")
    sink = subprocess.Popen([sys.executable, "-m", "tagpulse.cli", "sink"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    want = sum(r["received"] for _, _, rows in MESSAGES for r in rows)
    got = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sink.poll() is None:
            result = subprocess.run([sys.executable, "-m", "tagpulse.cli", "sql",
                                     "SELECT sum(received), count() FROM tagpulse.completeness", "-f", "TSV"],
                                    cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            got = result.stdout.split() if result.returncode == 0 else result.stderr
            if got == [str(want), str(sum(len(rows) for _, _, rows in MESSAGES))]:
                break
            time.sleep(0.5)
        assert got == [str(want), str(sum(len(rows) for _, _, rows in MESSAGES))], \
            (got, (tmp_path / "sink.log").read_text(errors="replace")[-3000:])
        view = subprocess.run([sys.executable, "-m", "tagpulse.cli", "sql",
                               "SELECT sum(duplicates) FROM tagpulse.source_completeness WHERE platform = 'twitter'",
                               "-f", "TSV"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert view.stdout.strip() == str(sum(v[1] for (p, _), v in expected_sums().items() if p == "twitter"))
    finally:
        if sink.poll() is None:
            sink.send_signal(signal.SIGTERM)
            try:
                sink.wait(30)
            except subprocess.TimeoutExpired:
                sink.kill()
                sink.wait(10)
        log.close()
