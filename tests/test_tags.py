"""`tagpulse tags suggest | alias …` as a user runs them: subprocesses, a real chDB database, real files."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HANNA = Path("/work/shared/data/mastodon/ichbinhanna.jsonl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def tagpulse(home: Path, *args, stdin: str | None = None, clickhouse: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(REPO), TAGPULSE_HOME=str(home),
               # A port nobody listens on: never ask another test's sink.
               TAGPULSE_SQL_PORT=str(free_port()))
    if clickhouse:
        env["TAGPULSE_CLICKHOUSE"] = clickhouse
    return subprocess.run([sys.executable, "-m", "tagpulse.cli", *args], env=env, cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=300)


def post(i: int, tags: list[str], text: str, when: datetime, platform: str = "twitter") -> dict:
    return {"platform": platform, "post_id": str(i), "author_id": f"u{i % 17}", "author_handle": f"user{i % 17}",
            "author_followers": 100 + i, "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "lang": "de",
            "text": text, "hashtags": tags, "is_share": False, "original_post_id": None, "likes": 0, "shares": 0,
            "replies": 0, "quotes": 0}


def campaign_posts() -> list[dict]:
    """A small canonical campaign: the tag in several spellings plus look-alikes, with duplicate deliveries."""
    t0 = datetime(2015, 5, 20, 9, 0, tzinfo=timezone.utc)
    posts, i = [], 0
    for spelling in ["#einBuchfürKai"] * 20 + ["#einBuchfuerKai"] * 12 + ["#EINBUCHFUERKAI"] * 3:
        i += 1
        posts.append(post(i, ["einbuchfuerkai"], f"Lest mehr! {spelling}", t0 + timedelta(minutes=i)))
    for _ in range(4):
        i += 1
        posts.append(post(i, ["einbildfuerkai"], "Auch schön #einBildfuerKai", t0 + timedelta(minutes=i)))
    for _ in range(3):
        i += 1
        posts.append(post(i, ["einbuchfurkai"], "via Mastodon #einbuchfurkai", t0 + timedelta(hours=30, minutes=i),
                          platform="mastodon"))
    for _ in range(6):
        i += 1
        posts.append(post(i, ["rstats"], "#rstats", t0 + timedelta(minutes=i)))
    return posts + posts[:5]  # duplicate deliveries must not inflate the counts


def test_suggest_from_file_lists_variants_with_counts(home, tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in campaign_posts()) + "not json\n")
    result = tagpulse(home, "tags", "suggest", "--from-file", str(path), "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_variant = {(r["variant"], r["kind"]): r for r in rows}
    spelled = by_variant[("einbuchfuerkai", "spelling")]
    assert spelled["canonical_posts"] == 35  # 5 duplicate deliveries not counted
    assert spelled["spellings"][:2] == ["#einBuchfürKai", "#einBuchfuerKai"] and "#EINBUCHFUERKAI" in spelled["spellings"]
    bild = by_variant[("einbildfuerkai", "edit")]
    assert (bild["canonical"], bild["variant_posts"], bild["canonical_posts"]) == ("einbuchfuerkai", 4, 35)
    assert by_variant[("einbuchfurkai", "ascii-fold")]["canonical"] == "einbuchfuerkai"

    table = tagpulse(home, "tags", "suggest", "--from-file", str(path))
    assert table.returncode == 0 and "einbildfuerkai" in table.stdout and "tags alias add" in table.stderr
    # --since keeps only the late Mastodon posts (30 h later): one tag, nothing to pair it with.
    late = tagpulse(home, "tags", "suggest", "--from-file", str(path), "--json", "--since", "2015-05-20T12:00:00Z")
    assert late.returncode == 0 and late.stdout == ""
    assert "busiest of 1 tags" in late.stderr


def test_suggest_on_real_mastodon_campaign(home, tmp_path):
    parsed = tagpulse(home, "parse", str(HANNA))
    if "invalid choice: 'parse'" in parsed.stderr:
        pytest.skip("`tagpulse parse` is not in this tree yet")
    assert parsed.returncode == 0, parsed.stderr
    path = tmp_path / "hanna.jsonl"
    path.write_text(parsed.stdout)
    result = tagpulse(home, "tags", "suggest", "--from-file", str(path), "--json", "--top", "5")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    # The real campaign: #IchBinHannah is one letter away from #IchbinHanna.
    assert any(r["variant"] == "ichbinhannah" and r["canonical"] == "ichbinhanna" for r in rows), rows
    head = next(r for r in rows if r["variant"] == "ichbinhanna" and r["kind"] == "spelling")
    assert head["canonical_posts"] == 160 and len(head["spellings"]) >= 2


def test_alias_add_list_remove_and_suggest_skips_stored_aliases(home, tmp_path):
    added = tagpulse(home, "tags", "alias", "add", "#einBildfürKai", "#einBuchfuerKai")
    assert added.returncode == 0, added.stderr
    assert "einbildfuerkai → einbuchfuerkai" in added.stderr
    listed = tagpulse(home, "tags", "alias", "list")
    assert listed.stdout.splitlines() == ["einbildfuerkai\teinbuchfuerkai"]
    assert (home / "aliases.json").exists()

    # The alias table is what canonicalisation reads.
    from tagpulse.core.hashtags import AliasTable

    assert AliasTable.load(home / "aliases.json").resolve("einbildfuerkai") == "einbuchfuerkai"

    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in campaign_posts()))
    rows = [json.loads(x) for x in tagpulse(home, "tags", "suggest", "--from-file", str(path), "--json").stdout.splitlines()]
    assert not any(r["variant"] == "einbildfuerkai" for r in rows)

    cycle = tagpulse(home, "tags", "alias", "add", "einbuchfuerkai", "einbildfuerkai")
    assert cycle.returncode == 1 and "cycle" in cycle.stderr and "Traceback" not in cycle.stderr
    same = tagpulse(home, "tags", "alias", "add", "#EinBuchFürKai", "einbuchfuerkai")
    assert same.returncode == 1 and "same key" in same.stderr

    removed = tagpulse(home, "tags", "alias", "remove", "einBildfuerKai")
    assert removed.returncode == 0, removed.stderr
    assert tagpulse(home, "tags", "alias", "list").stdout == ""
    missing = tagpulse(home, "tags", "alias", "remove", "nothing")
    assert missing.returncode == 1 and "no alias" in missing.stderr


CREATE_DB = """
import sys, orjson
from sinks import clickhouse as ch
url = sys.argv[1]
client = ch.connect(url)
ch.apply_migrations(client)
ch.insert_messages(client, url, "posts", [(0, 0, sys.stdin.buffer.read())])
print(client.query("SELECT count() FROM tagpulse.posts").result_rows[0][0])
"""


@pytest.mark.integration
def test_suggest_reads_counts_from_clickhouse(home, tmp_path):
    url = f"chdb://{tmp_path / 'clickhouse'}"
    unique = list({(p["platform"], p["post_id"]): p for p in campaign_posts()}.values())  # the posts table is deduplicated
    made = subprocess.run([sys.executable, "-c", CREATE_DB, url], input=json.dumps(unique).encode(), cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, timeout=300)
    assert made.returncode == 0, made.stderr.decode()
    assert int(made.stdout) == len(unique)
    result = tagpulse(home, "tags", "suggest", "--json", clickhouse=url)
    assert result.returncode == 0, result.stderr
    rows = {(r["variant"], r["kind"]): r for r in map(json.loads, result.stdout.splitlines())}
    assert rows[("einbildfuerkai", "edit")]["variant_posts"] == 4
    assert rows[("einbuchfuerkai", "spelling")]["canonical_posts"] == 35
    assert "#einBuchfürKai" in rows[("einbuchfuerkai", "spelling")]["spellings"]
    assert rows[("einbuchfurkai", "ascii-fold")]["canonical"] == "einbuchfuerkai"


def test_suggest_errors_are_one_line(home, tmp_path):
    nothing = tagpulse(home, "tags", "suggest", clickhouse=f"chdb://{tmp_path / 'none'}")
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr and "tagpulse tags:" in nothing.stderr
    bad_since = tagpulse(home, "tags", "suggest", "--from-file", "/dev/null", "--since", "yesterday-ish")
    assert bad_since.returncode == 1 and "--since" in bad_since.stderr
    missing = tagpulse(home, "tags", "suggest", "--from-file", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


@pytest.mark.integration
def test_reaggregation_sql_in_docs_runs_and_applies_aliases(home, tmp_path):
    """Every `tagpulse sql` query of docs/tags.md, run as written, against a real chDB database."""
    import re

    url = f"chdb://{tmp_path / 'clickhouse'}"
    unique = list({(p["platform"], p["post_id"]): p for p in campaign_posts()}.values())
    made = subprocess.run([sys.executable, "-c", CREATE_DB, url], input=json.dumps(unique).encode(), cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, timeout=300)
    assert made.returncode == 0, made.stderr.decode()
    assert tagpulse(home, "tags", "alias", "add", "einbildfuerkai", "einbuchfuerkai").returncode == 0
    assert tagpulse(home, "tags", "alias", "add", "einbuchfurkai", "einbuchfuerkai").returncode == 0
    expression = tagpulse(home, "tags", "alias", "list", "--sql").stdout.strip()
    assert expression.startswith("arrayDistinct(arrayMap(")
    queries = re.findall(r'tagpulse sql "\n(.*?)"', (REPO / "docs" / "tags.md").read_text(), re.S)
    assert len(queries) >= 3
    outputs = []
    for sql in queries:
        params = ["-p", "tag=einbuchfuerkai"] if "{tag:String}" in sql else []
        result = tagpulse(home, "sql", sql.replace("$TAGS", expression), *params, "-f", "JSONEachRow",
                          clickhouse=url)
        assert result.returncode == 0, (sql, result.stderr)
        outputs.append([json.loads(line) for line in result.stdout.splitlines()])
    hourly, totals, export = outputs[0], outputs[1], outputs[2]
    # 35 + 4 (einbildfuerkai) + 3 (einbuchfurkai) posts now count under one key.
    assert sum(r["posts"] for r in hourly) == 42
    assert {r["tag"]: r["posts"] for r in totals}["einbuchfuerkai"] == 42
    assert len(export) == len(unique)
    assert all("einbildfuerkai" not in p["hashtags"] for p in export)
    assert export[0]["created_at"].endswith("Z")
