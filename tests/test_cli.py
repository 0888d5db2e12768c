"""The ``zray`` command: start a head node, inspect it, connect a driver to
it, stop everything; and clear failures for wrong use.

``zray stop`` ends EVERY zray process of this user on the host, so these
tests skip (saying why) when zray processes they did not start are running:
they would kill them. Each test's cluster lives under a private temp dir and
on a non-default port, and ``zray stop`` always runs after it.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

import zray
from zray._private.node import command_line, free_port, zray_processes

PORT = 6391
ZRAY = [sys.executable, "-m", "zray._private.cli"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def env():
    """Environment for the CLI subprocesses: a private session root, no
    inherited cluster address. Skips when ``zray stop`` would kill zray
    processes someone else runs on this host."""
    if zray.is_initialized():
        zray.shutdown()
    others = zray_processes()
    if others:
        pytest.skip(f"`zray stop` would kill {len(others)} zray process(es) this test did "
                    f"not start (pids {sorted(p.pid for p in others)[:8]}...)")
    root = tempfile.mkdtemp(prefix="zcli_")     # short: ipc paths have a length limit
    environ = {k: v for k, v in os.environ.items()
               if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    environ["ZRAY_TEMP_DIR"] = root
    yield environ
    shutil.rmtree(root, ignore_errors=True)


def zray_cli(env, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ZRAY, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _ours(env) -> list[psutil.Process]:
    """zray processes of clusters under this module's private session root."""
    root = env["ZRAY_TEMP_DIR"]
    found = []
    for proc in zray_processes():
        if any(root in arg for arg in command_line(proc)):
            found.append(proc)
    return found


