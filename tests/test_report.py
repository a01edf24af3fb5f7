"""`tagpulse report`: the pure model and text, and the command on a small chDB fixture dataset."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sinks.report import QUERIES, build_report, canonical, parse_time, render_text

REPO = Path(__file__).resolve().parents[1]
T0 = 1432112400  # 2015-05-20 09:00:00 UTC


# ----------------------------------------------------------------------------- pure
@pytest.mark.parametrize("spelling", ["#einBuchfürKai", "einbuchfuerkai", "#EinBuchFuerKai", " #EINBUCHFÜRKAI "])
def test_any_spelling_finds_the_canonical_tag(spelling):
    assert canonical(spelling) == "einbuchfuerkai"


def test_parse_time():
    assert parse_time("2015-05-20", 0) == T0 - 9 * 3600
    assert parse_time("2015-05-20T09:00Z", 0) == T0
    assert parse_time("2015-05-20 09:00:00", 0) == T0
    assert parse_time("2015-05-20T11:00:00+02:00", 0) == T0
    assert parse_time("24h", 100_000) == 100_000 - 86400
    with pytest.raises(ValueError):
        parse_time("yesterday-ish", 0)


def test_queries_bind_user_input_as_parameters():
    for name, sql in QUERIES.items():
        assert "{tag:String}" in sql, name
        assert "%s" not in sql and "{tag}" not in sql


def test_build_report_cumulates_per_bucket():
    rows = {
        "platforms": [
            {"platform": "twitter", "posts": "3", "shares": "1", "unique_authors": "2", "potential_reach": "300",
             "impressions": "500", "engagement": "7", "first_seen": T0 + 10, "last_seen": T0 + 4000},
            {"platform": "facebook", "posts": "1", "shares": "1", "unique_authors": "1", "potential_reach": "5",
             "impressions": "5", "engagement": "0", "first_seen": T0 + 5, "last_seen": T0 + 5}],
        "buckets": [{"platform": "facebook", "bucket": T0, "posts": 1, "shares": 1, "impressions": "5"},
                    {"platform": "twitter", "bucket": T0, "posts": 2, "shares": 0, "impressions": "300"},
                    {"platform": "twitter", "bucket": T0 + 3600, "posts": 1, "shares": 1, "impressions": "200"}],
        "reach_gains": [{"platform": "facebook", "bucket": T0, "gain": "5"},
                        {"platform": "twitter", "bucket": T0, "gain": "200"},
                        {"platform": "twitter", "bucket": T0 + 3600, "gain": "100"}],
        "top": [{"platform": "twitter", "author_id": "7", "handle": "kai", "followers": "200", "posts": 2,
                 "shares": 0}],
        "peak": [{"start": T0, "end": T0 + 3600, "posts": "3", "impressions": "305", "potential_reach": "205"}],
        "windows": [{"window_size": 3600, "rows": 3, "windows": 2}],
        "late": [{"window_size": 60, "events": "4"}],
    }
    report = build_report("einbuchfuerkai", "#einBuchfürKai", None, None, 3600, rows)
    assert report.total.posts == 4 and report.total.potential_reach == 305 and report.total.impressions == 505
    assert report.first_seen == T0 + 5
    assert [(b.start, b.cum_posts, b.cum_impressions, b.cum_potential_reach) for b in report.buckets] == \
        [(T0, 3, 305, 205), (T0 + 3600, 4, 505, 305)]
    assert report.buckets[-1].cum_impressions_by_platform == {"facebook": 5, "twitter": 500}
    text = render_text(report)
    assert "#einbuchfuerkai  (you asked for '#einBuchfürKai')" in text
    assert "from tagpulse.posts" in text and "from tagpulse.reach_windows" in text
    assert "2015-05-20 09:00:00 .. 2015-05-20 10:00:00 UTC: 3 posts, 305 impressions" in text
    assert "4 for 1m windows" in text


def test_empty_report_says_so():
    text = render_text(build_report("nothing", "nothing", None, None, 3600, {}))
    assert "No posts with this tag" in text


# ----------------------------------------------------------------------------- against chDB
def fixture_posts() -> list[dict]:
    """Three platforms, authors whose follower counts change, off-tag and off-period posts."""
    posts = []
    spec = [  # platform, author, followers, minutes after T0, is_share, tags
        ("twitter", "t1", 1000, 1, False, ["einbuchfuerkai"]),
        ("twitter", "t1", 1200, 70, True, ["einbuchfuerkai", "kai"]),
        ("twitter", "t2", 50, 5, True, ["einbuchfuerkai"]),
        ("twitter", "t3", 999_999, 6, False, ["otherTag"]),  # not our tag
        ("twitter", "t2", 60, 130, False, ["einbuchfuerkai"]),
        ("facebook", "f1", 10, 2, True, ["einbuchfuerkai"]),
        ("facebook", "f1", 10, 3, True, ["einbuchfuerkai"]),
        ("facebook", "f2", 300, 65, True, ["einbuchfuerkai"]),
        ("instagram", "i1", 5000, 61, False, ["einbuchfuerkai"]),
        ("instagram", "i1", 4000, 62, False, ["einbuchfuerkai"]),
        ("instagram", "i9", 7, 60 * 48, False, ["einbuchfuerkai"]),  # outside --until
    ]
    for i, (platform, author, followers, minute, share, tags) in enumerate(spec):
        t = T0 + minute * 60
        posts.append({"platform": platform, "post_id": f"p{i}", "author_id": author, "author_handle": f"@{author}",
                      "author_followers": followers, "created_at": f"{_iso(t)}", "lang": "de", "text": "…",
                      "hashtags": tags, "is_share": share, "original_post_id": None, "likes": 1, "shares": 0,
                      "replies": 0, "quotes": 0})
    return posts


def _iso(t: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_totals(posts: list[dict], until: int) -> dict[str, dict]:
    """Plain-Python oracle for the per-platform figures."""
    out: dict[str, dict] = {}
    for p in posts:
        if "einbuchfuerkai" not in p["hashtags"] or parse_time(p["created_at"], 0) >= until:
            continue
        o = out.setdefault(p["platform"], {"posts": 0, "shares": 0, "impressions": 0, "authors": {}})
        o["posts"] += 1
        o["shares"] += p["is_share"]
        o["impressions"] += p["author_followers"]
        o["authors"][p["author_id"]] = max(o["authors"].get(p["author_id"], 0), p["author_followers"])
    return {k: {"posts": v["posts"], "shares": v["shares"], "impressions": v["impressions"],
                "unique_authors": len(v["authors"]), "potential_reach": sum(v["authors"].values())}
            for k, v in out.items()}


LOAD_SCRIPT = """
import sys, orjson
from sinks import clickhouse as ch
url, posts, windows = sys.argv[1], orjson.loads(sys.argv[2]), orjson.loads(sys.argv[3])
client = ch.connect(url)
ch.apply_migrations(client)
ch.insert_messages(client, url, "posts", [(0, i, orjson.dumps(posts[i:i + 3])) for i in range(0, len(posts), 3)])
ch.insert_messages(client, url, "reach_windows", [(0, 0, orjson.dumps(windows))])
"""


@pytest.fixture(scope="module")
def loaded_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("report")
    url = f"chdb://{home / 'clickhouse'}"
    w = {"tag": "einbuchfuerkai", "window_size": 3600, "originals": 0, "shares": 0, "unique_authors": 1,
         "potential_reach": 1, "engagement": 0, "closed_at": T0 + 9000.0}
    windows = [dict(w, platform="twitter", window_start=T0, window_end=T0 + 3600, posts=2, impressions=1050),
               dict(w, platform="facebook", window_start=T0, window_end=T0 + 3600, posts=2, impressions=20),
               dict(w, platform="instagram", window_start=T0 + 1800, window_end=T0 + 5400, posts=2, impressions=9000),
               dict(w, platform="twitter", window_start=T0 + 1800, window_end=T0 + 5400, posts=1, impressions=1200),
               dict(w, platform="facebook", window_start=T0 + 1800, window_end=T0 + 5400, posts=1, impressions=300),
               dict(w, tag="other", platform="twitter", window_start=T0, window_end=T0 + 3600, posts=99,
                    impressions=1)]
    subprocess.run([sys.executable, "-c", LOAD_SCRIPT, url, orjson.dumps(fixture_posts()).decode(),
                    orjson.dumps(windows).decode()], cwd=REPO, check=True, timeout=120)
    return home


def run_report(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TAGPULSE_HOME=str(home), TAGPULSE_SQL_PORT="1")  # port 1: no sink answers
    env.pop("TAGPULSE_CLICKHOUSE", None)
    return subprocess.run([sys.executable, "-m", "tagpulse.cli", "report", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_report_figures_match_a_plain_recomputation(loaded_home):
    until = T0 + 86400
    result = run_report(loaded_home, "#einBuchfürKai", "--until", "2015-05-21T09:00Z", "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    got = {p["platform"]: {k: p[k] for k in ("posts", "shares", "impressions", "unique_authors", "potential_reach")}
           for p in report["platforms"]}
    assert got == expected_totals(fixture_posts(), until)
    assert report["total"]["first_seen"] == T0 + 60
    # Over time (1h buckets): twitter's t1 posts at +1 min with 1000 followers and at +70 min with 1200, so the
    # cumulative potential reach grows by 200 in the second hour, not by 1200.
    cum = {b["start"]: (b["cum_posts"], b["cum_potential_reach"]) for b in report["buckets"]}
    assert cum == {T0: (4, 1000 + 50 + 10), T0 + 3600: (8, 1060 + 200 + 300 + 5000), T0 + 7200: (9, 6560 + 10)}
    assert report["buckets"][-1]["cum_impressions"] == sum(p["impressions"] for p in got.values())
    assert report["peak"]["start"] == T0 + 1800 and report["peak"]["posts"] == 4  # 'other' tag ignored
    assert [c["author_id"] for c in report["top"]][:2] == ["i1", "t1"]


def test_report_text_any_spelling(loaded_home):
    outputs = set()
    for spelling in ("#einBuchfürKai", "EINBUCHFUERKAI"):
        result = run_report(loaded_home, spelling, "--until", "2015-05-21T09:00Z")
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout.split("\n", 1)[1])  # all but the title line (it echoes the spelling)
        assert "#einbuchfuerkai" in result.stdout
        assert "Totals per platform (from tagpulse.posts" in result.stdout
    assert len(outputs) == 1


def test_report_rejects_bad_dates_without_traceback(loaded_home):
    result = run_report(loaded_home, "kai", "--since", "last tuesday")
    assert result.returncode == 2 and "is not a date" in result.stderr and "Traceback" not in result.stderr
