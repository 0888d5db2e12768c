"""Actor lifetimes and failures: an actor's process killed with SIGKILL,
with and without restarts and task retries; actors that die with their
driver; detached actors that outlive it and are found from another driver.

Tests that kill processes start their own cluster (``start_cluster``). The
driver tests run a ``zray start --head`` cluster of their own (in a private
temp dir) and drivers as subprocesses.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

import zray
from zray.exceptions import ActorDiedError, RayActorError

from conftest import wait_for, process_gone as _gone

HEAD_PORT = 6393
HEAD_ADDRESS = f"127.0.0.1:{HEAD_PORT}"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------



def _read_pid(path) -> int | None:
    try:
        text = open(path).read()
    except FileNotFoundError:
        return None
    return int(text) if text else None


@zray.remote
class Counter:
    """Counts its calls; ``inits`` counts constructor runs across restarts
    (in a file, as the process's memory does not survive)."""

    def __init__(self, inits_file=None):
        self.value = 0
        if inits_file:
            n = int(open(inits_file).read()) + 1 if os.path.exists(inits_file) else 1
            with open(inits_file, "w") as f:
                f.write(str(n))

    def incr(self):
        self.value += 1
        return self.value

    def pid(self):
        return os.getpid()

    def slow(self, pid_file, seconds):
        """Write this process's pid to ``pid_file`` (atomically), then sleep."""
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        time.sleep(seconds)
        return ("done", os.getpid())


def _kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _gone(pid), timeout=10)


def _restarted_pid(actor, old_pid: int, timeout: float = 30) -> int:
    """Call the actor until it answers from a new process; return its pid.

    With max_task_retries=0 a call that races the death may fail (at-most-once,
    as in Ray), so calls are repeated until the restarted actor answers."""
    def answer():
        try:
            return zray.get(actor.pid.remote(), timeout=timeout)
        except RayActorError:
            return None

    pid = wait_for(answer, timeout=timeout, interval=0.1)
    assert pid != old_pid, "the actor answered from its killed process"
    return pid


# --------------------------------------------------------------------------
# kill -9 of an actor's process
# --------------------------------------------------------------------------

def test_killed_actor_with_max_restarts_restarts_and_state_resets(start_cluster, tmp_path):
    start_cluster()
    inits = str(tmp_path / "inits")
    actor = Counter.options(max_restarts=1).remote(inits)
    assert zray.get([actor.incr.remote() for _ in range(3)], timeout=30) == [1, 2, 3]
    pid = zray.get(actor.pid.remote(), timeout=20)
    assert open(inits).read() == "1"

    _kill9(pid)

    new_pid = _restarted_pid(actor, pid)
    assert open(inits).read() == "2", "the constructor must run again on restart"
    assert zray.get(actor.incr.remote(), timeout=20) == 1, "state resets on restart"
    assert zray.get(actor.incr.remote(), timeout=20) == 2
    assert not _gone(new_pid)


def test_killed_actor_without_restarts_raises_actor_died(start_cluster):
    start_cluster()
    actor = Counter.options(max_restarts=0).remote()
    assert zray.get(actor.incr.remote(), timeout=30) == 1
    pid = zray.get(actor.pid.remote(), timeout=20)

    _kill9(pid)

    for _ in range(2):
        with pytest.raises(ActorDiedError) as info:
            zray.get(actor.incr.remote(), timeout=20)
        assert isinstance(info.value, RayActorError)
    # the cluster goes on: a new actor works
    other = Counter.remote()
    assert zray.get(other.incr.remote(), timeout=30) == 1


def test_call_in_flight_is_retried_after_restart_with_max_task_retries(start_cluster,
                                                                       tmp_path):
    start_cluster()
    actor = Counter.options(max_restarts=1, max_task_retries=1).remote()
    pid = zray.get(actor.pid.remote(), timeout=30)
    pid_file = str(tmp_path / "pid")
    ref = actor.slow.remote(pid_file, 1.5)
    assert wait_for(lambda: _read_pid(pid_file), timeout=15) == pid   # it is running

    os.remove(pid_file)
    _kill9(pid)

    status, answered_by = zray.get(ref, timeout=30)
    assert status == "done"
    assert answered_by != pid, "the call must have been run again by the restarted actor"
    assert _read_pid(pid_file) == answered_by
    assert zray.get(actor.incr.remote(), timeout=20) == 1


