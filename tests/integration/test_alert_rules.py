"""The Prometheus alert rules: valid for promtool, unit-tested, and each one documented.

``promtool`` comes from the Debian package ``prometheus`` (``make packages`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics
from support.markdown import github_anchors

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_PREFIX = "https://example.invalid/mailsyncd/blob/main/docs/operations.md#"  # generate.py
SEVERITIES = {"critical", "warning", "info"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make packages` (Debian package prometheus)")
    return path


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def exported_metrics() -> set[str]:
    """The metric names the daemon exports, as the SPEC writes them (counters with _total)."""
    registry = CollectorRegistry()
    Metrics(registry, ["contoso"])
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }


def test_promtool_check_rules_accepts_the_alert_file() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,  # rule_files in the test file are relative to it
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    # A case that fires for one series while others stay silent shows both at once; every
    # test above also lists an evaluation time at which nothing fires.


def test_every_alert_has_severity_summary_description_and_a_runbook_that_exists() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [group["name"] for group in groups] == ["mailsyncd"]
    anchors = github_anchors(OPERATIONS.read_text())
    alerts = _alerts()
    assert len(alerts) >= 8
    names = [rule["alert"] for rule in alerts]
    assert len(set(names)) == len(names), "duplicate alert names"
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), f"{name}: {url}"
        anchor = url.removeprefix(RUNBOOK_PREFIX)
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"


def test_alert_expressions_use_only_metrics_the_daemon_exports() -> None:
    # promtool's unit tests feed their own series, so a misspelt metric would pass them.
    names = exported_metrics()
    for rule in _alerts():
        for name in re.findall(r"\bmailsyncd_\w+", rule["expr"]):
            assert re.sub(r"_(bucket|sum|count)$", "", name) in names, f"{rule['alert']}: {name}"


def test_operations_doc_describes_every_exported_metric() -> None:
    text = OPERATIONS.read_text()
    missing = sorted(name for name in exported_metrics() if f"`{name}`" not in text)
    assert missing == [], "metrics missing from docs/operations.md"


def test_github_anchors_follow_githubs_rules() -> None:
    doc = "# Top\n## Metrics reference\n### `mailsyncd_polls_total` (counter)\n## Top\n"
    assert github_anchors(doc) == {
        "top",
        "metrics-reference",
        "mailsyncd_polls_total-counter",
        "top-1",
    }
