"""Fast tests of zray._private.microbenchmark's formatting and argument parsing.

No runtime is started here.  The module is loaded straight from its file so
these tests don't depend on the state of the zray package's __init__.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "zray", "_private", "microbenchmark.py")


def _load():
    spec = importlib.util.spec_from_file_location("_zray_microbenchmark_under_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mb = _load()


def row(name, value, unit=None, error=None):
    d = {"name": name, "value": value, "unit": unit or mb._UNITS.get(name, "")}
    if error is not None:
        d["error"] = error
        d["value"] = None
    return d


# ---------------------------------------------------------------- rows

def test_row_names_and_units():
    assert mb.ROW_NAMES[0] == "init_to_first_task"
    assert "single_client_tasks_and_get_batch" not in mb.ROW_NAMES
    expected = {
        "init_to_first_task": "s",
        "single_client_tasks_sync": "tasks/s",
        "single_client_tasks_async": "tasks/s",
        "single_client_wait_1k_refs": "waits/s",
        "single_client_put_calls": "calls/s",
        "single_client_get_calls": "calls/s",
        "single_client_put_gigabytes": "GB/s",
        "tasks_1mb_arg_echo": "tasks/s",
        "get_large_array_1mb": "ms",
        "get_large_array_100mb": "ms",
        "1_1_actor_calls_sync": "calls/s",
        "1_1_actor_calls_async": "calls/s",
        "1_1_actor_calls_concurrent": "calls/s",
        "1_1_async_actor_calls_sync": "calls/s",
        "1_1_async_actor_calls_async": "calls/s",
        "1_n_actor_calls_async": "calls/s",
        "actor_create_call_kill": "actors/s",
        "task_events_absorbed": "tasks/s",
        "task_events_gcs_growth_past_bound": "MB",
        "transfer_500mb_between_nodes": "GB/s",
        "actor_create_drop_per_s": "actors/s",
        "gcs_restart_to_first_task_s": "s",
        "placement_group_create_removal": "groups/s",
    }
    assert mb._UNITS == expected
    assert len(set(mb.ROW_NAMES)) == len(mb.ROW_NAMES)
    for name, _, meth in mb.ROWS:
        assert meth is None or callable(getattr(mb._Bench, meth))


def test_select_rows_all_by_default():
    assert mb.select_rows(None) == mb.ROW_NAMES
    assert mb.select_rows("") == mb.ROW_NAMES
    assert mb.select_rows([]) == mb.ROW_NAMES


def test_select_rows_prefix_and_canonical_order():
    got = mb.select_rows("get_large,single_client_put")
    assert got == [
        "single_client_put_calls",
        "single_client_put_gigabytes",
        "get_large_array_1mb",
        "get_large_array_100mb",
    ]
    assert mb.select_rows(["1_1_async", " init_to_first_task "]) == [
        "init_to_first_task",
        "1_1_async_actor_calls_sync",
        "1_1_async_actor_calls_async",
    ]
    # exact name, duplicates collapse
    assert mb.select_rows("actor_create_call_kill,actor_create_call") == [
        "actor_create_call_kill"]


def test_select_rows_unknown():
    with pytest.raises(ValueError, match="nope"):
        mb.select_rows("single_client_tasks_sync,nope")


# ---------------------------------------------------------------- argparse

def test_parse_args_defaults():
    a = mb.parse_args([])
    assert a.backend == "zray"
    assert a.rows is None
    assert a.duration == mb.DEFAULT_DURATION
    assert a.json is False
    assert a.compare_ray is False
    assert a.ray_python is None
    assert a.init_probe is False
    assert a.timeout == mb.DEFAULT_ROW_TIMEOUT


def test_parse_args_all_options():
    a = mb.parse_args([
        "--backend", "ray", "--rows", "single_client_get,1_n", "--duration", "0.5",
        "--json", "--compare-ray", "--ray-python", "/x/python", "--timeout", "9",
    ])
    assert a.backend == "ray"
    assert a.rows == ["single_client_get_calls", "1_n_actor_calls_async"]
    assert a.duration == 0.5
    assert a.json and a.compare_ray
    assert a.ray_python == "/x/python"
    assert a.timeout == 9.0


def test_parse_args_hidden_probe_flag():
    assert mb.parse_args(["--_init-probe"]).init_probe is True
    assert "_init-probe" not in mb.build_parser().format_help()


@pytest.mark.parametrize("argv", [
    ["--rows", "bogus"],
    ["--duration", "0"],
    ["--duration", "abc"],
    ["--unknown-flag"],
])
def test_parse_args_errors(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        mb.parse_args(argv)
    assert ei.value.code == 2


def test_both_backends_run_without_their_dashboard_unless_asked():
    off = {"num_cpus": 2, "object_store_memory": 2 * 1024**3, "include_dashboard": False}
    assert mb.init_kwargs("zray") == mb.init_kwargs("ray") == off
    assert mb.init_kwargs("zray", dashboard=True) == {**off, "include_dashboard": True}
    assert mb.parse_args(["--with-dashboard"]).with_dashboard
    assert not mb.parse_args([]).with_dashboard


def test_find_ray_python(monkeypatch, tmp_path):
    assert mb.find_ray_python("/explicit/python") == "/explicit/python"
    monkeypatch.setenv("ZRAY_RAY_PYTHON", "/from/env")
    assert mb.find_ray_python() == "/from/env"
    monkeypatch.delenv("ZRAY_RAY_PYTHON")
    fake = tmp_path / "python"
    fake.write_text("")
    monkeypatch.setattr(mb, "_DEFAULT_RAY_VENV_PYTHON", str(fake))
    assert mb.find_ray_python() == str(fake)
    monkeypatch.setattr(mb, "_DEFAULT_RAY_VENV_PYTHON", str(tmp_path / "missing"))
    monkeypatch.setattr(mb.importlib.util, "find_spec", lambda name: None)
    assert mb.find_ray_python() is None
    monkeypatch.setattr(mb.importlib.util, "find_spec", lambda name: object())
    assert mb.find_ray_python() == sys.executable


def test_parse_json_rows_skips_noise():
    rows = [row("single_client_put_calls", 12.5)]
    out = "some log line\n" + json.dumps(rows) + "\n(raylet) trailing noise\n"
    assert mb._parse_json_rows(out) == rows
    assert mb._parse_json_rows("no json here\n[not json\n") is None


# ---------------------------------------------------------------- format_table

def test_format_value():
    assert mb.format_value(None) == "n/a"
    assert mb.format_value(20305.4) == "20,305"
    assert mb.format_value(698.2) == "698"
    assert mb.format_value(37.94) == "37.9"
    assert mb.format_value(2.1512) == "2.151"
    assert mb.format_value(0.0931) == "0.093"
    assert mb.format_value(0.00123) == "0.00123"


def test_format_table_single():
    rows = [
        row("init_to_first_task", 2.15),
        row("single_client_tasks_sync", 698.4),
        row("1_1_actor_calls_sync", None, error="AttributeError: module 'zray' has no attribute 'kill'"),
    ]
    out = mb.format_table(rows)
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["init_to_first_task", "2.150", "s"]
    assert lines[1].split() == ["single_client_tasks_sync", "698", "tasks/s"]
    assert lines[2].startswith("1_1_actor_calls_sync")
    assert lines[2].endswith("n/a (AttributeError: module 'zray' has no attribute 'kill')")
    # values are column-aligned
    assert len({line.index(line.split()[1]) for line in lines}) == 1
    assert mb.format_table([]) == ""


def test_format_table_compare_and_ratio_direction():
    z = [
        row("init_to_first_task", 0.5),              # lower is better: 2.0/0.5 = 4x
        row("single_client_tasks_sync", 1400.0),     # 1400/700 = 2x
        row("get_large_array_100mb", 0.2),           # ms, 0.1/0.2 = 0.5x
        row("1_1_actor_calls_sync", None, error="NotImplementedError: actors"),
        row("tasks_1mb_arg_echo", 100.0),            # no ray counterpart
    ]
    r = [
        row("init_to_first_task", 2.0),
        row("single_client_tasks_sync", 700.0),
        row("get_large_array_100mb", 0.1),
        row("1_1_actor_calls_sync", 1942.0),
        row("actor_create_call_kill", 2.4),          # ray only
    ]
    out = mb.format_table(z, r)
    lines = out.splitlines()
    assert lines[0].startswith("#") and "ray/zray" in lines[0] and ">1x" in lines[0]
    assert lines[1].split() == ["row", "zray", "ray", "ratio"]
    body = {line.split()[0]: line for line in lines[2:]}
    assert list(body) == [
        "init_to_first_task", "single_client_tasks_sync", "get_large_array_100mb",
        "1_1_actor_calls_sync", "tasks_1mb_arg_echo", "actor_create_call_kill",
    ]
    assert body["init_to_first_task"].split()[-1] == "4.00x"
    assert body["single_client_tasks_sync"].split()[-1] == "2.00x"
    assert "1,400 tasks/s" in body["single_client_tasks_sync"]
    assert "700 tasks/s" in body["single_client_tasks_sync"]
    assert body["get_large_array_100mb"].split()[-1] == "0.50x"
    assert "n/a (NotImplementedError: actors)" in body["1_1_actor_calls_sync"]
    assert body["1_1_actor_calls_sync"].split()[-1] == "n/a"
    assert body["tasks_1mb_arg_echo"].split()[-1] == "n/a"
    assert " - " in body["tasks_1mb_arg_echo"]
    assert body["actor_create_call_kill"].split()[-1] == "n/a"
    # ratio column is aligned
    assert len({line.rindex(line.split()[-1]) for line in lines[1:4]}) == 1


def test_ratio_edge_cases():
    assert mb.ratio(None, row("single_client_put_calls", 1.0)) is None
    assert mb.ratio(row("single_client_put_calls", 0.0), row("single_client_put_calls", 1.0)) is None
    assert mb.ratio(row("single_client_put_calls", 3.0), row("single_client_put_calls", 1.5)) == 2.0
    assert mb.ratio(row("get_large_array_1mb", 3.0), row("get_large_array_1mb", 1.5)) == 0.5


def test_run_bad_row_selection_raises():
    with pytest.raises(ValueError):
        mb.run("zray", rows="bogus")


def test_script_help_runs_without_zray():
    # The file must work as a plain script with only stdlib + numpy.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, os.path.abspath(_PATH), "--help"],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=os.path.dirname(os.path.abspath(_PATH)))
    assert proc.returncode == 0, proc.stderr
    assert "--compare-ray" in proc.stdout


def test_task_events_overhead_pairs_rounds_and_alternates_which_goes_first(monkeypatch):
    """Each round runs both modes (which goes first alternates); the cost is
    the median of the rounds' own costs, not a ratio of bests, so a round
    the machine ran slow for both modes does not count as a cost."""
    calls = []
    # (off, on) per round: round 2 is slow for both; reporting costs 10% in each
    values = iter([100.0, 90.0, 45.0, 50.0, 200.0, 180.0])

    def fake_run(backend, rows, duration, row_timeout, progress):
        calls.append(os.environ["ZRAY_TASK_EVENTS_REPORT_INTERVAL_MS"])
        value = next(values)
        return [{"name": "single_client_tasks_async", "value": value},
                {"name": "get_large_array_1mb", "value": value / 100}]

    monkeypatch.setattr(mb, "run", fake_run)
    rows = mb.task_events_overhead(["single_client_tasks_async", "get_large_array_1mb"],
                                   repeats=3)
    assert calls == ["0", "1000", "1000", "0", "0", "1000"]
    tasks, array = rows
    assert tasks["cost_pct"] == pytest.approx(10.0) and tasks["spread"] == \
        pytest.approx([10.0, 10.0])
    assert (tasks["off"], tasks["on"]) == (100.0, 90.0)
    # ms: lower is better, so a smaller "on" is a negative cost
    assert array["cost_pct"] == pytest.approx(-10.0)
    assert "+10.0%" in mb.format_overhead(rows)
