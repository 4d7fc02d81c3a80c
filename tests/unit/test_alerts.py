"""Failed background jobs are visible in metrics but page nobody: every alert rule is
evaluated by promtool against a growing count of non-critical failed jobs."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "platform" / "prometheus" / "alerts.yml"


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def promtool_test(tmp_path: Path, series: list[dict[str, str]], expected: dict[str, list[dict[str, Any]]]) -> str:
    """Run `promtool test rules` over alerts.yml; return its output, failing the test on a mismatch."""
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (platform/test installs prometheus)")
    case = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": name, "exp_alerts": alerts}
                for name, alerts in expected.items()
                for at in ("10m", "1h", "3h")
            ],
        }],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(json.dumps(case))  # JSON is YAML
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_no_alert_fires_for_non_critical_failed_jobs(tmp_path: Path) -> None:
    growing = "0+5x240"  # five more failed background jobs every minute, for four hours
    series = [
        {"series": 'carillon_failed_jobs{state="failed",critical="false"}', "values": growing},
        {"series": 'carillon_failed_jobs{state="replayed",critical="false"}', "values": growing},
    ]

    output = promtool_test(tmp_path, series, {name: [] for name in alert_names()})

    assert "SUCCESS" in output


def test_the_harness_sees_an_alert_that_does_fire(tmp_path: Path) -> None:
    # The check above could pass because nothing ever fires; a dead letter does.
    series = [{"series": 'carillon_dead_letter_messages{queue="carillon.email.dlq"}', "values": "0+1x240"}]
    fired = {
        "exp_labels": {"severity": "ticket", "queue": "carillon.email.dlq"},
        "exp_annotations": {
            "summary": "carillon.email.dlq gained dead letters",
            "runbook": "docs/operations.md#carillondeadlettergrowing",
        },
    }

    output = promtool_test(tmp_path, series, {"CarillonDeadLetterGrowing": [fired]})

    assert "SUCCESS" in output