def test_call_in_flight_without_task_retries_raises_actor_died(start_cluster, tmp_path):
    start_cluster()
    actor = Counter.options(max_restarts=1, max_task_retries=0).remote()
    pid = zray.get(actor.pid.remote(), timeout=30)
    pid_file = str(tmp_path / "pid")
    ref = actor.slow.remote(pid_file, 30)
    wait_for(lambda: _read_pid(pid_file), timeout=15)

    _kill9(pid)

    with pytest.raises(ActorDiedError) as info:
        zray.get(ref, timeout=30)
    assert isinstance(info.value, RayActorError)
    # the actor itself restarted (max_restarts=1): new calls work
    _restarted_pid(actor, pid)
    assert zray.get(actor.incr.remote(), timeout=20) == 1


def test_past_max_restarts_calls_raise_actor_died(start_cluster, tmp_path):
    start_cluster()
    inits = str(tmp_path / "inits")
    actor = Counter.options(max_restarts=1).remote(inits)
    pid = zray.get(actor.pid.remote(), timeout=30)
    _kill9(pid)
    pid2 = _restarted_pid(actor, pid)
    _kill9(pid2)                                   # its one restart is used up

    for _ in range(2):
        with pytest.raises(ActorDiedError):
            zray.get(actor.incr.remote(), timeout=30)
    assert open(inits).read() == "2", "no third incarnation"


def test_new_calls_during_restart_are_retried_with_max_task_retries(start_cluster, tmp_path):
    """Calls made right after the process died (before the restart is done)
    go to the restarted actor when the actor has task retries."""
    start_cluster()
    inits = str(tmp_path / "inits")
    actor = Counter.options(max_restarts=1, max_task_retries=1).remote(inits)
    pid = zray.get(actor.pid.remote(), timeout=30)
    _kill9(pid)
    refs = [actor.incr.remote() for _ in range(5)]       # no waiting for the restart
    assert zray.get(refs, timeout=30) == [1, 2, 3, 4, 5]
    assert zray.get(actor.pid.remote(), timeout=20) != pid
    assert open(inits).read() == "2"


def test_infinite_restarts(start_cluster):
    start_cluster()
    actor = Counter.options(max_restarts=-1, max_task_retries=-1).remote()
    pid = zray.get(actor.pid.remote(), timeout=30)
    for _ in range(3):
        _kill9(pid)
        pid = _restarted_pid(actor, pid)
    assert zray.get(actor.incr.remote(), timeout=20) == 1


def test_exit_actor_is_not_restarted(start_cluster, tmp_path):
    start_cluster()

    @zray.remote(max_restarts=2)
    class Leaver:
        def __init__(self, inits_file):
            n = int(open(inits_file).read()) + 1 if os.path.exists(inits_file) else 1
            with open(inits_file, "w") as f:
                f.write(str(n))

        def pid(self):
            return os.getpid()

        def leave(self):
            zray.actor.exit_actor()

    inits = str(tmp_path / "inits")
    actor = Leaver.remote(inits)
    pid = zray.get(actor.pid.remote(), timeout=30)
    with pytest.raises(RayActorError):
        zray.get(actor.leave.remote(), timeout=20)
    wait_for(lambda: _gone(pid), timeout=10)
    with pytest.raises(ActorDiedError):
        zray.get(actor.pid.remote(), timeout=20)
    assert open(inits).read() == "1", "exit_actor() must not restart the actor"


def test_zray_kill_with_no_restart_false_restarts(start_cluster, tmp_path):
    start_cluster()
    inits = str(tmp_path / "inits")
    actor = Counter.options(max_restarts=1).remote(inits)
    assert zray.get(actor.incr.remote(), timeout=30) == 1
    pid = zray.get(actor.pid.remote(), timeout=20)
    zray.kill(actor, no_restart=False)
    wait_for(lambda: _gone(pid), timeout=10)
    _restarted_pid(actor, pid)
    assert zray.get(actor.incr.remote(), timeout=20) == 1
    zray.kill(actor)                               # no_restart=True: for good
    with pytest.raises(ActorDiedError):
        zray.get(actor.incr.remote(), timeout=20)


# --------------------------------------------------------------------------
# drivers that exit: a `zray start --head` cluster and driver subprocesses
# --------------------------------------------------------------------------

