"""The dashboard from the outside: ``zray start --head`` and ``zray.init``
start it (or not), print where it is; ``zray list``, ``zray summary tasks``,
``zray job ...`` and ``zray.util.state`` answer with Ray's rows."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import psutil

import zray
from zray._private.node import command_line, free_port, sweep_session, zray_processes
from zray.worker import global_state

from conftest import wait_for
from test_dashboard_helpers import Dashboard, local_dashboard

ZRAY = [sys.executable, "-m", "zray._private.cli"]


def _dashboard_pids() -> list[int]:
    return [p.pid for p in zray_processes()
            if any(a.startswith("zray.dashboard") for a in command_line(p)[:3])
            and p.pid in {c.pid for c in psutil.Process().children(recursive=True)}]


@zray.remote
def triple(x):
    return 3 * x


def test_init_without_dashboard_starts_none(start_cluster):
    start_cluster(include_dashboard=False)
    assert zray.get(triple.remote(2)) == 6
    assert _dashboard_pids() == []


def test_init_prints_the_dashboard_url_and_the_cli_answers(start_cluster, capsys):
    start_cluster(dashboard_port=free_port())
    printed = capsys.readouterr().err
    dash = local_dashboard()
    assert f"dashboard at {dash.url}" in printed and "dashboard.token" in printed
    assert zray.get([triple.remote(i) for i in range(4)]) == [0, 3, 6, 9]
    worker = global_state.worker
    env = {**os.environ, "ZRAY_ADDRESS": worker.gcs_address, "ZRAY_DASHBOARD_TOKEN": dash.token,
           "ZRAY_DASHBOARD_ADDRESS": dash.url}

    def cli(*args):
        out = subprocess.run([*ZRAY, *args], env=env, capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"zray {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    nodes = json.loads(cli("list", "nodes", "--format", "json"))
    assert [n["state"] for n in nodes] == ["ALIVE"]

    def finished():
        text = cli("list", "tasks", "--filter", "func_or_class_name=triple")
        return text.count("FINISHED") >= 4 and text
    assert "FUNC_OR_CLASS_NAME" in wait_for(finished, 20)
    summary = cli("summary", "tasks")
    assert "triple" in summary and "FINISHED: 4" in summary
    assert "NORMAL_TASK" in next(line for line in summary.splitlines() if "triple" in line)

    workdir = tempfile.mkdtemp()
    with open(os.path.join(workdir, "run.py"), "w") as f:
        f.write("print('from the working dir')\n")
    out = cli("job", "submit", "--submission-id", "cli-job", "--working-dir", workdir, "--",
              sys.executable, "run.py")
    assert "from the working dir" in out and "SUCCEEDED" in out
    assert "SUCCEEDED" in cli("job", "status", "cli-job")
    assert "from the working dir" in cli("job", "logs", "cli-job")
    assert "cli-job" in cli("job", "list")
    cli("job", "submit", "--submission-id", "cli-sleeper", "--no-wait", "--", "sleep", "60")
    wait_for(lambda: dash.get("/api/jobs/cli-sleeper").json()["status"] == "RUNNING", 20)
    assert "STOPPED" in cli("job", "stop", "cli-sleeper")
    cli("job", "delete", "cli-sleeper")
    assert dash.get("/api/jobs/cli-sleeper").status == 404
    shutil.rmtree(workdir)

    from zray.util import state
    assert state.list_nodes()[0]["state"] == "ALIVE"
    assert len(state.list_tasks(filters=[("func_or_class_name", "=", "triple")],
                                limit=2)) == 2
    summary = state.summarize_tasks()
    assert summary["summary"]["triple"]["state_counts"]["FINISHED"] == 4
    assert summary["summary"]["triple"]["type"] == "NORMAL_TASK"
    assert {j["submission_id"] for j in state.list_jobs() if j["type"] == "SUBMISSION"} \
        >= {"cli-job"}


def test_zray_start_head_starts_the_dashboard_and_shows_its_token_once():
    if zray.is_initialized():
        zray.shutdown()
    root = tempfile.mkdtemp(prefix="zdash_")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS", "ZRAY_DASHBOARD_TOKEN")
           and not k.startswith("ZRAY_CLUSTER_KEY")}
    env["ZRAY_TEMP_DIR"] = root
    port, dport = free_port(), free_port()
    try:
        out = subprocess.run([*ZRAY, "start", "--head", "--port", str(port), "--num-cpus", "1",
                              "--object-store-memory", str(128 << 20), "--dashboard-port",
                              str(dport), "--dashboard-allowed-hosts", "dash.example.org"],
                             env=env, capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert f"dashboard:             http://127.0.0.1:{dport}" in out.stdout
        token_line = [l for l in out.stdout.splitlines() if "dashboard token:" in l][0]
        token = token_line.split("dashboard token:")[1].split()[0]
        with open(os.path.join(root, "current_cluster")) as f:
            session_dir = json.load(f)["session_dir"]
        token_file = os.path.join(session_dir, "dashboard.token")
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        with open(token_file) as f:
            assert f.read().strip() == token
        dash = Dashboard(f"http://127.0.0.1:{dport}", token)
        wait_for(dash.answers, 30)
        assert dash.get("/api/v0/nodes").json()["data"]["result"]["total"] == 1
        assert dash.get("/api/version", token=None).status == 401
        assert dash.get("/api/version", headers={"Host": "dash.example.org"}).status == 200
        assert dash.get("/api/version", headers={"Host": "other.example.org"}).status == 403
        again = subprocess.run([*ZRAY, "start", "--head", "--port", str(free_port()),
                                "--dashboard-port", str(dport)], env=env, capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert again.returncode == 2 and "--dashboard-port" in again.stderr
    finally:
        ours = [p for p in zray_processes() if any(root in a for a in command_line(p))]
        for proc in ours:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(ours, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        for session in os.listdir(root) if os.path.isdir(root) else []:
            if session.startswith("session_"):
                sweep_session(os.path.join(root, session))
        shutil.rmtree(root, ignore_errors=True)
