"""THE acceptance test of the Jobs API: Ray's own
``ray.job_submission.JobSubmissionClient``, from a stock ``ray[default]`` in
a separate virtualenv (``ZRAY_RAY_PYTHON`` or ``/tmp/rayvenv/bin/python``),
submits a job with a local working_dir and env_vars to a zray cluster, polls
it to SUCCEEDED, reads its logs, submits one that it stops, and deletes it.
Skipped when no such interpreter exists, except under CI=true where that fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import zray
from zray._private.node import free_port
from zray.worker import global_state

from conftest import assert_nothing_left
from test_dashboard_helpers import start_local

RAY_PYTHON = os.environ.get("ZRAY_RAY_PYTHON") or "/tmp/rayvenv/bin/python"

CLIENT = textwrap.dedent("""
    import json, sys, time
    from ray.job_submission import JobSubmissionClient, JobStatus
    url, token, workdir, python = sys.argv[1:5]
    out = {}
    client = JobSubmissionClient(url, headers={"Authorization": "Bearer " + token})
    sid = client.submit_job(entrypoint=python + " main.py",
                            runtime_env={"working_dir": workdir,
                                         "env_vars": {"GREETING": "from-ray"}},
                            metadata={"by": "ray-client"})
    deadline = time.time() + 90
    while client.get_job_status(sid) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                             JobStatus.STOPPED):
        assert time.time() < deadline, "job did not finish"
        time.sleep(0.2)
    info = client.get_job_info(sid)
    out["status"] = str(info.status.value)
    out["message"] = info.message
    out["metadata"] = info.metadata
    out["logs"] = client.get_job_logs(sid)
    out["listed"] = sid in [j.submission_id for j in client.list_jobs()]
    sleeper = client.submit_job(entrypoint="sleep 120")
    while client.get_job_status(sleeper) != JobStatus.RUNNING:
        assert time.time() < deadline, "sleeper did not start"
        time.sleep(0.1)
    out["stopped"] = client.stop_job(sleeper)
    while client.get_job_status(sleeper) not in (JobStatus.STOPPED, JobStatus.FAILED,
                                                 JobStatus.SUCCEEDED):
        assert time.time() < deadline, "sleeper did not stop"
        time.sleep(0.1)
    out["sleeper_status"] = str(client.get_job_status(sleeper).value)
    out["deleted"] = client.delete_job(sleeper)
    out["after_delete"] = sleeper in [j.submission_id for j in client.list_jobs()]
    try:
        JobSubmissionClient(url, headers={"Authorization": "Bearer wrong"})
        out["wrong_token"] = "accepted"
    except Exception as err:
        out["wrong_token"] = type(err).__name__
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture
def ray_python():
    if not os.path.exists(RAY_PYTHON):
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Ray interpreter at {RAY_PYTHON}: .ci/run creates /tmp/rayvenv "
                        f"(or set ZRAY_RAY_PYTHON)")
        pytest.skip(f"no Ray interpreter at {RAY_PYTHON} (set ZRAY_RAY_PYTHON)")
    return RAY_PYTHON


@pytest.mark.timeout(300)
def test_rays_job_submission_client_runs_stops_and_deletes_jobs(ray_python, tmp_path):
    if zray.is_initialized():
        zray.shutdown()
    dash = start_local(dashboard_port=free_port())
    session_dir = global_state.worker.session_dir
    try:
        workdir = tmp_path / "project"
        workdir.mkdir()
        (workdir / "helper.py").write_text("WORD = 'uploaded'\n")
        (workdir / "main.py").write_text(textwrap.dedent("""
            import os, helper, zray
            zray.init()
            @zray.remote
            def double(x):
                return 2 * x
            print("job says", helper.WORD, os.environ["GREETING"],
                  zray.get(double.remote(21)), flush=True)
        """))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ZRAY_", "RAY_", "PYTHON"))}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        out = subprocess.run([ray_python, "-c", CLIENT, dash.url, dash.token, str(workdir),
                              sys.executable], env=env, capture_output=True, text=True,
                             timeout=240, stdin=subprocess.DEVNULL)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        assert lines, f"the Ray client failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        result = json.loads(lines[-1][len("RESULT "):])
        assert result["status"] == "SUCCEEDED", result["message"]
        assert "job says uploaded from-ray 42" in result["logs"]
        assert result["metadata"] == {"by": "ray-client"} and result["listed"]
        assert result["stopped"] is True and result["sleeper_status"] == "STOPPED"
        assert result["deleted"] is True and result["after_delete"] is False
        assert result["wrong_token"] != "accepted"
    finally:
        zray.shutdown()
        assert_nothing_left(session_dir)
