"""Failure, by design: what a user sees when workers, tasks, drivers or whole
clusters die, and that zray cleans up after itself every time.

Every test here kills or stops something, so each starts its own cluster
(``start_cluster``); its teardown checks that nothing is left behind.
"""
from __future__ import annotations

import glob
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import zray
from zray.exceptions import GetTimeoutError, RayError, TaskCancelledError, WorkerCrashedError
from zray._private.node import free_port
from zray.worker import global_state

from conftest import assert_nothing_left, cmdline, wait_for, call_bounded as _call_bounded, process_gone as _gone


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------



def _read_pid(path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def _sleeper_task(**options):
    """A task that counts its attempts in ``counter``, and on its first
    attempt writes its pid to ``pid_file`` and sleeps (to be killed)."""

    def sleeper(pid_file, counter):
        attempt = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
        with open(counter, "w") as f:
            f.write(str(attempt))
        if attempt == 1:
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pid_file + ".tmp", pid_file)      # the reader never sees half a pid
            time.sleep(60)
        return ("finished", attempt, os.getpid())

    return zray.remote(**options)(sleeper) if options else zray.remote(sleeper)


def _started_running(tmp_path):
    """Wait until the sleeper's first attempt runs; return its worker's pid."""
    pid_file = tmp_path / "pid"
    return wait_for(lambda: _read_pid(pid_file), timeout=15)


def _square_all(n=4):
    @zray.remote
    def square(x):
        return x * x
    return zray.get([square.remote(i) for i in range(n)], timeout=20)


# --------------------------------------------------------------------------
# worker crashes
# --------------------------------------------------------------------------

def test_worker_killed_mid_task_is_retried_and_get_returns_value(start_cluster, tmp_path):
    start_cluster()
    sleeper = _sleeper_task()                       # default max_retries=3
    ref = sleeper.remote(str(tmp_path / "pid"), str(tmp_path / "counter"))
    victim = _started_running(tmp_path)
    assert victim != os.getpid()
    os.kill(victim, signal.SIGKILL)

    status, attempt, pid = zray.get(ref, timeout=30)
    assert status == "finished"
    assert attempt == 2, "the task should have run exactly twice"
    assert pid != victim, "the retry must run in a new worker"
    wait_for(lambda: _gone(victim), timeout=5)


def test_worker_killed_with_no_retries_raises_worker_crashed(start_cluster, tmp_path):
    start_cluster()
    sleeper = _sleeper_task(max_retries=0)
    ref = sleeper.remote(str(tmp_path / "pid"), str(tmp_path / "counter"))
    victim = _started_running(tmp_path)
    os.kill(victim, signal.SIGKILL)

    started = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        zray.get(ref, timeout=30)
    assert time.monotonic() - started < 10, "the raylet should notice the death at once"
    assert isinstance(info.value, RayError)
    assert (tmp_path / "counter").read_text() == "1", "max_retries=0 must not retry"


def test_cluster_runs_new_tasks_after_a_worker_crash(start_cluster, tmp_path):
    start_cluster(num_cpus=2)
    sleeper = _sleeper_task(max_retries=0)
    ref = sleeper.remote(str(tmp_path / "pid"), str(tmp_path / "counter"))
    os.kill(_started_running(tmp_path), signal.SIGKILL)
    with pytest.raises(WorkerCrashedError):
        zray.get(ref, timeout=30)

    # both CPUs are usable again: the crashed task gave back what it held
    assert _square_all(6) == [0, 1, 4, 9, 16, 25]
    wait_for(lambda: zray.available_resources().get("CPU") == 2.0, timeout=10)


def test_force_cancel_of_running_task_raises_cancelled_and_cluster_recovers(
        start_cluster, tmp_path):
    start_cluster()
    sleeper = _sleeper_task()                       # retries must not resurrect it
    ref = sleeper.remote(str(tmp_path / "pid"), str(tmp_path / "counter"))
    victim = _started_running(tmp_path)

    zray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        zray.get(ref, timeout=20)
    wait_for(lambda: _gone(victim), timeout=10)     # force=True kills its worker

    assert _square_all() == [0, 1, 4, 9]
    assert (tmp_path / "counter").read_text() == "1", "a cancelled task must not be retried"


# --------------------------------------------------------------------------
# a driver that dies
# --------------------------------------------------------------------------

DRIVER = textwrap.dedent("""
    import os, sys, time
    import zray
    zray.init(num_cpus=1, object_store_memory=64 * 1024 * 1024)

    @zray.remote
    def pid():
        return os.getpid()

    worker_pid = zray.get(pid.remote(), timeout=30)
    session = zray.worker.global_state.worker.session_dir
    print("READY", session, worker_pid, flush=True)
    time.sleep(300)
""")


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the child's stdout, or fail when none comes in time."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail(f"no line from the driver within {timeout}s (got {buf!r})")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"the driver exited early ({proc.poll()}): {buf!r}\n{err}")
            buf += chunk
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0].decode()


