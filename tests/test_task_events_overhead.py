"""benchmarks/task_events_overhead.py (what task-event reporting costs the
core rows) runs its rows on two clusters in turns and reports per row."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "task_events_overhead.py")
ROWS = "single_client_tasks_sync,1_1_actor_calls_sync"


def _run(tmp_path, *extra):
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--rounds", "2", "--sessions", "1", "--duration", "0.1",
         "--pause", "0.1", "--answer-timeout", "60", "--rows", ROWS, "--json", str(out),
         *extra],
        capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    return done, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.timeout(180)
def test_reporting_cost_is_measured_in_pairs_on_a_reporting_and_a_quiet_cluster(tmp_path):
    done, result = _run(tmp_path, "--limit-pct", "1000")
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for row in ROWS.split(","):
        assert len(result["costs_pct"][row]) == 2
        assert all(v > 0 for mode in ("off", "on") for v in result["values"][row][mode])
        line = next(x for x in done.stdout.splitlines() if x.startswith(row))
        assert line.split()[1] == "2"               # rounds
    # the two clusters differ in reporting alone: one's GCS has the rows'
    # tasks, the other's only the actor creations the GCS saw itself
    assert result["task_rows"]["on"] > 100 and result["task_rows"]["off"] <= 2


@pytest.mark.timeout(180)
def test_reporting_cost_benchmark_fails_when_a_median_exceeds_the_limit(tmp_path):
    done, result = _run(tmp_path, "--limit-pct", "-1000")
    assert done.returncode == 1, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert result["task_rows"]["on"] > 0
