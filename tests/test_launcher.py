"""How ``zray.init()`` starts its local daemons: the GCS and raylet forked
from the driver when it runs a single thread (ready in milliseconds), spawned
otherwise or when ``ZRAY_START_METHOD=spawn``; workers always from a fresh
interpreter; either way they carry the ``python -m zray.X``
command line ``ps`` and ``zray stop`` rely on, and nothing of the driver
(buffered output, its thread's locks) is repeated or inherited wrongly."""
import fnmatch
import json
import os
import subprocess
import sys
import textwrap

import pytest

import zray

from conftest import assert_nothing_left

# The driver imports _decimal, a C extension zray never loads: a forked
# daemon has it mapped (it is a copy of the driver), a spawned one has not.
DRIVER = textwrap.dedent("""
    import json, os, sys, threading, time
    import _decimal
    import psutil
    import zray
    from zray._private.node import command_line, zray_processes

    if "--with-thread" in sys.argv:
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
    print("buffered before init")          # stdout is a pipe: still in the buffer
    zray.init(num_cpus=1)

    @zray.remote
    def square(x):
        return x * x

    @zray.remote
    def inherited():
        return "_decimal" in sys.modules

    assert zray.get([square.remote(i) for i in range(4)], timeout=30) == [0, 1, 4, 9]
    worker_inherited = zray.get(inherited.remote(), timeout=30)
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    daemons = {}
    for proc in zray_processes():
        if proc.pid in mine:
            cmd = command_line(proc)
            maps = open(f"/proc/{proc.pid}/maps").read()
            daemons[cmd[2]] = {"cmd": cmd, "name": proc.name(), "ppid": proc.ppid(),
                               "forked": "_decimal" in maps}
    from zray.worker import global_state
    print("RESULT", json.dumps({"daemons": daemons, "driver": os.getpid(),
                                "worker_inherited": worker_inherited,
                                "session_dir": global_state.worker.session_dir}))
    zray.shutdown()
""")


def _run(tmp_path, *args, env_extra=None):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert_nothing_left(result["session_dir"])
    return proc.stdout, result


def _check_command_lines(result):
    daemons = result["daemons"]
    assert {"zray.gcs", "zray.raylet", "zray.worker.zygote"} <= set(daemons), daemons
    gcs = daemons["zray.gcs"]["cmd"]
    assert gcs[:3] == [sys.executable, "-m", "zray.gcs"]
    assert gcs[gcs.index("--session-dir") + 1] == result["session_dir"]
    raylet = daemons["zray.raylet"]["cmd"]
    assert raylet[:3] == [sys.executable, "-m", "zray.raylet"]
    assert raylet[raylet.index("--num-cpus") + 1] == "1"
    assert daemons["zray.gcs"]["ppid"] == result["driver"]
    assert daemons["zray.raylet"]["ppid"] == result["driver"]


@pytest.mark.parametrize("argv_length", ["short", "long"])
def test_daemons_are_forked_and_carry_their_command_lines(tmp_path, argv_length):
    # a short driver command line must be extended over the environment
    # strings; a long one is rewritten in place
    args = ["x" * 3000] if argv_length == "long" else []
    stdout, result = _run(tmp_path, *args)
    _check_command_lines(result)
    for module in ("zray.gcs", "zray.raylet"):
        assert result["daemons"][module]["forked"], f"{module} was not forked from the driver"
    # workers never start from the driver's image (its modules, CUDA or
    # OpenMP state, random seeds): their zygote is a fresh interpreter
    assert not result["daemons"]["zray.worker.zygote"]["forked"]
    assert result["worker_inherited"] is False
    assert result["daemons"]["zray.gcs"]["name"] == "zray.gcs"
    assert result["daemons"]["zray.raylet"]["name"] == "zray.raylet"
    _check_printed_once(stdout, result)


def _check_printed_once(stdout, result):
    """What the driver had printed but not yet flushed is written once, by it."""
    assert stdout.count("buffered before init") == 1, stdout
    logs = os.path.join(result["session_dir"], "logs")
    for name in os.listdir(logs):
        with open(os.path.join(logs, name), errors="replace") as f:
            assert "buffered before init" not in f.read(), f"{name} repeats the driver's output"


def test_spawn_when_asked(tmp_path):
    stdout, result = _run(tmp_path, env_extra={"ZRAY_START_METHOD": "spawn"})
    _check_command_lines(result)
    assert not result["daemons"]["zray.gcs"]["forked"]
    assert not result["daemons"]["zray.raylet"]["forked"]
    _check_printed_once(stdout, result)


def test_a_driver_running_threads_spawns_its_daemons(tmp_path):
    """Forking it could leave a lock another thread holds locked for ever."""
    _, result = _run(tmp_path, "--with-thread")
    _check_command_lines(result)
    assert not result["daemons"]["zray.gcs"]["forked"]
    assert not result["daemons"]["zray.raylet"]["forked"]


def test_unknown_start_method_is_a_clear_error(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import zray\nzray.init(num_cpus=1)\n")
    env = dict(os.environ, ZRAY_START_METHOD="vfork")
    env.pop("ZRAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode != 0
    assert "ZRAY_START_METHOD='vfork'" in proc.stderr and "'spawn'" in proc.stderr, \
        proc.stderr[-2000:]


def test_sessions_started_within_a_second_are_distinct(start_cluster):
    """Fast start and stop: back-to-back sessions of one process get their own
    directory and cluster key, and each runs tasks."""
    from zray.worker import global_state

    @zray.remote
    def one():
        return 1

    seen = []
    for _ in range(3):
        start_cluster(num_cpus=1)
        seen.append(global_state.worker.session_dir)
        assert zray.get(one.remote(), timeout=30) == 1
        zray.shutdown()
    assert len(set(seen)) == 3, seen
    # one session's sweep (/dev/shm/zray_<session>_*) never takes another's arena
    names = [os.path.basename(d) for d in seen]
    for a in names:
        for b in names:
            if a != b:
                assert not fnmatch.fnmatch(f"zray_{b}_0123456789ab", f"zray_{a}_*"), (a, b)


def test_a_driver_with_closed_standard_streams_runs_tasks(tmp_path):
    """Daemon managers may start a driver with stdin/stdout closed: the
    cluster still starts, tasks run, their prints go nowhere quietly."""
    script = tmp_path / "closed.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        os.close(0)
        os.close(1)
        import zray
        zray.init(num_cpus=1)

        @zray.remote
        def f():
            print("hello from a task")
            return 2

        sys.stderr.write(f"result {zray.get(f.remote(), timeout=30)}\\n")
        zray.shutdown()
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "result 2" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_the_daemons_do_not_hold_the_drivers_files_open(tmp_path):
    """A pipe the driver opened before init() is not kept open by its forked
    daemons: closing it gives the reader its end of file."""
    script = tmp_path / "pipe.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys
        import zray
        reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE)
        zray.init(num_cpus=1)
        reader.stdin.close()
        try:
            reader.wait(timeout=10)
            print("EOF seen")
        except subprocess.TimeoutExpired:
            reader.kill()
            print("reader still waiting: a daemon holds the pipe")
        zray.shutdown()
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EOF seen" in proc.stdout, proc.stdout + proc.stderr[-2000:]
