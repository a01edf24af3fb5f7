"""Every query of docs/queries.md runs, through `tagpulse sql`'s read-only path, against real ClickHouse.

The queries are read from the document's ```sql blocks at collection time, so the doc and the
test cannot drift. `analyst_db` is the database they run on: for now the small campaign dataset of
tests/analyst_dataset.py (the seed campaign written through the sink's insert path); the lead can
point it at the session fixture `demo_db` (the real pipeline on the simulated campaign).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import analyst_dataset

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "queries.md"
PARAMS = {"tag": "einbuchfuerkai"}


def extract_queries(markdown: str) -> list[tuple[str, str]]:
    """(title, sql) of every ```sql block under '## Ready queries', titled by its '### ' heading."""
    section = markdown.split("\n## Ready queries", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    queries = []
    for block in re.split(r"\n### ", section)[1:]:
        title = block.splitlines()[0].strip()
        sqls = re.findall(r"```sql\n(.*?)```", block, flags=re.S)
        assert len(sqls) == 1, f"{title!r}: expected exactly one sql block, found {len(sqls)}"
        queries.append((title, sqls[0].strip()))
    return queries


QUERIES = extract_queries(DOC.read_text(encoding="utf-8"))

# Checks that are not in the doc: the views agree with each other and with the base tables.
CONSISTENCY = {
    "hourly posts add up to the totals": """
        SELECT (SELECT sum(posts) FROM tagpulse.tag_reach_hourly WHERE tag = 'einbuchfuerkai')
             = (SELECT sum(posts) FROM tagpulse.tag_totals WHERE tag = 'einbuchfuerkai') AS ok""",
    "hourly impressions add up to the totals": """
        SELECT (SELECT sum(impressions) FROM tagpulse.tag_reach_hourly WHERE tag = 'einbuchfuerkai')
             = (SELECT sum(impressions) FROM tagpulse.tag_totals WHERE tag = 'einbuchfuerkai') AS ok""",
    "contributors add up to unique authors": """
        SELECT (SELECT count() FROM tagpulse.top_contributors WHERE tag = 'einbuchfuerkai')
             = (SELECT sum(unique_authors) FROM tagpulse.tag_totals WHERE tag = 'einbuchfuerkai') AS ok""",
    "cumulative impressions end at the sum of the 1-minute windows": """
        SELECT (SELECT max(cum_impressions) FROM tagpulse.tag_reach_cumulative
                WHERE tag = 'einbuchfuerkai' AND platform = 'twitter')
             = (SELECT sum(impressions) FROM tagpulse.reach_windows
                WHERE tag = 'einbuchfuerkai' AND platform = 'twitter' AND window_size = 60) AS ok""",
    # A unique post is either in its 1-minute window or counted late for it.
    "1-minute windows plus late posts account for every unique post": """
        SELECT (SELECT sum(posts) FROM tagpulse.reach_windows WHERE tag = 'einbuchfuerkai' AND window_size = 60)
             + (SELECT sum(late_posts) FROM tagpulse.late_windows WHERE tag = 'einbuchfuerkai' AND window_size = 60)
             = (SELECT count() FROM tagpulse.posts WHERE has(hashtags, 'einbuchfuerkai')) AS ok""",
}

RUNNER = """
import sys, orjson
from tagpulse import config
from tagpulse.commands.sql import QueryError, run_query
settings = config.load()
out = {}
for name, sql, params in orjson.loads(sys.stdin.buffer.read()):
    try:
        body = run_query(settings, sql, "JSONEachRow", params)
        out[name] = {"rows": [orjson.loads(line) for line in body.splitlines() if line.strip()]}
    except QueryError as exc:
        out[name] = {"error": str(exc)}
sys.stdout.buffer.write(orjson.dumps(out))
"""


def run_queries(url: str, queries: list[tuple[str, str]]) -> dict[str, dict]:
    """Run queries the way an analyst does (tagpulse sql's read-only path), in one process."""
    env = dict(os.environ, TAGPULSE_CLICKHOUSE=url, TAGPULSE_SQL_PORT="1")  # port 1: no sink answers
    batch = [(name, sql, PARAMS if "{tag:" in sql else None) for name, sql in queries]
    result = subprocess.run([sys.executable, "-c", RUNNER], input=orjson.dumps(batch), cwd=REPO, env=env,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def analyst_db(demo_db) -> str:
    # The demo's data: the seed campaign through the real pipeline (tests/conftest.py).
    return demo_db


@pytest.fixture(scope="module")
def answers(analyst_db) -> dict[str, dict]:
    return run_queries(analyst_db, QUERIES + list(CONSISTENCY.items()))


# ----------------------------------------------------------------------------- pure
def test_the_doc_has_at_least_ten_queries_among_them_theoretical_reach():
    titles = [t for t, _ in QUERIES]
    assert len(QUERIES) >= 10
    assert len(set(titles)) == len(titles)
    assert any("theoretical reach over time of #einbuchfuerkai" in t.lower() for t in titles)


def test_doc_queries_do_not_sum_hopping_windows():
    # Summing 1 h or 24 h windows over time counts a post 12 or 24 times; only picking single windows is fine.
    for title, sql in QUERIES:
        if "reach_windows" in sql and "window_size = 3600" in sql:
            assert "GROUP BY window_start" in sql, title


def test_extract_queries_rejects_a_heading_without_sql():
    with pytest.raises(AssertionError):
        extract_queries("x\n## Ready queries\n### 1. Q\nno code\n")


# ----------------------------------------------------------------------------- against ClickHouse
@pytest.mark.parametrize("title", [t for t, _ in QUERIES])
def test_doc_query_returns_rows(answers, title):
    answer = answers[title]
    assert "error" not in answer, answer.get("error")
    assert answer["rows"], f"{title!r} returned no rows"


@pytest.mark.parametrize("check", list(CONSISTENCY))
def test_views_agree(answers, check):
    answer = answers[check]
    assert "error" not in answer, answer.get("error")
    assert answer["rows"][0]["ok"] in (1, True, "1"), check


def test_theoretical_reach_over_time_grows_to_the_campaigns_figure(answers):
    over_time = answers[QUERIES[0][0]]["rows"]
    values = [int(r["theoretical_reach"]) for r in over_time]
    assert values == sorted(values), "a cumulative figure never shrinks"
    by = {r["at"]: int(r["theoretical_reach"]) for r in over_time}
    # ≈ 14.8 M by 2015-05-22 12:50; the hour ending at 13:00 holds at least that much, the one ending at 12:00 less.
    assert by["2015-05-22 12:00:00"] < 14_800_000 * 1.02
    assert by["2015-05-22 13:00:00"] > 14_800_000 * 0.97
    point = answers[QUERIES[1][0]]["rows"][0]
    assert abs(int(point["theoretical_reach"]) - 14_800_000) < 14_800_000 * 0.03


def test_views_match_tagpulse_report(analyst_db, answers):
    env = dict(os.environ, TAGPULSE_CLICKHOUSE=analyst_db, TAGPULSE_SQL_PORT="1")
    result = subprocess.run([sys.executable, "-m", "tagpulse.cli", "report", "einbuchfuerkai", "--json"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    fields = ("posts", "shares", "unique_authors", "potential_reach", "impressions", "engagement")
    from_report = {p["platform"]: {f: int(p[f]) for f in fields} for p in report["platforms"]}
    totals = next(rows for title, rows in answers.items() if title.startswith("3. "))["rows"]
    from_view = {r["platform"]: {f: int(r[f]) for f in fields} for r in totals}
    assert from_view == from_report


def test_writes_are_refused_through_the_same_path(analyst_db):
    answers = run_queries(analyst_db, [("drop", "DROP VIEW tagpulse.tag_totals"),
                                       ("insert", "INSERT INTO tagpulse.completeness (platform) VALUES ('x')")])
    for name, answer in answers.items():
        assert "error" in answer and "read-only" in answer["error"], (name, answer)
