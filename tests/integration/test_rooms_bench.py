"""`manage.py bench ordered` keeps working: it runs its three phases and writes its
results (never a timing check)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.processes import ROOT

pytestmark = pytest.mark.integration


def test_bench_ordered_quick_runs_beside_its_baselines_and_writes_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "bench", "ordered", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [summary_file] = tmp_path.glob("ordered-*.json")
    summary = json.loads(summary_file.read_text())
    unordered, naive, ordered, paced = summary["results"]
    assert [unordered["name"], naive["name"], ordered["name"]] == ["unordered", "naive fixed pause", "ordered"]
    assert paced["name"].startswith("ordered at ")
    assert unordered["messages"] == ordered["messages"] == 60
    for run in (ordered, paced):
        # Every message ended (acked, or timed out when its ack was among the lost
        # ones), in order, each handed over only after its predecessor ended.
        assert sum(run["statuses"].values()) == run["messages"]
        assert set(run["statuses"]) <= {"acked", "timed_out"}
        assert run["platform"]["order_violations"] == 0
        assert run["sent_before_predecessor_ended"] == 0
    assert set(summary["ordered_overhead_beyond_previous_ack_ms"]) == {"p50", "p90", "p99", "p99.9", "p99.99", "p100"}
    assert len(list(tmp_path.glob("ordered-*.hgrm"))) == 6
