"""Fixtures: one local cluster per test module where tests allow it, fresh
clusters for start-up and failure tests, and a check that nothing is left."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import threading
import time

import psutil
import pytest

# Every session directory this run makes lives under one private directory,
# removed when the run ends (set before zray reads its settings). Made once
# per run: this module is imported again by test modules and by workers that
# unpickle test functions, and those find it in the environment.
if not os.environ.get("ZRAY_TESTS_ROOT"):
    os.environ["ZRAY_TESTS_ROOT"] = tempfile.mkdtemp(prefix="zray-tests-")
    os.environ["ZRAY_TESTS_ROOT_PID"] = str(os.getpid())
os.environ["ZRAY_TEMP_DIR"] = os.environ["ZRAY_TESTS_ROOT"]

import zray  # noqa: E402
from zray._private.node import command_line as cmdline, zray_processes  # noqa: F401,E402
from zray.worker import global_state  # noqa: E402

STORE_BYTES = 256 * 1024 * 1024


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` until it is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def task_batch(worker_id: bytes, node_id: bytes, pid: int, events, dropped: int = 0):
    """An ``AddTaskEvents`` carrying ``events`` (TaskEvent records, or
    tuples of their first fields)."""
    from zray.broker import protocol as p
    events = [p.TaskEvent(*event) for event in events]
    return p.AddTaskEvents(worker_id, node_id, pid,
                           p.pack_task_events([f for event in events for f in event]),
                           len(events), dropped)


def call_bounded(fn, timeout: float):
    """Run ``fn()`` in a thread; return ("ok", value) / ("raised", exc), or
    fail the test when it does not finish within ``timeout`` (a hang)."""
    out = []

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as exc:    # noqa: BLE001 — handed to the test
            out.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if not out:
        pytest.fail(f"call did not return within {timeout}s (it hangs)")
    return out[0]


def process_gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_nothing_left(session_dir: str | None, timeout: float = 10.0) -> None:
    """No zray process started by this test process, no arena, no socket file."""
    wait_for(lambda: not [p for p in zray_processes() if p.pid in _descendants()],
             timeout)
    if session_dir:
        name = os.path.basename(session_dir)
        assert not glob.glob(f"/dev/shm/zray_{name}_*"), "shared memory left behind"
        assert not glob.glob(os.path.join(session_dir, "sockets", "*")), "socket files left"


def _session_dir() -> str | None:
    worker = global_state.worker
    return worker.session_dir if worker else None


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU cluster shared by the tests of one module."""
    if zray.is_initialized():
        zray.shutdown()
    zray.init(num_cpus=2, object_store_memory=STORE_BYTES)
    session_dir = _session_dir()
    yield zray
    zray.shutdown()
    assert_nothing_left(session_dir)


@pytest.fixture
def start_cluster():
    """Start a fresh local cluster with the given ``zray.init`` arguments;
    it is shut down (and checked for leftovers) after the test."""
    started = []

    def start(**kwargs):
        if zray.is_initialized():
            zray.shutdown()
        kwargs.setdefault("num_cpus", 2)
        kwargs.setdefault("object_store_memory", STORE_BYTES)
        ctx = zray.init(**kwargs)
        started.append(_session_dir())
        return ctx

    yield start
    if zray.is_initialized():
        zray.shutdown()
    for session_dir in started:
        assert_nothing_left(session_dir)


def pytest_sessionfinish(session, exitstatus):
    """Remove the run's session directories (their processes are stopped by
    the fixtures that started them), in the process that made them."""
    if os.environ.get("ZRAY_TESTS_ROOT_PID") == str(os.getpid()):
        shutil.rmtree(os.environ["ZRAY_TESTS_ROOT"], ignore_errors=True)


def local_daemons() -> dict:
    """name -> (endpoint, pid, log file) of the GCS and raylet of the local
    cluster this test process started."""
    worker = global_state.worker
    logs = os.path.join(worker.session_dir, "logs")

    def pid_of(module: str) -> int:
        for proc in psutil.Process().children(recursive=True):
            cmd = cmdline(proc)
            if len(cmd) >= 3 and cmd[1] == "-m" and cmd[2] == module:
                return proc.pid
        pytest.fail(f"no {module} process under this test process")

    return {
        "gcs": ("tcp://" + zray.get_runtime_context().gcs_address, pid_of("zray.gcs"),
                os.path.join(logs, "gcs.log")),
        "raylet": (worker.raylet.endpoint, pid_of("zray.raylet"),
                   os.path.join(logs, f"raylet_{worker.node_id.hex()[:12]}.log")),
    }


class TcpPeer:
    """A TCP service on loopback that never reads: silent, or speaking first
    (``banner``, like SSH). ``conns`` are the connections it accepted."""

    def __init__(self, banner: bytes = b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.banner = banner
        self.conns = []
        self.running = True
        self.endpoint = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                if self.banner:
                    conn.sendall(self.banner)
            except OSError:
                pass
            self.conns.append(conn)

    def close(self):
        self.running = False
        self.thread.join(2)
        for conn in self.conns:
            conn.close()
        self.sock.close()
