"""The dashboard: a daemon of the local cluster, safe by default (token, Host
allow-list, Origin check; the three CVE replays), Ray's Jobs and State APIs,
Prometheus metrics, bad input refused with a clear 4xx."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

import zray
from zray._private.node import command_line, free_port, zray_processes
from zray.worker import global_state

from conftest import _descendants, assert_nothing_left, process_gone, wait_for
from test_dashboard_helpers import start_local


@pytest.fixture(scope="module")
def dash():
    """A local 2-CPU cluster with its dashboard on a free port."""
    if zray.is_initialized():
        zray.shutdown()
    d = start_local(dashboard_port=free_port())
    session_dir = global_state.worker.session_dir
    d.session_dir = session_dir
    yield d
    zray.shutdown()
    assert_nothing_left(session_dir)


def _dashboard_pids() -> list[int]:
    mine = _descendants()
    return [p.pid for p in zray_processes() if p.pid in mine
            and any(a.startswith("zray.dashboard") for a in command_line(p)[:3])]


def _server_pid() -> int:
    """The web server's (gunicorn's master's; its worker is its child)."""
    servers = [pid for pid in _dashboard_pids()
               if "zray.dashboard.server" in command_line(psutil.Process(pid))]
    for pid in servers:
        if psutil.Process(pid).ppid() not in servers:
            return pid
    raise AssertionError("no dashboard server process")


# --------------------------------------------------------------------------
# the process
# --------------------------------------------------------------------------

def test_local_init_starts_the_dashboard_and_shutdown_stops_it(dash):
    assert dash.get("/api/version").json()["ray_version"] >= "2"
    assert len(_dashboard_pids()) == 3          # its supervisor, server and server's worker
    token_file = os.path.join(dash.session_dir, "dashboard.token")
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    log_files = os.listdir(os.path.join(dash.session_dir, "logs"))
    assert "dashboard.log" in log_files


def test_dashboard_server_that_dies_is_restarted(dash):
    old = _server_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: process_gone(old), 10)

    def restarted() -> bool:
        try:
            return _server_pid() != old and dash.answers()
        except AssertionError:      # no server yet (the old one's worker may still answer
            return False            # while it lets go of the port)
    wait_for(restarted, 60)


# --------------------------------------------------------------------------
# security: token, Host, Origin; the CVE replays
# --------------------------------------------------------------------------

