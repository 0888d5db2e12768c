"""Job log tailing over a websocket (``/api/jobs/<id>/logs/tail``), as Ray's
own clients do it: ``JobSubmissionClient.tail_job_logs`` and ``ray job
submit`` from a stock ``ray[default]`` (``/tmp/rayvenv``, see
test_dashboard_ray_client.py), the guard on the upgrade, bounds on clients
that stop reading or go away, and the gunicorn worker's life with its master."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import simple_websocket

import zray
from zray._private.node import command_line, free_port, zray_processes
from zray.dashboard import log_tail
from zray.worker import global_state

from conftest import _descendants, assert_nothing_left, process_gone, wait_for
from test_dashboard_helpers import start_local
from test_dashboard_ray_client import RAY_PYTHON

#: a job that prints LINES lines over about 6 s
LINES = 12
PRINTER = (f"{sys.executable} -c \"import time\nfor i in range({LINES}): "
           f"print('tail line', i, flush=True); time.sleep(0.5)\"")


@pytest.fixture(scope="module")
def dash():
    if zray.is_initialized():
        zray.shutdown()
    d = start_local(dashboard_port=free_port())
    d.session_dir = global_state.worker.session_dir
    yield d
    zray.shutdown()
    assert_nothing_left(d.session_dir)


@pytest.fixture
def ray_python():
    if not os.path.exists(RAY_PYTHON):
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Ray interpreter at {RAY_PYTHON}: .ci/run creates /tmp/rayvenv")
        pytest.skip(f"no Ray interpreter at {RAY_PYTHON} (set ZRAY_RAY_PYTHON)")
    return RAY_PYTHON


def _ray_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZRAY_", "RAY_", "PYTHON"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _submit(dash, entrypoint: str) -> str:
    reply = dash.post("/api/jobs/", {"entrypoint": entrypoint})
    assert reply.status == 200, reply.text
    return reply.json()["submission_id"]


def _upgrade_headers(**extra) -> dict:
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **extra}


def _ws_url(dash, submission_id: str) -> str:
    return f"ws://{dash.host}:{dash.port}/api/jobs/{submission_id}/logs/tail"


def _dashboard_procs(dash) -> list[psutil.Process]:
    mine = _descendants()
    return [p for p in zray_processes() if p.pid in mine
            and "zray.dashboard.server" in command_line(p)]


def _master_and_worker(dash) -> tuple[psutil.Process, psutil.Process]:
    procs = _dashboard_procs(dash)
    pids = {p.pid for p in procs}
    masters = [p for p in procs if p.ppid() not in pids]
    workers = [p for p in procs if p.ppid() in pids]
    assert len(masters) == 1 and len(workers) == 1, procs
    return masters[0], workers[0]


# --------------------------------------------------------------------------
# Ray's own clients
# --------------------------------------------------------------------------

TAIL_CLIENT = textwrap.dedent("""
    import asyncio, json, sys, time
    from ray.job_submission import JobSubmissionClient
    url, token, sid, marker = sys.argv[1:5]
    client = JobSubmissionClient(url, headers={"Authorization": "Bearer " + token})
    async def tail():
        chunks = []
        async for chunk in client.tail_job_logs(sid):
            chunks.append([time.time(), chunk])
            open(marker, "a").close()       # the job goes on once a line came live
        return chunks
    chunks = asyncio.run(tail())
    print("RESULT " + json.dumps({"chunks": chunks, "ended": time.time(),
                                  "status": str(client.get_job_status(sid).value)}))
