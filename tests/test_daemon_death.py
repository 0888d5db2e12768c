"""A daemon that dies never leaves a caller hanging.

kill -9 of the raylet under a running driver: pending gets, waits and actor
calls fail within the node timeout with NodeDiedError naming the raylet and
its node, new submissions raise it too, and the raylet's shared memory is
removed by whoever notices first. kill -9 of the GCS: the raylet says so in
its log and keeps serving local work; `zray status` says the GCS is
unreachable instead of hanging.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import zray
from zray import exceptions as exc
from zray.cluster_utils import Cluster
from zray.config import config
from zray.raylet import gcs_health
from zray.worker import global_state

from conftest import assert_nothing_left, call_bounded, process_gone, wait_for, zray_processes
from conftest import cmdline

NODE_TIMEOUT_S = 3.0
#: a caller must have its answer within the node timeout (plus scheduling slack)
BOUND_S = NODE_TIMEOUT_S + 2.0


@pytest.fixture
def node_timeout():
    """Daemons and this driver use a short node timeout for the test."""
    saved = os.environ.get("ZRAY_NODE_TIMEOUT_S")
    os.environ["ZRAY_NODE_TIMEOUT_S"] = str(NODE_TIMEOUT_S)
    config.reload()
    yield NODE_TIMEOUT_S
    if saved is None:
        os.environ.pop("ZRAY_NODE_TIMEOUT_S", None)
    else:
        os.environ["ZRAY_NODE_TIMEOUT_S"] = saved
    config.reload()


def _raylet_pid() -> int:
    pid = global_state.worker.raylet_watch.pid
    assert pid > 0, "the raylet did not tell its pid"
    return pid


def _gcs_pid(session_dir: str) -> int:
    pids = [p.pid for p in zray_processes()
            if "zray.gcs" in cmdline(p)[:3] and session_dir in cmdline(p)]
    assert len(pids) == 1, f"expected one GCS of {session_dir}, found {pids}"
    return pids[0]


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: process_gone(pid), timeout=5)


@zray.remote(max_retries=0)
def block(marker):
    """Touch ``marker`` (it runs), then sleep past every test's bound."""
    open(marker, "w").close()
    time.sleep(60)
    return "finished"


@zray.remote
class Sleeper:
    def ready(self):
        return True

    def nap(self, seconds):
        time.sleep(seconds)
        return "rested"


def _workers_started(session_dir: str, node_hex: str = "") -> None:
    """Wait until the node's raylet finished starting (its first workers
    forked), so stopping it next does not race its start-up."""
    pattern = os.path.join(session_dir, "logs", f"raylet_{node_hex[:12]}*.log")

    def serving():
        return any("serving at" in open(path, errors="replace").read()
                   for path in glob.glob(pattern))
    wait_for(serving, timeout=30)


def _assert_names_the_raylet(err, node_hex: str, pid: int) -> None:
    assert isinstance(err, exc.NodeDiedError), f"{type(err).__name__}: {err}"
    assert isinstance(err, exc.RaySystemError) and isinstance(err, exc.RayError)
    text = str(err)
    assert "raylet" in text and node_hex[:12] in text and f"pid {pid}" in text, text
    assert "zray.shutdown()" in text, text


# ------------------------------------------------------------ raylet killed

def test_get_of_running_task_raises_node_died_when_its_raylet_is_killed(
        node_timeout, start_cluster, tmp_path):
    start_cluster(num_cpus=1)
    marker = str(tmp_path / "running")
    ref = block.remote(marker)
    wait_for(lambda: os.path.exists(marker), timeout=30)
    node_hex, pid = global_state.worker.node_id.hex(), _raylet_pid()

    _kill(pid)
    started = time.monotonic()
    outcome, err = call_bounded(lambda: zray.get(ref), timeout=BOUND_S)

    assert outcome == "raised"
    _assert_names_the_raylet(err, node_hex, pid)
    assert time.monotonic() - started < NODE_TIMEOUT_S


def test_wait_and_actor_calls_fail_when_the_raylet_is_killed(
        node_timeout, start_cluster, tmp_path):
    start_cluster(num_cpus=2)
    actor = Sleeper.remote()
    assert zray.get(actor.ready.remote(), timeout=30)
    in_flight = actor.nap.remote(60)
    queued = actor.nap.remote(0)
    marker = str(tmp_path / "running")
    task = block.remote(marker)
    wait_for(lambda: os.path.exists(marker), timeout=30)
    node_hex, pid = global_state.worker.node_id.hex(), _raylet_pid()

    _kill(pid)

    outcome, err = call_bounded(lambda: zray.wait([task], timeout=None), timeout=BOUND_S)
    assert outcome == "raised", f"wait returned {err}"
    _assert_names_the_raylet(err, node_hex, pid)
    for ref in (in_flight, queued):
        outcome, err = call_bounded(lambda: zray.get(ref), timeout=BOUND_S)
        assert outcome == "raised"
        _assert_names_the_raylet(err, node_hex, pid)


