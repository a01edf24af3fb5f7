"""`tagpulse backtest --small` (what CI runs) meets the goals, and the scoring behind it is right."""
from __future__ import annotations

import json

from tagpulse.cli import main
from tagpulse.core import scenarios as S
from tagpulse.core.spikes import Spike


def test_small_backtest_meets_the_goals(tmp_path, capsys):
    out = tmp_path / "backtest.json"
    code = main(["backtest", "--small", "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, printed
    assert report["goals_met"] and "MET" in printed
    overall = report["overall"]
    assert overall["precision"] >= 0.9
    assert overall["recall"] >= 0.9
    assert overall["median_ttd_windows"] <= 2
    names = {r["scenario"] for r in report["scenarios"]}
    assert {"einbuchfuerkai", "single-author-flood", "quiet-days"} <= names
    # the scenarios without bursts raise nothing
    for r in report["scenarios"]:
        if r["bursts"] == 0:
            assert r["spikes"] == 0, r


def test_unknown_scenario_is_a_clear_error(capsys):
    assert main(["backtest", "--scenario", "no-such-thing"]) == 2
    assert "unknown scenario no-such-thing" in capsys.readouterr().err


def _spike(tag: str, at: int) -> Spike:
    return Spike(tag, "twitter", 3600, at - 3600, at, 100, 10.0, 5.0, "test", "because")


def test_event_level_scoring():
    scenario = S.Scenario("hand-made", "", 0, 100_000, bursts=[
        S.Burst("a", "twitter", 10_000, 13_600, 10, "step"),
        S.Burst("b", "twitter", 50_000, 53_600, 10, "step"),
        S.Burst("c", "twitter", 70_000, 73_600, 2, "step"),      # below the goal size: not in recall
    ])
    spikes = [
        _spike("a", 10_600),           # 2 windows of 5 min after the start: true
        _spike("a", 17_000),           # within end + tolerance (one window size): true
        _spike("a", 30_000),           # long after: false
        _spike("c", 70_300),           # the 2× burst: true, but not part of the goal recall
        _spike("zzz", 10_600),         # another tag: false
    ]
    result = S.evaluate(scenario, spikes, hop=300, tolerance_s=3600)
    assert (result.spikes, result.true_spikes) == (5, 3)
    assert result.precision == 0.6
    assert (result.goal_bursts, result.goal_detected) == (2, 1)   # b was missed
    assert result.recall == 0.5
    assert result.ttd == [2]
    assert result.recall_all == 2 / 3
    assert len(result.missed) == 1 and result.missed[0].startswith("b/twitter")