""")


@pytest.mark.timeout(120)
def test_rays_tail_job_logs_receives_every_line_live_and_ends_when_the_job_ends(
        dash, ray_python, tmp_path):
    marker = tmp_path / "first-line-received"
    # the job prints a line, waits until the client has it, then prints the rest
    sid = _submit(dash, f"{sys.executable} -c \"import os, time\n"
                        f"print('tail line 0', flush=True)\n"
                        f"deadline = time.time() + 60\n"
                        f"while not os.path.exists('{marker}') and time.time() < deadline: "
                        f"time.sleep(0.05)\n"
                        f"for i in range(1, {LINES}): print('tail line', i, flush=True); "
                        f"time.sleep(0.1)\"")
    out = subprocess.run([ray_python, "-c", TAIL_CLIENT, dash.url, dash.token, sid,
                          str(marker)],
                         env=_ray_env(), capture_output=True, text=True, timeout=90,
                         stdin=subprocess.DEVNULL)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"Ray's client failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    text = "".join(chunk for _, chunk in result["chunks"])
    assert text.splitlines() == [f"tail line {i}" for i in range(LINES)]
    assert result["status"] == "SUCCEEDED"     # the tail ended because the job did
    assert result["chunks"][0][1] == "tail line 0\n", "the first line did not come alone"


@pytest.mark.timeout(120)
def test_ray_job_submit_prints_the_jobs_output_and_exits_0(dash, ray_python):
    ray_cli = os.path.join(os.path.dirname(ray_python), "ray")
    out = subprocess.run(
        [ray_cli, "job", "submit", "--address", dash.url,
         "--headers", json.dumps({"Authorization": f"Bearer {dash.token}"}), "--",
         sys.executable, "-c", "print('hello from a ray job submit', flush=True)"],
        env=_ray_env(), capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "hello from a ray job submit" in out.stdout + out.stderr


# --------------------------------------------------------------------------
# the guard on the upgrade
# --------------------------------------------------------------------------

def test_websocket_upgrade_without_the_token_is_refused_with_401(dash):
    sid = _submit(dash, "true")
    reply = dash.get(f"/api/jobs/{sid}/logs/tail", token=None, headers=_upgrade_headers())
    assert reply.status == 401 and "token" in reply.json()["msg"]
    reply = dash.get(f"/api/jobs/{sid}/logs/tail", token="wrong" * 8,
                     headers=_upgrade_headers())
    assert reply.status == 401


def test_websocket_upgrade_with_a_foreign_host_or_origin_is_refused_with_403(dash):
    sid = _submit(dash, "true")
    reply = dash.get(f"/api/jobs/{sid}/logs/tail",
                     headers=_upgrade_headers(Host=f"attacker.example:{dash.port}"))
    assert reply.status == 403 and "Host" in reply.json()["msg"]
    reply = dash.get(f"/api/jobs/{sid}/logs/tail",
                     headers=_upgrade_headers(Origin="http://attacker.example"))
    assert reply.status == 403 and "Origin" in reply.json()["msg"]


def test_bad_websocket_handshake_is_a_clear_400_and_the_dashboard_keeps_serving(dash):
    sid = _submit(dash, "true")
    headers = _upgrade_headers()
    del headers["Sec-WebSocket-Key"]
    reply = dash.get(f"/api/jobs/{sid}/logs/tail", headers=headers)
    assert reply.status == 400 and "websocket handshake" in reply.json()["msg"]
    assert dash.get("/api/version").status == 200


def test_websocket_of_an_unknown_job_is_a_404_before_the_upgrade(dash):
    reply = dash.get("/api/jobs/zraysubmit_0123456789abcdef/logs/tail",
                     headers=_upgrade_headers())
    assert reply.status == 404 and "does not exist" in reply.json()["msg"]


def test_websocket_from_a_page_of_this_dashboard_is_accepted(dash):
    sid = _submit(dash, "true")
    _raw_upgrade(dash, sid, origin=dash.url).close()


def test_websocket_with_the_token_streams_the_log_then_closes_normally(dash):
    sid = _submit(dash, PRINTER)
    ws = simple_websocket.Client.connect(
        _ws_url(dash, sid), headers={"Authorization": f"Bearer {dash.token}"})
    text = ""
    try:
        while True:
            chunk = ws.receive(timeout=30)
            assert chunk is not None, "no frame within 30 s"
            text += chunk
    except simple_websocket.ConnectionClosed as closed:
        assert closed.reason == log_tail.NORMAL
    assert text.count("tail line") == LINES


# --------------------------------------------------------------------------
# bounds
# --------------------------------------------------------------------------

def _raw_upgrade(dash, sid: str, rcvbuf: int | None = None,
                 origin: str | None = None) -> socket.socket:
    """A websocket handshake on a raw socket; returns it after the 101."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((dash.host, dash.port))
    extra = {"Origin": origin} if origin else {}
    head = "".join(f"{k}: {v}\r\n" for k, v in _upgrade_headers(
        Host=f"{dash.host}:{dash.port}", Authorization=f"Bearer {dash.token}",
        **extra).items())
    s.sendall(f"GET /api/jobs/{sid}/logs/tail HTTP/1.1\r\n{head}\r\n".encode())
    assert s.recv(12) == b"HTTP/1.1 101"
    return s


@pytest.mark.timeout(120)
def test_client_that_never_reads_neither_grows_memory_nor_blocks_other_requests(dash):
    sid = _submit(dash, f"{sys.executable} -c \"import sys\nfor i in range(400): "
                        f"sys.stdout.write('x' * 100_000 + chr(10))\"")      # 40 MB
    dash.wait_job(sid, {"SUCCEEDED"})
    _, worker = _master_and_worker(dash)
    before = worker.memory_info().rss
    stuck = _raw_upgrade(dash, sid, rcvbuf=4096)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:     # the server fills the socket meanwhile
            t0 = time.monotonic()
            assert dash.get("/api/version", timeout=5).status == 200
            assert time.monotonic() - t0 < 2.0
            time.sleep(0.2)
        assert worker.memory_info().rss - before < 20 << 20
        # the stuck tail gives up after its send timeout: the worker lets go
        # of the connection (still never read from this side)
        port = stuck.getsockname()[1]
        assert _worker_holds(worker, port)
        wait_for(lambda: not _worker_holds(worker, port), log_tail.SEND_TIMEOUT_S + 15,
                 interval=0.2)
    finally:
        stuck.close()


def _worker_holds(worker: psutil.Process, client_port: int) -> bool:
    """The dashboard worker has an open socket to our ``client_port``."""
    return any(c.raddr and c.raddr.port == client_port
               for c in worker.net_connections(kind="tcp"))


@pytest.mark.timeout(120)
def test_closed_clients_end_their_tails_and_free_their_slots(dash):
    sid = _submit(dash, "sleep 60")
    try:
        # three times the streams open at once: each closed one gives its slot back
        for _ in range(3 * 8):
            wait_for(lambda: _connects(dash, sid), 10)
    finally:
        dash.post(f"/api/jobs/{sid}/stop")


def _connects(dash, sid: str) -> bool:
    try:
        ws = simple_websocket.Client.connect(
            _ws_url(dash, sid), headers={"Authorization": f"Bearer {dash.token}"})
    except simple_websocket.ConnectionError:
        return False
    ws.close()
    return True


# --------------------------------------------------------------------------
# the server's processes
# --------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_killed_gunicorn_master_takes_its_worker_along_and_is_restarted(dash):
    master, worker = _master_and_worker(dash)
    os.kill(master.pid, signal.SIGKILL)
    wait_for(lambda: process_gone(master.pid) and process_gone(worker.pid), 10)
    wait_for(lambda: dash.answers() and len(_dashboard_procs(dash)) == 2, 30)
    new_master, _ = _master_and_worker(dash)
    assert new_master.pid != master.pid