@pytest.fixture
def head(env):
    """``zray start --head --port 6391 --num-cpus 1``; ``zray stop`` after,
    whatever happens. Yields (gcs address, session dir, start output)."""
    try:
        out = zray_cli(env, "start", "--head", "--port", str(PORT), "--num-cpus", "1",
                       "--object-store-memory", str(128 * 1024 * 1024))
        assert out.returncode == 0, f"zray start failed:\n{out.stdout}\n{out.stderr}"
        with open(os.path.join(env["ZRAY_TEMP_DIR"], "current_cluster")) as f:
            current = json.load(f)
        yield current["gcs_address"], current["session_dir"], out.stdout
    finally:
        stopped = zray_cli(env, "stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr


# --------------------------------------------------------------------------
# a running head node
# --------------------------------------------------------------------------

def test_start_head_then_status_lists_one_alive_node(env, head):
    address, session_dir, started = head
    assert address == f"127.0.0.1:{PORT}"
    assert address in started and "zray stop" in started, started

    out = zray_cli(env, "status", timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert address in text
    assert "1 alive, 0 dead" in text, text
    assert len(re.findall(r"\bALIVE\b", text)) == 1, text
    assert re.search(r"^\s*CPU\s+0\s*/\s*1\s*$", text, re.M), text

    # it listens on loopback only, so it says how to let other hosts join
    # instead of printing a join command no other host could use
    assert "--node-ip-address" in started and "loopback" in started, started
    assert f"--address={address} --cluster-key-file" not in started, started

    # a second head on the same port is refused, and the first keeps running
    again = zray_cli(env, "start", "--head", "--port", str(PORT), timeout=30)
    assert again.returncode != 0
    assert str(PORT) in again.stderr and "zray stop" in again.stderr, again.stderr
    assert zray_cli(env, "status", timeout=30).returncode == 0


DRIVER = textwrap.dedent("""
    import os
    import zray

    zray.init(address="auto")

    @zray.remote
    def double(x):
        return 2 * x, os.getpid()

    out = zray.get([double.remote(i) for i in range(5)], timeout=60)
    assert [v for v, _ in out] == [0, 2, 4, 6, 8], out
    assert all(pid != os.getpid() for _, pid in out)
    nodes = [n for n in zray.nodes() if n["Alive"]]
    print("RESULT", zray.get_runtime_context().gcs_address, len(nodes),
          zray.cluster_resources().get("CPU"), flush=True)
    zray.shutdown()
""")


def test_driver_with_address_auto_runs_tasks_on_the_started_cluster(env, head, tmp_path):
    address, _, _ = head
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=90, cwd=str(tmp_path))
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert result == [f"RESULT {address} 1 1.0"], out.stdout

    # the driver left; the cluster (its one CPU) is free again
    def cpu_free():
        status = zray_cli(env, "status", timeout=30)
        return re.search(r"^\s*CPU\s+0\s*/\s*1\s*$", status.stdout, re.M)
    _wait_for(cpu_free, 10, "the CPU was not given back after the driver left")


def test_stop_ends_every_zray_process_and_leaves_no_shared_memory(env, head):
    _, session_dir, _ = head
    session = os.path.basename(session_dir)
    before = zray_processes()
    ours = _ours(env)
    modules = " ".join(" ".join(command_line(p)) for p in ours)
    for module in ("zray.gcs", "zray.raylet", "zray.worker"):
        assert f"-m {module}" in modules, f"no {module} process after zray start: {modules}"
    assert glob.glob(f"/dev/shm/zray_{session}_*"), "the head's arena should exist"

    stop_started = time.time()
    out = zray_cli(env, "stop", timeout=60)
    assert out.returncode == 0, out.stderr
    _wait_for(lambda: all(_gone(p.pid) for p in before), 10,
              "zray processes survived `zray stop`")
    survivors = []
    for proc in zray_processes():          # every `-m zray.` process of this user
        try:
            if proc.create_time() <= stop_started:
                survivors.append(" ".join(command_line(proc)))
        except psutil.NoSuchProcess:
            continue
    assert not survivors, f"`zray stop` left: {survivors}"
    assert not _ours(env), "a process of the stopped cluster is still running"
    assert not glob.glob(f"/dev/shm/zray_{session}_*"), "shared memory left behind"
    assert not glob.glob(os.path.join(session_dir, "sockets", "*")), "socket files left"

    status = zray_cli(env, "status", timeout=30)
    assert status.returncode != 0
    assert "no cluster" in status.stderr, status.stderr


# --------------------------------------------------------------------------
# wrong use: fast, clear, nonzero
# --------------------------------------------------------------------------

def test_start_joining_an_address_with_nothing_listening_fails_fast(env):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = zray_cli(env, "start", f"--address={address}", timeout=30)
    elapsed = time.monotonic() - started
    assert out.returncode != 0
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert address in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert not _ours(env), "a failed start left processes behind"


def test_start_without_head_or_address_exits_2_with_a_message(env):
    out = zray_cli(env, "start", timeout=30)
    assert out.returncode == 2
    assert "--head" in out.stderr and "--address" in out.stderr, out.stderr
    assert not _ours(env)


def test_status_without_a_cluster_says_so_and_exits_nonzero(env):
    out = zray_cli(env, "status", timeout=30)
    assert out.returncode != 0
    assert "no cluster" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_status_of_an_address_with_nothing_listening_says_so(env):
    address = f"127.0.0.1:{free_port()}"
    out = zray_cli(env, "status", "--address", address, timeout=30)
    assert out.returncode != 0
    assert address in out.stderr and "did not answer" in out.stderr, out.stderr


def test_start_help_shows_the_flags(env):
    exe = shutil.which("zray")
    assert exe, "the `zray` console script is not installed"
    out = subprocess.run([exe, "start", "--help"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    for flag in ("--head", "--address", "--port", "--num-cpus", "--num-gpus", "--resources",
                 "--object-store-memory", "--block"):
        assert flag in out.stdout, f"{flag} missing from `zray start --help`"


def test_status_into_a_closed_pipe_ends_quietly(env, head):
    """`zray status | head -1`: the reader goes away before status writes."""
    proc = subprocess.Popen([*ZRAY, "status"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()          # like `head` exiting before status prints
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
