"""How ``zray.init()`` gets to the first task quickly (issue 13) without
giving anything up: the driver starts the worker fork server (zygote) before
the GCS and the raylet and hands it to the raylet; the zygote forks the first
worker before it imports numpy; every process is still accounted for."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil

import zray
from zray._private.launcher import AdoptedProcess
from zray.broker import protocol as p

from conftest import assert_nothing_left, process_gone, wait_for
from zray.worker import global_state


def _zygote_of(driver_pid: int) -> psutil.Process:
    zygotes = [c for c in psutil.Process(driver_pid).children()
               if c.name().startswith("zray.zygote")]
    assert len(zygotes) == 1, zygotes
    return zygotes[0]


def test_the_first_worker_starts_without_numpy_and_still_moves_arrays(start_cluster):
    start_cluster(num_cpus=1)

    @zray.remote
    def numpy_loaded():
        return "numpy" in sys.modules, os.getpid()

    @zray.remote
    def double(array):
        return array * 2, os.getpid()

    loaded, pid = zray.get(numpy_loaded.remote(), timeout=30)
    assert loaded is False          # forked before the zygote imported numpy
    big = np.arange(1 << 20, dtype=np.float64)     # 8 MB: through the store
    doubled, same_pid = zray.get(double.remote(big), timeout=30)
    assert same_pid == pid
    np.testing.assert_array_equal(doubled, big * 2)


def test_worker_code_imports_without_numpy():
    """What the zygote imports before its first fork does not load numpy."""
    code = ("import sys, cloudpickle, msgpack, zmq\n"
            "import zray.worker.executor, zray.worker.zygote, zray.store\n"
            "assert 'numpy' not in sys.modules, 'numpy was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_drivers_zygote_ends_with_its_raylet(start_cluster):
    """The zygote is the driver's child but serves the raylet: the raylet
    killed, the zygote and its workers end, and shutdown leaves nothing."""
    start_cluster(num_cpus=1)

    @zray.remote
    def pid():
        return os.getpid()

    worker_pid = zray.get(pid.remote(), timeout=30)
    session_dir = global_state.worker.session_dir
    zygote = _zygote_of(os.getpid())
    assert worker_pid in {c.pid for c in zygote.children()}
    raylet = next(c for c in psutil.Process().children()
                  if c.name().startswith("zray.raylet"))
    raylet.send_signal(signal.SIGKILL)
    wait_for(lambda: process_gone(zygote.pid) and process_gone(worker_pid), timeout=10)
    zray.shutdown()
    assert_nothing_left(session_dir)


def test_a_zygote_that_dies_at_start_is_named_in_inits_error(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import os, signal, zray
        from zray._private import node

        prestart = node.NodeProcesses.prestart_zygote

        def prestart_then_kill(self, node_id):
            prestart(self, node_id)
            os.kill(self._zygotes[node_id].pid, signal.SIGKILL)

        node.NodeProcesses.prestart_zygote = prestart_then_kill
        try:
            zray.init(num_cpus=1, include_dashboard=False)
        except ConnectionError as err:
            print("ERROR", err)
        import psutil
        print("LEFT", [c.pid for c in psutil.Process().children(recursive=True)
                       if c.status() != psutil.STATUS_ZOMBIE])
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    env["ZRAY_CONNECT_TIMEOUT_S"] = "2"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert "zray.worker.zygote exited with code -9 at start-up" in error, error
    assert "see the logs in" in error
    assert "LEFT []" in proc.stdout, proc.stdout


def test_adopted_process_sees_the_exit_of_a_process_it_cannot_reap():
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    exiter = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        assert AdoptedProcess(sleeper.pid, ["sleeper"]).poll() is None
        adopted = AdoptedProcess(exiter.pid, ["exiter"])
        assert adopted.wait(timeout=30) == 3        # read while it is a zombie
    finally:
        sleeper.stdin.close()
        sleeper.wait(timeout=30)
        exiter.wait(timeout=30)


def test_protocol_records_keep_their_kinds_defaults_and_methods():
    """Records are built without typing.NamedTuple: they stay namedtuples
    whose annotations name their field kinds, with defaults and methods."""
    assert p.RegisterClient.__annotations__["worker_id"] == "WorkerId"
    assert issubclass(p.RegisterClient, tuple) and p.RegisterClient._fields[0] == "kind"
    message = p.RegisterClient("driver", os.urandom(16), os.getpid(), b"\0\0\0\1",
                               "ipc:///tmp/x")
    assert p.decode(p.encode(message)) == message
    bad = list(message)
    bad[1] = b"short"
    try:
        p.decode(p.encode(p.RegisterClient(*bad)))
    except p.ProtocolError as err:
        assert "RegisterClient.worker_id" in str(err)
    else:
        raise AssertionError("a 5-byte worker id was accepted")

    class WithDefault(p.NamedTuple):
        """doc"""
        a: int
        b: str = "x"

        def both(self):
            return (self.a, self.b)

    assert WithDefault(1).both() == (1, "x") and WithDefault.__doc__ == "doc"
    try:
        class Wrong(p.NamedTuple):
            a: int = 1
            b: int
    except TypeError as err:
        assert "b" in str(err)
    else:
        raise AssertionError("a field without a default after one with was accepted")