def _session_processes(temp_dir: str) -> list[psutil.Process]:
    """The zray processes of the cluster whose sessions live in ``temp_dir``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if len(cmd) >= 3 and cmd[1] == "-m" and cmd[2].startswith("zray") \
                    and any(temp_dir in part for part in cmd):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def head_cluster():
    """`zray start --head --port 6393 --num-cpus 2`, in a private temp dir.

    Teardown stops only this cluster's processes: ``zray stop`` would end every
    zray process of this user on the host, other people's test clusters too."""
    if zray.is_initialized():
        zray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="zrt")
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    env["ZRAY_TEMP_DIR"] = temp_dir
    try:
        out = subprocess.run([sys.executable, "-m", "zray._private.cli", "start", "--head",
                              "--port", str(HEAD_PORT), "--num-cpus", "2",
                              "--object-store-memory", str(128 * 1024 * 1024)],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"zray start failed:\n{out.stdout}\n{out.stderr}"
        yield env
    finally:
        if zray.is_initialized():
            zray.shutdown()
        procs = _session_processes(temp_dir)
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive + _session_processes(temp_dir):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        sessions = [os.path.basename(d) for d in glob.glob(os.path.join(temp_dir, "session_*"))]
        leftover_shm = [f for name in sessions for f in glob.glob(f"/dev/shm/zray_{name}_*")]
        for path in leftover_shm:              # only this cluster's arenas
            os.unlink(path)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not _session_processes(temp_dir), "the head cluster's processes are left"
        assert not leftover_shm, f"the stopped head cluster left shared memory: {leftover_shm}"


def _run_driver(env, code: str, timeout: float = 60) -> dict:
    """Run a driver script; it prints one JSON line as its last output."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"driver failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver printed no result:\n{out.stdout}\n{out.stderr}"
    return json.loads(lines[-1])


CREATE_ACTOR = """
    import json, os, zray
    zray.init(address={address!r})

    @zray.remote
    class Counter:
        def __init__(self):
            self.value = 0
        def incr(self):
            self.value += 1
            return self.value
        def pid(self):
            return os.getpid()

    actor = Counter.options(name={name!r}, namespace="ns", lifetime={lifetime!r},
                            num_cpus={num_cpus}).remote()
    values = [zray.get(actor.incr.remote(), timeout=30) for _ in range(3)]
    pid = zray.get(actor.pid.remote(), timeout=30)
    print(json.dumps({{"pid": pid, "values": values}}), flush=True)
"""


def _lookup_fails(name: str, namespace: str) -> bool:
    try:
        zray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_non_detached_actor_dies_with_its_driver(head_cluster):
    created = _run_driver(head_cluster, CREATE_ACTOR.format(
        address=HEAD_ADDRESS, name="owned-by-driver", lifetime=None, num_cpus=1))
    assert created["values"] == [1, 2, 3]
    pid = created["pid"]

    zray.init(address=HEAD_ADDRESS)                 # a second driver
    wait_for(lambda: _lookup_fails("owned-by-driver", "ns"), timeout=15)
    wait_for(lambda: _gone(pid), timeout=15)
    # and its CPU is given back
    wait_for(lambda: zray.available_resources().get("CPU", 0) == 2, timeout=15)


def test_detached_actor_outlives_its_driver_and_is_found_by_another(head_cluster):
    created = _run_driver(head_cluster, CREATE_ACTOR.format(
        address="auto", name="lives-on", lifetime="detached", num_cpus=0))
    assert created["values"] == [1, 2, 3]
    pid = created["pid"]
    assert not _gone(pid), "a detached actor must outlive its driver"

    found = _run_driver(head_cluster, """
        import json, os, zray
        zray.init(address="auto")
        actor = zray.get_actor("lives-on", namespace="ns")
        value = zray.get(actor.incr.remote(), timeout=30)
        pid = zray.get(actor.pid.remote(), timeout=30)
        print(json.dumps({"pid": pid, "value": value}), flush=True)
    """)
    assert found["pid"] == pid
    assert found["value"] == 4, "the detached actor's state must persist across drivers"

    # still there after the second driver left, too; then it can be killed by name
    zray.init(address=HEAD_ADDRESS)
    actor = zray.get_actor("lives-on", namespace="ns")
    assert zray.get(actor.incr.remote(), timeout=30) == 5
    zray.kill(actor)
    wait_for(lambda: _lookup_fails("lives-on", "ns"), timeout=15)
    wait_for(lambda: _gone(pid), timeout=15)