def test_cve_2023_48022_unauthenticated_job_submission_is_refused_and_never_runs(dash):
    marker = os.path.join(tempfile.mkdtemp(), "pwned")
    reply = dash.post("/api/jobs/", {"entrypoint": f"touch {marker}"}, token=None)
    assert reply.status == 401
    assert "token" in reply.json()["msg"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    jobs = dash.get("/api/jobs/").json()
    assert not [j for j in jobs if marker in j["entrypoint"]]
    # an accepted job would have run by the time one submitted after it ends
    later = dash.post("/api/jobs/", {"entrypoint": "true"}).json()["submission_id"]
    dash.wait_job(later, {"SUCCEEDED"})
    assert not os.path.exists(marker)


def test_cve_2026_27482_unauthenticated_delete_is_refused_and_job_stays(dash):
    sid = dash.post("/api/jobs/", {"entrypoint": "true"}).json()["submission_id"]
    dash.wait_job(sid, {"SUCCEEDED"})
    assert dash.request("DELETE", f"/api/jobs/{sid}", token=None).status == 401
    assert dash.request("DELETE", f"/api/jobs/{sid}", token="x" * 43).status == 401
    assert dash.get(f"/api/jobs/{sid}").json()["status"] == "SUCCEEDED"


def test_cve_2025_62593_foreign_host_is_refused_whatever_credentials(dash):
    for host in ("attacker.example", f"attacker.example:{dash.port}", "127.0.0.1.nip.io"):
        reply = dash.get("/api/jobs/", headers={"Host": host})
        assert reply.status == 403, host
        assert dash.post("/api/jobs/", {"entrypoint": "true"},
                         headers={"Host": host}).status == 403
    assert dash.get("/api/jobs/", headers={"Host": f"localhost:{dash.port}"}).status == 200
    assert dash.get("/api/jobs/", headers={"Host": f"127.0.0.1:{dash.port}"}).status == 200


def test_every_page_and_api_needs_the_token(dash):
    for path in ("/api/jobs/", "/api/v0/nodes", "/metrics", "/api/events", "/api/version",
                 "/api/v0/logs/file?filename=dashboard.log"):
        assert dash.get(path, token=None).status == 401, path
        assert dash.get(path, token="wrong-" + dash.token).status == 401, path
    for path in ("/", "/nodes", "/jobs", "/logs", "/static/dashboard.js"):
        reply = dash.get(path, token=None)
        assert reply.status == 302 and "/login" in reply.headers["Location"], path


def test_login_form_sets_an_httponly_samestrict_cookie_that_opens_pages(dash):
    wrong = dash.post("/login", b"token=nope", token=None,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
    reply = dash.post("/login", f"token={dash.token}".encode(), token=None,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 302
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert dash.token not in cookie                 # a derived value, not the token
    value = cookie.split(";")[0]
    page = dash.get("/", token=None, headers={"Cookie": value})
    assert page.status == 200 and 'id="node-count"' in page.text
    assert dash.get("/", token=None, headers={"Cookie": value[:-2] + "00"}).status == 302


def test_mutating_request_from_another_origin_is_refused(dash):
    login = dash.post("/login", f"token={dash.token}".encode(), token=None,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    cookie = login.headers["Set-Cookie"].split(";")[0]
    # another site, an opaque origin, and a page on another port of this host
    # (cookies do not tell ports apart, so the Origin check must)
    for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{dash.port + 1}",
                   f"http://localhost:{dash.port + 1}"):
        reply = dash.post("/api/jobs/", {"entrypoint": "true"}, token=None,
                          headers={"Cookie": cookie, "Origin": origin})
        assert reply.status == 403, origin
    reply = dash.post("/api/jobs/", {"entrypoint": "true"}, headers={
        "Sec-Fetch-Site": "cross-site"})
    assert reply.status == 403
    same = dash.post("/api/jobs/", {"entrypoint": "true"}, token=None, headers={
        "Cookie": cookie, "Origin": f"http://127.0.0.1:{dash.port}"})
    assert same.status == 200


def _server_args(session_dir, *extra):
    return [sys.executable, "-m", "zray.dashboard.server", "--gcs-address", "127.0.0.1:1",
            "--session-dir", session_dir, "--port", str(free_port()), *extra]


def test_non_loopback_bind_without_token_is_refused(tmp_path):
    os.makedirs(tmp_path / "logs")
    env = {k: v for k, v in os.environ.items() if k != "ZRAY_DASHBOARD_TOKEN"}
    for extra in (["--host", "0.0.0.0", "--no-auth"], ["--host", "0.0.0.0"]):
        # (--no-auth does not exist: every dashboard needs its token)
        out = subprocess.run(_server_args(str(tmp_path), *extra), env=env, timeout=60,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert out.returncode == 2, out.stderr
        assert "token" in out.stderr, out.stderr


def test_token_file_open_to_others_is_refused(tmp_path):
    os.makedirs(tmp_path / "logs")
    token = tmp_path / "token"
    token.write_text("s" * 40)
    os.chmod(token, 0o644)
    out = subprocess.run(_server_args(str(tmp_path), "--token-file", str(token)), timeout=60,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "chmod 600" in out.stderr, out.stderr


# --------------------------------------------------------------------------
# bad input: a clear 4xx, and the dashboard keeps serving
# --------------------------------------------------------------------------

def test_bad_job_requests_get_a_clear_4xx_and_the_dashboard_keeps_serving(dash):
    malformed = dash.post("/api/jobs/", b"{not json", headers={
        "Content-Type": "application/json"})
    assert malformed.status == 400 and "not valid JSON" in malformed.json()["msg"]
    unknown = dash.post("/api/jobs/", {"entrypoint": "true", "shell": "/bin/sh"})
    assert unknown.status == 400 and "unknown field" in unknown.json()["msg"]
    huge = dash.post("/api/jobs/", {"entrypoint": "x" * 1_000_000})
    assert huge.status in (400, 413) and "entrypoint" in huge.json()["msg"] or \
        huge.status == 413
    not_object = dash.post("/api/jobs/", [1, 2])
    assert not_object.status == 400
    bad_env = dash.post("/api/jobs/", {"entrypoint": "true", "runtime_env": {"pip": ["x"]}})
    assert bad_env.status == 400 and "not supported" in bad_env.json()["msg"]
    big = dash.post("/api/jobs/", b"x" * (100 * 1024 * 1024), headers={
        "Content-Type": "application/json"}, timeout=60)
    assert big.status == 413 and "too large" in big.json()["msg"]
    assert dash.get("/api/version").status == 200


def test_log_paths_outside_the_log_directory_are_never_served(dash):
    for name in ("../cluster.key", "/etc/passwd", "..%2Fcluster.key", "sub/../../cluster.key",
                 "%00"):
        reply = dash.get(f"/api/v0/logs/file?filename={name}")
        assert reply.status in (400, 404), name
        assert b"secret" not in reply.body
    os.symlink(os.path.join(dash.session_dir, "cluster.key"),
               os.path.join(dash.session_dir, "logs", "link.log"))
    reply = dash.get("/api/v0/logs/file?filename=link.log")
    assert reply.status == 400 and b"secret" not in reply.body
    ok = dash.get("/api/v0/logs/file?filename=dashboard.log")
    assert ok.status == 200 and "dashboard serving" in ok.json()["data"]["text"]


def test_bad_state_queries_get_a_clear_400(dash):
    assert dash.get("/api/v0/tasks?limit=abc").status == 400
    assert dash.get("/api/v0/tasks?limit=0").status == 400
    reply = dash.get("/api/v0/actors?filter_keys=state&filter_predicates=~&filter_values=x")
    assert reply.status == 400 and "predicate" in reply.json()["msg"]
    assert dash.get("/api/v0/bogus").status == 404


# --------------------------------------------------------------------------
# Jobs API
# --------------------------------------------------------------------------

def test_job_runs_its_entrypoint_with_env_vars_and_joins_the_cluster(dash):
    script = ("import os, zray; zray.init(); "
              "print('hello', os.environ['GREETING'], len(zray.nodes()), flush=True)")
    reply = dash.post("/api/jobs/", {
        "entrypoint": f"{sys.executable} -c \"{script}\"", "submission_id": "hello-job",
        "runtime_env": {"env_vars": {"GREETING": "world"}}, "metadata": {"owner": "test"}})
    assert reply.status == 200, reply.text
    assert reply.json() == {"job_id": "hello-job", "submission_id": "hello-job"}
    job = dash.wait_job("hello-job", {"SUCCEEDED", "FAILED"})
    assert job["status"] == "SUCCEEDED", job["message"]
    assert job["type"] == "SUBMISSION" and job["metadata"] == {"owner": "test"}
    assert job["start_time"] <= job["end_time"] and job["driver_exit_code"] == 0
    assert "hello world 1" in dash.get("/api/jobs/hello-job/logs").json()["logs"]
    again = dash.post("/api/jobs/", {"entrypoint": "true", "submission_id": "hello-job"})
    assert again.status == 400 and "already exists" in again.json()["msg"]


def test_entrypoint_resources_are_held_for_the_job_while_it_runs(dash):
    script = ("import zray; zray.init(); "
              "print('cpus free', zray.available_resources().get('CPU', 0), flush=True)")
    sid = dash.post("/api/jobs/", {"entrypoint": f"{sys.executable} -c \"{script}\"",
                                   "entrypoint_num_cpus": 2}).json()["submission_id"]
    job = dash.wait_job(sid, {"SUCCEEDED", "FAILED"})
    assert job["status"] == "SUCCEEDED", job["message"]
    assert job["entrypoint_num_cpus"] == 2
    assert "cpus free 0" in dash.get(f"/api/jobs/{sid}/logs").json()["logs"]
    wait_for(lambda: zray.available_resources().get("CPU", 0) == 2, timeout=20)


def test_job_waits_pending_for_entrypoint_resources_no_node_has_and_can_be_stopped(dash):
    sid = dash.post("/api/jobs/", {"entrypoint": "echo never-runs",
                                   "entrypoint_resources": {"unicorn": 1}}).json()[
        "submission_id"]
    wait_for(lambda: "waiting for its entrypoint resources" in
             dash.get(f"/api/jobs/{sid}").json()["message"], timeout=20)
    assert dash.get(f"/api/jobs/{sid}").json()["status"] == "PENDING"
    assert dash.post(f"/api/jobs/{sid}/stop").json() == {"stopped": True}
    job = dash.wait_job(sid, {"STOPPED", "FAILED", "SUCCEEDED"}, timeout=20)
    assert job["status"] == "STOPPED"
    assert "never-runs" not in dash.get(f"/api/jobs/{sid}/logs").json()["logs"]
    wait_for(lambda: not [g for g in zray.util.placement_group_table().values()
                          if g["name"] == f"_job_{sid}" and g["state"] != "REMOVED"],
             timeout=20)
    bad = dash.post("/api/jobs/", {"entrypoint": "true", "entrypoint_resources": {"x": -1}})
    assert bad.status == 400 and "entrypoint_resources" in bad.json()["msg"]


def test_failed_job_reports_its_exit_code_and_last_logs(dash):
    sid = dash.post("/api/jobs/", {"entrypoint": "echo oops-output; exit 3"}).json()[
        "submission_id"]
    job = dash.wait_job(sid, {"FAILED", "SUCCEEDED"})
    assert job["status"] == "FAILED" and job["driver_exit_code"] == 3
    assert "exit code 3" in job["message"] and "oops-output" in job["message"]


def test_stopped_job_gets_sigterm_then_sigkill_and_is_stopped(dash):
    sid = dash.post("/api/jobs/", {"entrypoint": "trap '' TERM; sleep 60"}).json()[
        "submission_id"]
    dash.wait_job(sid, {"RUNNING"})
    started = time.monotonic()
    assert dash.post(f"/api/jobs/{sid}/stop").json() == {"stopped": True}
    job = dash.wait_job(sid, {"STOPPED", "FAILED", "SUCCEEDED"}, timeout=20)
    assert job["status"] == "STOPPED"
    assert time.monotonic() - started < 15          # SIGKILL after the grace period
    assert dash.post(f"/api/jobs/{sid}/stop").json() == {"stopped": False}
    assert dash.request("DELETE", f"/api/jobs/{sid}").json() == {"deleted": True}
    assert dash.get(f"/api/jobs/{sid}").status == 404


def test_running_job_cannot_be_deleted(dash):
    sid = dash.post("/api/jobs/", {"entrypoint": "sleep 30"}).json()["submission_id"]
    dash.wait_job(sid, {"RUNNING"})
    reply = dash.request("DELETE", f"/api/jobs/{sid}")
    assert reply.status == 400 and "stop it first" in reply.json()["msg"]
    dash.post(f"/api/jobs/{sid}/stop")
    dash.wait_job(sid, {"STOPPED"})


def test_job_rows_are_kept_in_the_gcs(dash):
    sid = dash.post("/api/jobs/", {"entrypoint": "true"}).json()["submission_id"]
    dash.wait_job(sid, {"SUCCEEDED"})
    from zray.dashboard import rows
    gcs = global_state.worker.gcs
    kept = {r["submission_id"]: r for r in rows.submitted_jobs(gcs)}
    assert kept[sid]["status"] == "SUCCEEDED"


def test_uploaded_package_is_the_jobs_working_dir(dash, tmp_path):
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("helper.py", "VALUE = 42\n")
        z.writestr("main.py", "import helper; print('value', helper.VALUE)\n")
    name = "_ray_pkg_0123456789abcdef.zip"
    assert dash.get(f"/api/packages/gcs/{name}").status == 404
    assert dash.request("PUT", f"/api/packages/gcs/{name}", body=buf.getvalue()).status == 200
    assert dash.get(f"/api/packages/gcs/{name}").status == 200
    sid = dash.post("/api/jobs/", {"entrypoint": f"{sys.executable} main.py",
                                   "runtime_env": {"working_dir": f"gcs://{name}"}}).json()[
        "submission_id"]
    assert dash.wait_job(sid, {"SUCCEEDED", "FAILED"})["status"] == "SUCCEEDED"
    assert "value 42" in dash.get(f"/api/jobs/{sid}/logs").json()["logs"]
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escape.py", "x")
    reply = dash.request("PUT", "/api/packages/gcs/_ray_pkg_evil.zip", body=evil.getvalue())
    assert reply.status == 400 and "outside" in reply.json()["msg"]
    assert dash.request("PUT", "/api/packages/gcs/..%2Fx.zip", body=b"").status in (400, 404)


# --------------------------------------------------------------------------
# State API and metrics
# --------------------------------------------------------------------------

@zray.remote
def square(x):
    return x * x


def test_state_api_lists_nodes_actors_and_tasks_with_rays_fields(dash):
    @zray.remote
    class Holder:
        def ping(self):
            return 1

    holder = Holder.options(name="holder").remote()
    assert zray.get(holder.ping.remote()) == 1
    assert zray.get([square.remote(i) for i in range(3)]) == [0, 1, 4]

    nodes = dash.get("/api/v0/nodes").json()["data"]["result"]
    assert nodes["total"] == 1
    node = nodes["result"][0]
    assert node["state"] == "ALIVE" and node["resources_total"]["CPU"] == 2

    actors = dash.get("/api/v0/actors?filter_keys=name&filter_predicates=%3D"
                      "&filter_values=holder").json()["data"]["result"]["result"]
    assert [a["class_name"].rsplit(".")[-1] for a in actors] == ["Holder"]
    assert actors[0]["state"] == "ALIVE" and actors[0]["pid"]

    def squares():
        tasks = dash.get("/api/v0/tasks?filter_keys=func_or_class_name&filter_predicates=%3D"
                         "&filter_values=square&limit=2").json()["data"]["result"]
        return tasks if tasks["num_filtered"] >= 3 else None
    tasks = wait_for(squares, 20)
    assert tasks["num_after_truncation"] == 2 and len(tasks["result"]) == 2
    assert {"task_id", "state", "job_id", "node_id", "worker_id", "func_or_class_name",
            "start_time_ms", "end_time_ms", "events"} <= set(tasks["result"][0])
    zray.kill(holder)


@zray.remote(max_retries=0)
def fails_on_purpose():
    raise ValueError("broken on purpose")


def test_task_page_shows_the_error_and_traceback_of_a_failed_task(dash):
    ref = fails_on_purpose.remote()
    with pytest.raises(ValueError):
        zray.get(ref)

    def failed():
        rows = dash.get("/api/v0/tasks?filter_keys=func_or_class_name&filter_predicates=%3D"
                        "&filter_values=fails_on_purpose").json()["data"]["result"]["result"]
        return [r for r in rows if r["state"] == "FAILED"]
    task = wait_for(failed, 20)[0]
    page = dash.get(f"/tasks/{task['task_id']}")
    assert page.status == 200
    assert "broken on purpose" in page.text and "Traceback" in page.text
    assert dash.get("/tasks/" + "0" * 32).status == 404


def test_metrics_are_prometheus_text_with_per_node_series(dash):
    reply = dash.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.text
    for name in ("zray_node_cpu_total", "zray_node_object_store_used_bytes",
                 "zray_node_object_store_spilled_bytes", "zray_tasks", "zray_actors",
                 "zray_gcs_requests_per_second", "zray_node_workers",
                 "zray_node_mem_used_bytes"):
        assert f"# TYPE {name} gauge" in text, name
    assert 'zray_tasks{State="FINISHED"}' in text

    def used_memory():
        text = dash.get("/metrics").text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("zray_node_mem_used_bytes{")]
        return values and values[0] > 0
    wait_for(used_memory, 10)           # the raylets' heartbeat stats arrived


def _first_sse_event(dash, path: str, timeout: float = 20.0) -> tuple[str, dict]:
    """The first event of a Server-Sent Events stream (then hang up)."""
    import http.client
    import json
    conn = http.client.HTTPConnection(dash.host, dash.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {dash.token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith(
            "text/event-stream")
        event = None
        while True:
            line = resp.fp.readline().decode()
            if line.startswith("event: "):
                event = line[7:].strip()
            elif line.startswith("data: ") and event:
                return event, json.loads(line[6:])
    finally:
        conn.close()


@zray.remote
def count_requests(n):
    from zray.util.metrics import Counter
    served = Counter("dash_test_served", description="requests served", tag_keys=("route",))
    for _ in range(n):
        served.inc(tags={"route": "home"})
    return n


def test_user_metrics_from_tasks_appear_in_metrics(dash):
    assert zray.get(count_requests.remote(3)) == 3
    wait_for(lambda: 'ray_dash_test_served_total{route="home"} 3.0' in dash.get("/metrics").text,
             20)


def test_live_streams_send_cluster_summaries_and_tail_logs(dash):
    event, summary = _first_sse_event(dash, "/api/events")
    assert event == "summary" and summary["nodes_alive"] == 1
    assert {"tasks_by_state", "history", "jobs", "tasks"} <= set(summary)
    sid = dash.post("/api/jobs/", {"entrypoint": "echo tailed-line"}).json()["submission_id"]
    dash.wait_job(sid, {"SUCCEEDED"})
    event, chunk = _first_sse_event(dash, f"/api/jobs/{sid}/logs/stream")
    assert event == "log" and "tailed-line" in chunk["text"]
    event, chunk = _first_sse_event(dash, "/api/v0/logs/stream?filename=gcs.log")
    assert event == "log" and chunk["offset"] > 0
