"""prometheus/rules: `promtool check rules`, `promtool test rules`, and the conventions every alert keeps."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO / "prometheus" / "tests").glob("*.yml"))
REQUIRED_ALERTS = {"ViralSpike", "PipelineStalled", "ConsumerLagHigh", "LateEventsHigh", "SinkFailing",
                   "DeadLettersRising"}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (apt-get install prometheus; scripts/bootstrap installs it)")


def _alerts() -> dict[str, dict]:
    found = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    return found


@needs_promtool
def test_promtool_check_rules():
    assert RULES, "no rule files"
    out = subprocess.run([promtool, "check", "rules", *map(str, RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests():
    assert RULE_TESTS, "no rule tests"
    out = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_detects_a_broken_rule(tmp_path):
    """The checks above can fail: a rule with a PromQL syntax error is rejected."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum(rate(x[5m])\n")
    out = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_required_alerts_have_for_severity_and_explanations():
    alerts = _alerts()
    assert REQUIRED_ALERTS <= set(alerts), REQUIRED_ALERTS - set(alerts)
    for name, rule in alerts.items():
        assert "for" in rule, f"{name}: no for:"
        assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}, name
        notes = rule.get("annotations", {})
        assert notes.get("summary") and len(notes.get("description", "")) > 80, f"{name}: say why it fired"


def test_every_alert_is_tested_firing_and_silent():
    fired, silent = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    for name in _alerts():
        assert name in fired, f"{name}: no test where it fires"
        assert name in silent, f"{name}: no test where it stays silent"
