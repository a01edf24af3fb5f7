"""The fault suite (tagpulse/faults.py): its pure parts without I/O, the bug it found, and the
whole suite at small scale against a real broker, real workers and the real sink."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tagpulse import faults
from tagpulse.core.stage1 import epoch_seconds
from tagpulse.core.windows import oracle_windows

REPO = Path(__file__).resolve().parents[1]
SPECS = ((60, 60), (3600, 300), (86400, 3600))
SMALL_POSTS = faults.SCALES["small"]


# ----------------------------------------------------------------------------- the replay
def test_replay_is_deterministic_for_a_seed():
    assert faults.synthetic_replay(500, seed=3) == faults.synthetic_replay(500, seed=3)
    assert faults.synthetic_replay(500, seed=3)[1] != faults.synthetic_replay(500, seed=4)[1]


def test_replay_holds_every_post_once_or_more_and_about_the_duplicate_rate():
    posts, arrivals = faults.synthetic_replay(5000, seed=1, dup_rate=0.04)
    ids = [p["post_id"] for p in posts]
    assert len(set(ids)) == len(ids) == 5000
    arrived = {}
    for post in arrivals:
        arrived[post["post_id"]] = arrived.get(post["post_id"], 0) + 1
    assert set(arrived) == set(ids)
    assert max(arrived.values()) == 2
    assert 0.03 < (len(arrivals) - len(posts)) / len(posts) < 0.05


def test_replay_disorder_stays_within_grace_so_nothing_is_late():
    _, arrivals = faults.synthetic_replay(5000, seed=2, disorder=8.0)
    newest = None
    for post in arrivals:
        t = epoch_seconds(post["created_at"])
        newest = t if newest is None else max(newest, t)
        assert newest - t <= 8  # the watermark is newest - 10 s: never past this post's windows
    assert any(epoch_seconds(a["created_at"]) > epoch_seconds(b["created_at"])
               for a, b in zip(arrivals, arrivals[1:])), "no disorder at all"


def test_replay_posts_are_canonical_as_the_producer_validates_them():
    from schemas.post import validate_post

    posts, _ = faults.synthetic_replay(300, seed=5)
    for post in posts:
        assert validate_post(dict(post)) == post


def test_replay_has_shares_several_platforms_and_authors_posting_often():
    posts, _ = faults.synthetic_replay(3000, seed=6)
    assert {p["platform"] for p in posts} == set(faults.PLATFORMS)
    assert 0.2 < sum(p["is_share"] for p in posts) / len(posts) < 0.4
    assert len({p["author_id"] for p in posts}) < len(posts) / 2
    assert any(len(p["hashtags"]) > 1 for p in posts)


# ----------------------------------------------------------------------------- comparison
def test_compare_exact():
    diff = faults.compare({("a",): (1,), ("b",): (2,)}, [(("b",), (2,)), (("a",), (1,))])
    assert diff.exact and (diff.expected, diff.stored) == (2, 2) and diff.examples == []


def test_compare_counts_missing_duplicated_and_different_rows():
    expected = {("a",): (1,), ("b",): (2,), ("c",): (3,)}
    stored = [(("a",), (1,)), (("a",), (1,)), (("b",), (5,)), (("x",), (9,))]
    diff = faults.compare(expected, stored)
    assert not diff.exact
    assert (diff.missing, diff.duplicated, diff.different, diff.stored) == (1, 1, 2, 4)
    kinds = sorted(example[0] for example in diff.examples)
    assert kinds == ["different", "duplicated", "missing", "unexpected"]


def test_compare_keeps_a_few_examples_only():
    diff = faults.compare({(i,): (i,) for i in range(100)}, [], max_examples=3)
    assert diff.missing == 100 and len(diff.examples) == 3


def test_stored_post_reads_back_to_the_same_values():
    posts, _ = faults.synthetic_replay(50, seed=8)
    post = next(p for p in posts if p["original_post_id"] is None)
    # What the sink's SQL endpoint returns: epoch created_at, NULL optionals as ''.
    stored = dict(post, created_at=epoch_seconds(post["created_at"]), original_post_id="",
                  author_followers=str(post["author_followers"]))
    assert faults.post_values(stored) == faults.post_values(post)
    assert faults.post_values(dict(stored, likes=post["likes"] + 1)) != faults.post_values(post)


def test_expected_windows_are_the_oracle_over_unique_posts():
    posts, arrivals = faults.synthetic_replay(400, seed=9)
    rows = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)
    expected = faults.expected_windows(posts, SPECS)
    assert len(expected) == len(rows)
    assert all(expected[faults.window_key(r)] == faults.window_values(r) for r in rows)
    # Counting a duplicate delivery would change some window: the oracle takes unique posts only.
    assert faults.expected_windows(arrivals, SPECS) != expected


def test_kill_points_are_random_increasing_and_spread():
    points = faults.kill_points(random.Random(1), 5, 0.05, 0.9)
    assert len(points) == 5 and points == sorted(points)
    assert all(0.05 + 0.17 * i <= p <= 0.05 + 0.17 * (i + 1) for i, p in enumerate(points))
    assert faults.kill_points(random.Random(2), 5) != points


def test_report_is_ok_only_when_exact_without_late_posts_or_errors():
    exact = faults.Diff(expected=3, stored=3)
    report = faults.ScenarioReport("worker-kill", posts=exact, windows=faults.Diff(expected=5, stored=5))
    assert report.ok
    assert not faults.ScenarioReport("x", posts=faults.Diff()).ok  # nothing expected: nothing was tested
    for change in ({"late_events": 1}, {"dead_letters": 1}, {"error": "boom"},
                   {"windows": faults.Diff(expected=5, stored=6, duplicated=1)}):
        fields = {"posts": exact, "windows": faults.Diff(expected=5, stored=5), **change}
        assert not faults.ScenarioReport("worker-kill", **fields).ok


def test_format_reports_shows_a_row_per_scenario_and_what_went_wrong():
    good = faults.ScenarioReport("worker-kill", posts=faults.Diff(expected=10, stored=10),
                                 windows=faults.Diff(expected=7, stored=7), faults=["kill -9 worker-0"] * 5,
                                 restarts=5, peak_rss_mb={"worker": 120.4, "sink": 470.0}, seconds=61.2)
    bad = faults.compare({("a",): (1,)}, [])
    text = faults.format_reports([good, faults.ScenarioReport("sink-kill", posts=bad, windows=bad)])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["scenario", "posts"]
    assert "10/10" in lines[1] and "7/7" in lines[1] and "120/470" in lines[1] and lines[1].endswith("EXACT")
    assert lines[2].startswith("sink-kill") and "1/1" in lines[2] and lines[2].endswith("FAILED")
    assert "! posts: ('missing', ('a',))" in text
    assert json.dumps(good.as_dict())  # the --json output


def test_suite_settings_ignore_the_callers_pipeline_settings(monkeypatch):
    monkeypatch.setenv("TAGPULSE_GRACE", "1s")
    monkeypatch.setenv("TAGPULSE_CACHE", "/somewhere")
    env = faults.suite_environ(TAGPULSE_NAMESPACE="x")
    assert "TAGPULSE_GRACE" not in env and env["TAGPULSE_CACHE"] == "/somewhere"
    assert faults.load_settings(env).grace_s == 10


def test_broker_restart_needs_the_suites_own_broker():
    env = dict(os.environ, TAGPULSE_KAFKA="127.0.0.1:1")
    result = subprocess.run([sys.executable, "-m", "tagpulse.cli", "faults", "--scenario", "broker-restart"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "broker-restart stops and starts the suite's own broker" in result.stderr


# ----------------------------------------------------------------------------- the whole suite
@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_fault_suite_small_scale_every_scenario_exact(tmp_path):
    """`tagpulse faults` itself: its own broker, every scenario, ClickHouse equal to the oracle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGPULSE_") or k == "TAGPULSE_CACHE"}
    out = tmp_path / "faults.json"
    result = subprocess.run([sys.executable, "-m", "tagpulse.cli", "faults", "--scale", "small", "--outage", "10",
                             "--json", str(out), "--workdir", str(tmp_path / "work")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1700)
    report = result.stdout + "\n" + result.stderr[-6000:]
    assert result.returncode == 0, report
    data = json.loads(out.read_text())
    assert data["ok"] and data["posts"] == SMALL_POSTS
    assert [s["scenario"] for s in data["scenarios"]] == list(faults.SCENARIOS)
    for scenario in data["scenarios"]:
        assert scenario["posts"]["expected"] == scenario["posts"]["stored"] == SMALL_POSTS, report
        assert scenario["windows"]["expected"] == scenario["windows"]["stored"] > 0, report
        assert scenario["faults"], report
    kills = [s for s in data["scenarios"] if s["scenario"] == "worker-kill"][0]
    assert len(kills["faults"]) == faults.WORKER_KILLS and kills["restarts"] >= faults.WORKER_KILLS