def test_stream_consumer_gets_node_died_after_the_items_it_had(
        node_timeout, start_cluster, tmp_path):
    start_cluster(num_cpus=1)

    @zray.remote(num_returns="streaming", max_retries=0)
    def two_then_block(marker):
        yield 1
        yield 2
        open(marker, "w").close()
        time.sleep(60)
        yield 3

    marker = str(tmp_path / "blocked")
    stream = two_then_block.remote(marker)
    assert [zray.get(next(stream), timeout=30) for _ in range(2)] == [1, 2]
    wait_for(lambda: os.path.exists(marker), timeout=30)
    node_hex, pid = global_state.worker.node_id.hex(), _raylet_pid()

    _kill(pid)

    outcome, err = call_bounded(lambda: zray.get(next(stream)), timeout=BOUND_S)
    assert outcome == "raised", f"the stream gave {err!r}"
    _assert_names_the_raylet(err, node_hex, pid)


def test_new_submissions_after_raylet_death_raise_node_died(node_timeout, start_cluster):
    start_cluster(num_cpus=1)
    actor = Sleeper.remote()
    assert zray.get(actor.ready.remote(), timeout=30)

    @zray.remote
    def one():
        return 1
    assert zray.get(one.remote(), timeout=30) == 1
    pid = _raylet_pid()

    _kill(pid)
    wait_for(lambda: global_state.worker.raylet_error is not None, timeout=BOUND_S)

    for submit in (one.remote, lambda: actor.nap.remote(0), lambda: zray.put(b"x" * 10),
                   lambda: zray.put(np.zeros(1 << 20))):
        outcome, err = call_bounded(submit, timeout=2.0)
        assert outcome == "raised", f"{submit} returned {err!r} instead of raising"
        assert isinstance(err, exc.NodeDiedError), repr(err)


def test_store_call_under_way_when_raylet_dies_fails_fast(node_timeout, start_cluster):
    """A request the raylet never answers (it froze, then was killed) ends
    when the death is noticed, not after the 30 s request timeout."""
    start_cluster(num_cpus=1)
    pid = _raylet_pid()
    os.kill(pid, signal.SIGSTOP)
    result = []
    thread = threading.Thread(
        target=lambda: result.append(call_bounded(lambda: zray.put(np.ones(1 << 20)), 20)),
        daemon=True)
    thread.start()
    time.sleep(0.5)
    assert not result, "the put finished although the raylet was frozen"

    _kill(pid)
    thread.join(BOUND_S)

    assert result, "the put under way did not end when the raylet died"
    outcome, err = result[0]
    assert outcome == "raised" and isinstance(err, exc.NodeDiedError), repr(err)


def test_shutdown_after_raylet_death_leaves_nothing_behind(node_timeout, start_cluster):
    start_cluster(num_cpus=1)
    worker = global_state.worker
    session_dir, arena = worker.session_dir, worker.arena.path
    assert os.path.exists(arena)
    assert zray.get(zray.put(np.ones(1 << 18)), timeout=30).sum() == 1 << 18
    _workers_started(session_dir)

    _kill(_raylet_pid())
    wait_for(lambda: worker.raylet_error is not None, timeout=BOUND_S)
    outcome, _ = call_bounded(zray.shutdown, timeout=10)

    assert outcome == "ok"
    assert not os.path.exists(arena)
    assert_nothing_left(session_dir)


@pytest.fixture
def cluster(node_timeout):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        if zray.is_initialized():
            zray.shutdown()
        c.shutdown()
        assert_nothing_left(c.session_dir)


def test_driver_joined_to_a_cluster_removes_the_dead_raylets_arena_at_shutdown(cluster):
    cluster.connect()
    worker = global_state.worker
    arena = worker.arena.path
    _kill(_raylet_pid())
    wait_for(lambda: worker.raylet_error is not None, timeout=BOUND_S)
    assert os.path.exists(arena), "nothing should have removed the arena yet"

    zray.shutdown()

    assert not os.path.exists(arena)
    assert not os.path.exists(worker.raylet.endpoint[len("ipc://"):])


def test_next_raylet_on_the_host_removes_a_killed_raylets_arena(cluster):
    node = cluster.add_node(num_cpus=1)
    arena = glob.glob(f"/dev/shm/zray_{os.path.basename(cluster.session_dir)}_"
                      f"{node.node_id[:12]}")
    assert len(arena) == 1, "the new node's arena is not where expected"
    cluster.remove_node(node)                  # SIGKILL: it cannot clean up
    assert os.path.exists(arena[0])

    new = cluster.add_node(num_cpus=1)

    assert not os.path.exists(arena[0])
    _workers_started(cluster.session_dir, new.node_id)
    head_arenas = glob.glob(f"/dev/shm/zray_{os.path.basename(cluster.session_dir)}_*")
    assert len(head_arenas) == 2, "live raylets' arenas must stay"