def test_sigkilled_driver_leaves_no_process_and_no_shared_memory(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
    started: list[psutil.Process] = []
    try:
        tag, session_dir, worker_pid = _read_line(proc, timeout=60).split()
        assert tag == "READY"
        started = psutil.Process(proc.pid).children(recursive=True)
        cmdlines = [" ".join(cmdline(p)) for p in started]
        for module in ("zray.gcs", "zray.raylet", "zray.worker"):
            assert any(f"-m {module}" in c for c in cmdlines), \
                f"the driver should have started a {module} process: {cmdlines}"
        assert int(worker_pid) in {p.pid for p in started}
        session = os.path.basename(session_dir)
        assert glob.glob(f"/dev/shm/zray_{session}_*"), "the driver's arena should exist"

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        wait_for(lambda: all(_gone(p.pid) for p in started), timeout=15)
        # the raylet gets SIGTERM (PDEATHSIG) and unlinks its arena on the way out,
        # and the socket files of the driver and workers that could not remove theirs
        wait_for(lambda: not glob.glob(f"/dev/shm/zray_{session}_*"), timeout=5)
        wait_for(lambda: not glob.glob(os.path.join(session_dir, "sockets", "*")), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for child in started:                     # only what this driver started
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(started, timeout=5)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


# --------------------------------------------------------------------------
# connecting, shutting down, starting again
# --------------------------------------------------------------------------

def test_init_with_nothing_listening_raises_connection_error_fast():
    if zray.is_initialized():
        zray.shutdown()
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        zray.init(address=address)
    elapsed = time.monotonic() - started
    assert elapsed < 7, f"took {elapsed:.1f}s: should fail within seconds, never hang"
    assert address in str(info.value)
    assert not zray.is_initialized()
    assert_nothing_left(None)


def test_shutdown_then_init_again_in_the_same_process(start_cluster):
    start_cluster()
    assert _square_all() == [0, 1, 4, 9]
    zray.shutdown()
    assert not zray.is_initialized()
    start_cluster()
    assert zray.is_initialized()
    assert _square_all() == [0, 1, 4, 9]
    assert len([n for n in zray.nodes() if n["Alive"]]) == 1


def test_shutdown_leaves_no_process_socket_or_shared_memory(start_cluster):
    start_cluster()
    assert _square_all() == [0, 1, 4, 9]
    big = zray.put(b"x" * (4 * 1024 * 1024))         # something in the arena
    assert len(zray.get(big, timeout=10)) == 4 * 1024 * 1024
    session_dir = global_state.worker.session_dir
    session = os.path.basename(session_dir)
    assert glob.glob(f"/dev/shm/zray_{session}_*")
    assert glob.glob(os.path.join(session_dir, "sockets", "*"))
    daemons = psutil.Process().children(recursive=True)
    assert daemons

    zray.shutdown()
    assert not zray.is_initialized()
    wait_for(lambda: all(_gone(p.pid) for p in daemons), timeout=10)
    assert_nothing_left(session_dir)


def _ref_of_a_finished_session(start_cluster):
    """The ref of a task that finished in a session that has since shut down."""
    start_cluster()

    @zray.remote
    def one():
        return 1

    ref = one.remote()
    assert zray.get(ref, timeout=20) == 1
    zray.shutdown()
    return ref


def test_ref_after_shutdown_gives_a_clear_error_not_a_hang(start_cluster):
    ref = _ref_of_a_finished_session(start_cluster)

    outcome, error = _call_bounded(lambda: zray.get(ref, timeout=5), timeout=10)
    assert outcome == "raised", f"get after shutdown returned {error!r}"
    assert isinstance(error, RayError)
    assert "init" in str(error), f"the error should say to call zray.init(): {error}"
    outcome, error = _call_bounded(lambda: zray.wait([ref], timeout=5), timeout=10)
    assert outcome == "raised" and isinstance(error, RayError)


def test_ref_from_an_earlier_session_errors_in_a_new_one(start_cluster):
    ref = _ref_of_a_finished_session(start_cluster)
    start_cluster()

    # its owner (the old core worker) is gone: an error, neither a value nor a hang
    outcome, error = _call_bounded(lambda: zray.get(ref, timeout=10), timeout=15)
    assert outcome == "raised", f"get of a stale ref returned {error!r}"
    assert isinstance(error, RayError), repr(error)
    assert not isinstance(error, GetTimeoutError), \
        "get of a ref whose owner is gone waits for ever (timed out) instead of failing"
    assert _square_all() == [0, 1, 4, 9]
