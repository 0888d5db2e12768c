"""benchmarks/dashboard_overhead.py (what the running dashboard costs the
core rows) runs its paired rounds and reports per row, on a short run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "dashboard_overhead.py")


@pytest.mark.timeout(180)
def test_overhead_benchmark_reports_the_median_cost_of_each_row_over_paired_rounds(tmp_path):
    out_json = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--rounds", "2", "--duration", "0.1", "--watch",
         "--repeats", "1", "--control", "--frozen",
         "--rows", "single_client_put_calls,1_1_actor_calls_sync", "--limit-pct", "1000",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "2 paired rounds" in done.stdout
    assert "the dashboard used" in done.stdout and "times a second" in done.stdout
    assert "stand-in median" in done.stdout and "vs frozen median" in done.stdout
    result = json.loads(out_json.read_text())
    assert result["values"]["_cpu"]["cluster_s"] > 0
    assert result["values"]["_cpu"]["dashboard_wakeups"] > 0
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"single_client_put_calls", "1_1_actor_calls_sync"}
    for row in rows.values():
        assert row["rounds"] == 2 and row["ok"] is True
        assert row["min_pct"] <= row["median_pct"] <= row["max_pct"]
        assert len(row["control_costs_pct"]) == 2     # the stand-in's half of each round
        assert row["control"]["min_pct"] <= row["control"]["median_pct"] \
            <= row["control"]["max_pct"]
        assert len(row["frozen_costs_pct"]) == 2      # the frozen dashboard's half


@pytest.mark.timeout(240)
def test_overhead_benchmark_per_row_pairs_each_rows_halves_back_to_back(tmp_path):
    out_json = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--per-row", "--rounds", "2", "--duration", "0.1",
         "--repeats", "1", "--rows", "single_client_put_calls,1_1_actor_calls_sync",
         "--limit-pct", "1000", "--json", str(out_json)],
        capture_output=True, text=True, timeout=200, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert done.stderr.count("row by row") == 2
    result = json.loads(out_json.read_text())
    assert result["values"]["_cpu"]["dashboard_wakeups"] > 0     # a dashboard ran
    for name in ("single_client_put_calls", "1_1_actor_calls_sync"):
        values = result["values"][name]
        assert len(values["off"]) == len(values["on"]) == 2
        assert all(values["off"]) and all(values["on"])
    bad = subprocess.run([sys.executable, SCRIPT, "--per-row", "--frozen"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "leave out --control and --frozen" in bad.stderr


def _bench():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import dashboard_overhead as bench
    finally:
        sys.path.pop(0)
    return bench


def test_overhead_benchmark_reports_the_stand_ins_cost_as_the_noise_floor():
    bench = _bench()
    values = {"single_client_tasks_sync": {"off": [1000.0, 1000.0], "on": [900.0, 1000.0],
                                           "control": [950.0, 1050.0]}}
    [row] = bench.summarize(values, limit_pct=5.0)
    assert row["control_costs_pct"] == pytest.approx([5.0, -5.0])
    assert row["control"]["median_pct"] == pytest.approx(0.0)
    report = bench.format_report([row], 5.0, watch=False)
    assert "stand-in median" in report and "+0.0%" in report


@pytest.mark.timeout(60)
def test_overhead_benchmarks_stand_in_is_idle_and_stopped_by_pid():
    bench = _bench()
    stand_in = bench.StandIn()
    try:
        assert stand_in.settled                 # idle once it imported the dashboard's modules
        assert stand_in.cpu_s() > 0.05 and stand_in.wakeups() > 0
    finally:
        stand_in.stop()
    assert stand_in.proc.returncode is not None


def test_overhead_benchmark_fails_when_a_median_exceeds_the_limit(tmp_path):
    bench = _bench()
    values = {"single_client_tasks_sync": {"off": [1000.0, 1000.0, 1000.0],
                                           "on": [900.0, 960.0, 1000.0]},
              "get_large_array_1mb": {"off": [1.0, 1.0, 1.0], "on": [1.02, 1.0, 1.01]}}
    rows = {r["name"]: r for r in bench.summarize(values, limit_pct=5.0)}
    assert rows["single_client_tasks_sync"]["median_pct"] == pytest.approx(4.0)
    assert rows["single_client_tasks_sync"]["max_pct"] == pytest.approx(10.0)
    assert rows["get_large_array_1mb"]["median_pct"] == pytest.approx(1.0)   # latency: on/off-1
    assert all(r["ok"] for r in rows.values())
    rows = bench.summarize(values, limit_pct=3.0)
    assert [r["name"] for r in rows if not r["ok"]] == ["single_client_tasks_sync"]


def test_overhead_benchmark_compares_the_running_dashboard_with_itself_frozen():
    bench = _bench()
    values = {"1_1_actor_calls_sync": {"off": [1000.0, 1000.0], "on": [900.0, 950.0],
                                       "frozen": [1000.0, 950.0]}}
    [row] = bench.summarize(values, limit_pct=5.0)
    assert row["frozen_costs_pct"] == pytest.approx([10.0, 0.0])
    assert row["frozen"]["median_pct"] == pytest.approx(5.0)
    report = bench.format_report([row], 5.0, watch=False)
    assert "vs frozen median" in report and "+5.0%" in report