# --------------------------------------------------------------- GCS killed

def _raylet_log(session_dir: str) -> str:
    text = ""
    for path in glob.glob(os.path.join(session_dir, "logs", "raylet_*.log")):
        with open(path, errors="replace") as f:
            text += f.read()
    return text


def test_raylet_says_once_that_the_gcs_is_unreachable_and_keeps_serving_local_work(
        node_timeout, start_cluster):
    start_cluster(num_cpus=1)
    session_dir = global_state.worker.session_dir
    gcs_address = global_state.worker.gcs_address

    @zray.remote
    def double(x):
        return x * 2
    assert zray.get(double.remote(1), timeout=30) == 2

    _kill(_gcs_pid(session_dir))
    line = f"the GCS at {gcs_address} is unreachable"
    wait_for(lambda: line in _raylet_log(session_dir), timeout=NODE_TIMEOUT_S + 5)

    # local work goes on: tasks of known functions, small and large objects
    outcome, value = call_bounded(lambda: zray.get(double.remote(21), timeout=20), 25)
    assert (outcome, value) == ("ok", 42)
    big = np.arange(1 << 18, dtype=np.int64)           # 2 MiB: through the store
    outcome, value = call_bounded(lambda: zray.get(zray.put(big), timeout=20), 25)
    assert outcome == "ok" and np.array_equal(value, big)
    outcome, value = call_bounded(
        lambda: zray.get(double.remote(zray.put(big)), timeout=20), 25)
    assert outcome == "ok" and np.array_equal(value, big * 2)
    time.sleep(2 * 1.0)                                 # two more health checks
    assert _raylet_log(session_dir).count(line) == 1, "said more than once"


def test_gcs_health_reminds_at_a_growing_interval_and_says_when_back(caplog):
    now = [0.0]
    health = gcs_health.GcsHealth("10.0.0.1:6380", clock=lambda: now[0])
    caplog.set_level("INFO", logger="zray.raylet.gcs_health")

    def lines_after(seconds):
        now[0] += seconds
        health.check()
        return [r.getMessage() for r in caplog.records]

    assert lines_after(config.node_timeout_s * 0.9) == []
    assert len(lines_after(config.node_timeout_s * 0.2)) == 1
    assert not health.reachable
    assert len(lines_after(gcs_health.REMIND_FIRST_S - 1)) == 1     # not yet again
    assert len(lines_after(2)) == 2                                 # a reminder
    assert len(lines_after(gcs_health.REMIND_FIRST_S + 1)) == 2     # interval doubled
    assert len(lines_after(gcs_health.REMIND_FIRST_S)) == 3
    health.answered()
    assert health.reachable and "answers again" in caplog.records[-1].getMessage()


def test_zray_status_says_the_gcs_is_unreachable(node_timeout, start_cluster):
    start_cluster(num_cpus=1)
    session_dir = global_state.worker.session_dir
    address = global_state.worker.gcs_address
    _kill(_gcs_pid(session_dir))

    try:
        done = subprocess.run([sys.executable, "-m", "zray._private.cli", "status",
                               "--address", address],
                              capture_output=True, text=True, timeout=20, env=os.environ)
    except subprocess.TimeoutExpired:
        pytest.fail("zray status hangs when the GCS is dead")

    assert done.returncode != 0
    assert f"the GCS at {address} is unreachable" in done.stderr, done.stderr
    assert "raylet(s) of that cluster still run" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------- the watch without a pid

def _answer_pings(router, stop) -> None:
    from zray.broker import protocol as p
    while not stop.is_set():
        if router.poll(50):
            identity, corr, _payload = router.recv_multipart()
            router.send_multipart([identity, corr, p.encode(p.Ack())])


def test_raylet_watch_without_a_pid_declares_a_silent_raylet_dead(node_timeout, tmp_path):
    from zray.broker import sockets
    from zray.worker.raylet_link import RayletWatch
    endpoint = f"ipc://{tmp_path}/raylet"
    router, _ = sockets.server_router(endpoint)
    stop = threading.Event()
    server = threading.Thread(target=_answer_pings, args=(router, stop), daemon=True)
    server.start()
    watch = RayletWatch(endpoint, b"\x01" * 16, 0)
    try:
        deadline = time.monotonic() + NODE_TIMEOUT_S + 1
        while time.monotonic() < deadline:              # it answers: alive
            assert watch.check() is None
            time.sleep(0.05)
        stop.set()
        server.join(5)
        started = time.monotonic()
        err = wait_for(watch.check, timeout=NODE_TIMEOUT_S + 3)
        assert isinstance(err, exc.NodeDiedError)
        assert "did not answer pings" in str(err) and "010101010101" in str(err)
        assert time.monotonic() - started > NODE_TIMEOUT_S - 1.5
    finally:
        stop.set()
        watch.close()
        router.close(linger=0)
