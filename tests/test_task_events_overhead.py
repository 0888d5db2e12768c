"""What task-event reporting costs the core rows: benchmarks/task_events_overhead.py
runs its rows on two clusters in turns and reports per row;
benchmarks/task_events_toggle.py switches reporting in the same processes."""
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


TOGGLE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "task_events_toggle.py")


@pytest.mark.timeout(180)
def test_reporting_is_switched_in_the_same_processes_and_only_on_halves_report(tmp_path):
    """benchmarks/task_events_toggle.py: the GCS's table gets the calls made
    while reporting was switched on, and none of those made while it was off
    (some may be lost under load: a worker drops a batch the GCS does not take)."""
    out = tmp_path / "toggle.json"
    done = subprocess.run(
        [sys.executable, TOGGLE, "--rounds", "2", "--seconds", "0.2",
         "--rows", "1_1_actor_calls_async", "--json", str(out)],
        capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())["1_1_actor_calls_async"]
    made = {mode: sum(half["calls"] for half in result[mode]) for mode in ("off", "on", "off2")}
    assert all(len(result[mode]) == 2 for mode in made) and min(made.values()) > 0
    assert 0.9 * made["on"] <= result["reported"] <= made["on"], (result["reported"], made)
    assert "1_1_actor_calls_async" in done.stdout and "task rows" in done.stdout
