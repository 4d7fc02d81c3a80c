"""`manage.py bench` keeps working: it runs and writes its results (never a timing check)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.processes import ROOT

pytestmark = pytest.mark.integration


def test_bench_pipeline_quick_runs_beside_its_baselines_and_writes_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "bench", "pipeline", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [summary_file] = tmp_path.glob("pipeline-*.json")
    summary = json.loads(summary_file.read_text())
    assert [row["name"] for row in summary["results"]] == [
        "raw kombu publish+consume", "raw Celery no-op task", "Carillon pipeline (deliveries)",
    ]
    assert all(row["items"] == 60 for row in summary["results"])
    assert set(summary["pipeline_latency_ms"]) == {"p50", "p90", "p99", "p99.9", "p100"}
    assert list(tmp_path.glob("pipeline-*.hgrm"))


def test_bench_refuses_an_unknown_scenario_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "bench", "fireworks"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert "fireworks" in result.stderr and "pipeline" in result.stderr
