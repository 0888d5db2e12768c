"""Actor lifetimes as in Ray (issue 8): a non-detached actor ends when every
handle to it, in every process, is gone and its calls are done, or when its
owner dies; detached actors live until ``zray.kill``; actor workers are not
capped like task workers and by default hold no CPU while they live; what
cannot be placed is reported, never a silent hang; objects of a dead owner
raise OwnerDiedError on other nodes.

Most tests share one 2-CPU cluster started in this process (``lifetimes``);
drivers that must exit run as subprocesses attached to it. The cross-node
test, last, runs a ``Cluster`` of its own.
"""
from __future__ import annotations

import concurrent.futures
import gc
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import zray
from zray import exceptions as zexc
from zray.cluster_utils import Cluster
from zray.config import config
from zray.raylet.starvation import Starvation
from zray.util.state import list_actors
from zray.worker import global_state
from zray.worker.reference_table import actor_handle_id

from conftest import STORE_BYTES, assert_nothing_left, call_bounded, process_gone, wait_for

NAMESPACE = "lifetimes"
OUT_OF_SCOPE = "all references to the actor were removed"


#: surplus idle workers are stopped after this long here (default 10 s)
IDLE_WORKER_TIMEOUT_S = "1"


@pytest.fixture(scope="module")
def lifetimes():
    """A local 2-CPU cluster for this module, in a namespace of its own,
    that stops surplus idle workers after 1 s."""
    if zray.is_initialized():
        zray.shutdown()
    saved = os.environ.get("ZRAY_IDLE_WORKER_TIMEOUT_S")
    os.environ["ZRAY_IDLE_WORKER_TIMEOUT_S"] = IDLE_WORKER_TIMEOUT_S
    config.reload()
    try:
        zray.init(num_cpus=2, object_store_memory=STORE_BYTES, namespace=NAMESPACE)
    finally:
        if saved is None:
            os.environ.pop("ZRAY_IDLE_WORKER_TIMEOUT_S")
        else:
            os.environ["ZRAY_IDLE_WORKER_TIMEOUT_S"] = saved
        config.reload()
    session_dir = global_state.worker.session_dir
    yield global_state.worker.gcs_address
    zray.shutdown()
    assert_nothing_left(session_dir)


@zray.remote
class Box:
    def __init__(self, value=0):
        self.value = value

    def pid(self):
        return os.getpid()

    def get(self):
        return self.value

    def set(self, value):
        self.value = value
        return value

    def slow_add(self, x, seconds):
        time.sleep(seconds)
        self.value += x
        return self.value


def actor_row(actor_id: bytes) -> dict | None:
    rows = list_actors(filters=[("actor_id", "=", actor_id.hex())], limit=10)
    return rows[0] if rows else None


def state_of(actor_id: bytes) -> str | None:
    row = actor_row(actor_id)
    return row and row["state"]


def death_message(actor_id: bytes) -> str:
    row = actor_row(actor_id) or {}
    return ((row.get("death_cause") or {}).get("actor_died_error_context") or {}).get(
        "error_message", "")


def drop(*handles) -> None:
    """Let the handles go (the caller ``del``s its own names) and have the
    core worker apply the releases now rather than at its next poll."""
    del handles
    gc.collect()
    global_state.worker.drain_releases()


def zray_descendants() -> list[int]:
    """The pids of the live processes this test process started (daemons,
    workers; not the ones exiting as we look)."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if not process_gone(p.pid)]


def run_driver(gcs_address: str, body: str, timeout: float = 60) -> str:
    """Run ``body`` in a driver subprocess attached to the cluster; its stdout."""
    code = (f"import os, time, zray\n"
            f"zray.init(address={gcs_address!r}, namespace={NAMESPACE!r})\n"
            + textwrap.dedent(body))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# ----------------------------------------------------------- out of scope

def test_actors_created_and_dropped_in_a_loop_stay_bounded(lifetimes):
    """The user's report: 300 actors created, called once and dropped on a
    2-CPU node run to the end, with a bounded number of processes."""
    ids, most = [], 0
    started = time.monotonic()
    for i in range(300):
        box = Box.remote(i)
        assert zray.get(box.get.remote(), timeout=60) == i
        ids.append(box._actor_id)
        del box
        if i % 10 == 0:
            most = max(most, len(zray_descendants()))
            assert most < 20, f"{most} processes after {i + 1} actors"
    rate = 300 / (time.monotonic() - started)
    print(f"actors created, called and dropped: {rate:.1f}/s; at most {most} processes")
    wait_for(lambda: state_of(ids[-1]) == "DEAD", timeout=20)
    assert death_message(ids[0]) == OUT_OF_SCOPE
    wait_for(lambda: len(zray_descendants()) < 20, timeout=20)
    assert len(global_state.worker.actors) < 5          # the driver forgot them too


def test_dropped_actor_is_dead_with_reason_and_its_process_exits(lifetimes):
    box = Box.remote()
    pid = zray.get(box.pid.remote(), timeout=30)
    actor_id = box._actor_id
    assert state_of(actor_id) == "ALIVE"
    del box
    drop()
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)
    assert death_message(actor_id) == OUT_OF_SCOPE
    wait_for(lambda: process_gone(pid), timeout=20)


def test_pending_calls_finish_before_the_actor_ends(lifetimes):
    box = Box.remote()
    refs = [box.slow_add.remote(1, 0.1) for _ in range(5)]
    actor_id = box._actor_id
    del box
    drop()
    assert zray.get(refs, timeout=60) == [1, 2, 3, 4, 5]
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)


@zray.remote(num_cpus=0)
def use_later(handles, flag: str):
    """Hold a handle (inside a list) until ``flag`` exists, then use it."""
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return zray.get(handles[0].set.remote(7), timeout=30)


def test_handle_passed_to_a_task_keeps_the_actor_alive_until_the_task_drops_it(
        lifetimes, tmp_path):
    box = Box.remote()
    pid = zray.get(box.pid.remote(), timeout=30)
    actor_id = box._actor_id
    flag = str(tmp_path / "go")
    ref = use_later.remote([box], flag)
    entry = global_state.worker.refs.get(actor_handle_id(actor_id))
    wait_for(lambda: entry.borrowers, timeout=30)       # the task has unpickled it
    del box
    drop()
    assert state_of(actor_id) == "ALIVE"
    open(flag, "w").close()
    assert zray.get(ref, timeout=30) == 7               # the borrowed handle still works
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)
    wait_for(lambda: process_gone(pid), timeout=20)


@zray.remote
class Holder:
    """Keeps handles it was given (inside a list) beyond the call."""

    def keep(self, handles):
        self.handles = handles
        return True

    def use(self, value):
        return zray.get(self.handles[0].set.remote(value), timeout=30)

    def forget(self):
        self.handles = None
        return True


def test_handle_kept_by_another_actor_keeps_the_actor_alive_until_it_drops_it(lifetimes):
    box = Box.remote()
    pid = zray.get(box.pid.remote(), timeout=30)
    actor_id = box._actor_id
    holder = Holder.remote()
    assert zray.get(holder.keep.remote([box]), timeout=30)
    entry = global_state.worker.refs.get(actor_handle_id(actor_id))
    del box
    drop()
    wait_for(lambda: entry.local == 0, timeout=10)      # only the borrower holds it now
    assert entry.borrowers and global_state.worker.refs.get(actor_handle_id(actor_id))
    assert zray.get(holder.use.remote(9), timeout=30) == 9
    assert state_of(actor_id) == "ALIVE"
    assert zray.get(holder.forget.remote(), timeout=30)
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)
    assert death_message(actor_id) == OUT_OF_SCOPE
    wait_for(lambda: process_gone(pid), timeout=20)
    del holder
    drop()


@zray.remote
class Maker:
    """Creates an actor and hands its handle out (the Maker owns it)."""

    def make(self):
        self.box = Box.remote(5)
        return [self.box]

    def forget(self):
        self.box = None
        return True


def test_handle_returned_from_an_actor_is_borrowed_by_the_caller(lifetimes):
    maker = Maker.remote()
    [box] = zray.get(maker.make.remote(), timeout=30)
    actor_id = box._actor_id
    assert zray.get(maker.forget.remote(), timeout=30)  # the owner drops its own handle
    assert zray.get(box.get.remote(), timeout=30) == 5  # ours keeps it alive
    del box
    drop()
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)
    del maker
    drop()


# ------------------------------------------------------- owners and detached

def test_detached_actor_survives_its_driver_until_killed(lifetimes):
    run_driver(lifetimes, """
        @zray.remote
        class Keeper:
            def ping(self):
                return "pong"
        k = Keeper.options(name="keeper", lifetime="detached").remote()
        assert zray.get(k.ping.remote(), timeout=30) == "pong"
    """)
    keeper = zray.get_actor("keeper")
    assert zray.get(keeper.ping.remote(), timeout=30) == "pong"
    actor_id = keeper._actor_id
    del keeper
    drop()
    again = zray.get_actor("keeper")           # dropping handles does not end it
    assert zray.get(again.ping.remote(), timeout=30) == "pong"
    zray.kill(again)
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)


def test_named_actor_ends_with_its_owner(lifetimes):
    out = run_driver(lifetimes, """
        @zray.remote
        class Named:
            def pid(self):
                return os.getpid()
        n = Named.options(name="ends-with-owner").remote()
        print(zray.get(n.pid.remote(), timeout=30))
        os._exit(0)        # no goodbye: the raylet notices the driver is gone
    """)
    pid = int(out.split()[-1])
    wait_for(lambda: _no_named("ends-with-owner"), timeout=20)
    wait_for(lambda: process_gone(pid), timeout=20)


def _no_named(name: str) -> bool:
    try:
        zray.get_actor(name)
    except ValueError:
        return True
    return False


@zray.remote(num_cpus=0)
def make_box_when(flag: str, started: str, value=None):
    """Wait for ``flag`` (after saying so in ``started``); with a value,
    create an actor and return its handle: this worker then owns it."""
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)
    if value is None:
        return None, os.getpid()
    box = Box.remote(value)
    zray.get(box.get.remote(), timeout=30)
    return [box], os.getpid()


def test_idle_worker_that_owns_an_actor_is_not_stopped(lifetimes, tmp_path):
    """Idle workers beyond the CPU count are stopped (after 1 s here), but
    not one whose actors would die with it."""
    started = tmp_path / "started"
    started.mkdir()
    owners_go, plain_go = str(tmp_path / "owners-go"), str(tmp_path / "plain-go")
    refs = [make_box_when.remote(owners_go if i < 4 else plain_go, str(started / str(i)),
                                 i if i < 4 else None)
            for i in range(8)]                  # 8 at once: 8 workers
    wait_for(lambda: len(os.listdir(started)) == 8, timeout=60)
    open(owners_go, "w").close()                # the plain ones still run meanwhile, so
    results = zray.get(refs[:4], timeout=60)    # their workers cannot become the actors
    open(plain_go, "w").close()
    results += zray.get(refs[4:], timeout=60)
    owners = [pid for handles, pid in results if handles]
    plain = [pid for handles, pid in results if not handles]
    assert len(set(owners + plain)) == 8
    wait_for(lambda: sum(map(process_gone, plain)) >= 2, timeout=20)    # the reaper ran
    assert not any(map(process_gone, owners))
    assert zray.get([h[0].get.remote() for h, _ in results if h], timeout=30) == [0, 1, 2, 3]
    del results, refs
    drop()


def test_actor_created_by_a_task_ends_when_that_worker_dies(lifetimes):
    maker = Maker.remote()
    [box] = zray.get(maker.make.remote(), timeout=30)
    actor_id = box._actor_id
    zray.kill(maker)            # the owner of box dies; our borrowed handle does not help
    wait_for(lambda: state_of(actor_id) == "DEAD", timeout=20)
    assert "owner" in death_message(actor_id)
    with pytest.raises(zexc.RayActorError):
        zray.get(box.get.remote(), timeout=30)


# --------------------------------------------------- resources and warnings

def test_idle_actors_hold_no_cpu_but_explicit_num_cpus_is_held(lifetimes):
    boxes = [Box.remote() for _ in range(12)]      # 12 idle actors on 2 CPUs
    assert zray.get([b.get.remote() for b in boxes], timeout=60) == [0] * 12
    wait_for(lambda: zray.available_resources().get("CPU") == 2.0, timeout=10)
    held = Box.options(num_cpus=1).remote()
    zray.get(held.get.remote(), timeout=30)
    wait_for(lambda: zray.available_resources().get("CPU") == 1.0, timeout=10)
    del held, boxes
    drop()
    wait_for(lambda: zray.available_resources().get("CPU") == 2.0, timeout=20)


@zray.remote(num_cpus=0)
def wait_for_flag(flag: str) -> bool:
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def test_actor_starts_while_task_workers_fill_the_cap(lifetimes, tmp_path):
    """8 task workers (2 CPUs x 4) busy: an actor still gets a worker."""
    flag = str(tmp_path / "go")
    busy = [wait_for_flag.remote(flag) for _ in range(8)]
    box = Box.remote(3)
    ref = box.get.remote()
    try:
        status, value = call_bounded(lambda: zray.get(ref, timeout=20), 30)
        assert (status, value) == ("ok", 3)
    finally:
        open(flag, "w").close()
    assert zray.get(busy, timeout=30) == [True] * 8
    del box
    drop()


def test_what_cannot_be_placed_is_reported_within_seconds(lifetimes, capfd, tmp_path):
    """An actor no node can host, one waiting for CPUs that only actors
    hold, and a task beyond the task-worker cap (2 CPUs x 4): each caller
    gets a warning naming what is missing, in ~10 s."""
    hog = Box.options(num_cpus=2).remote()
    zray.get(hog.get.remote(), timeout=30)
    impossible = Box.options(resources={"unobtainium": 1}).remote()
    starved = Box.options(num_cpus=1).remote()
    flag = str(tmp_path / "go")
    waiting = [wait_for_flag.remote(flag) for _ in range(9)]
    seen = []

    def warned():
        seen.append(capfd.readouterr().err)
        text = "".join(seen)
        return ("unobtainium" in text and "cannot be scheduled" in text
                and "cannot be scheduled right now: {'CPU': 1.0}" in text
                and "wait_for_flag has waited" in text and "cap of 8 task workers" in text)

    started = time.monotonic()
    wait_for(warned, timeout=20, interval=0.2)
    assert time.monotonic() - started < 16
    assert "does not have the resources" in "".join(seen)
    open(flag, "w").close()
    assert zray.get(waiting, timeout=30) == [True] * 9
    zray.kill(hog)
    assert zray.get(starved.get.remote(), timeout=30) == 0     # it runs once CPUs free up
    zray.kill(impossible)
    del impossible, starved, hog
    drop()


def test_starvation_is_not_reported_while_tasks_hold_the_resources():
    class Spec:
        kind, function_name, task_id = 0, "f", b"t" * 16
        resources = {"CPU": 1.0}

    class Worker:
        def __init__(self, actor, held):
            self.task, self.held, self._actor = object(), held, actor

        def hosts_actor(self):
            return self._actor

    class Resources:
        available = {"CPU": 0.0}

        def fits(self, request):
            return False

    watch = Starvation("node", after_s=0.0)
    queues = {"shape": [Spec()]}
    assert watch.check(queues, Resources(), [Worker(False, {"CPU": 1.0})], None) == []
    due = watch.check(queues, Resources(), [Worker(True, {"CPU": 1.0})], None)
    assert len(due) == 1 and "does not have the resources ['CPU']" in due[0][1]
    assert watch.check(queues, Resources(), [Worker(True, {"CPU": 1.0})], None) == []  # once


# ------------------------------------------------------------ never hangs

@zray.remote
class Pinger:
    def __init__(self, other=None):
        self.other = other

    def ping(self, x):
        if self.other is not None:
            return zray.get(self.other.get.remote(), timeout=30) + x
        return x


@pytest.mark.parametrize("round_", range(40))
def test_many_tests_creating_actors_on_one_cluster_never_hang(lifetimes, round_):
    def body():
        box = Box.options(num_cpus=1 if round_ % 4 == 0 else None).remote(round_)
        pingers = [Pinger.remote(box) for _ in range(2)] + [Pinger.remote()]
        return zray.get([p.ping.remote(1) for p in pingers], timeout=60)

    status, value = call_bounded(body, timeout=90)
    assert status == "ok", value
    assert value == [round_ + 1, round_ + 1, 1]


# ------------------------------------------------- owner death across nodes

@zray.remote(num_cpus=0)
def never_ends():
    time.sleep(600)


@zray.remote(resources={"far": 1})
class FarOwner:
    def make(self):
        self.ref = never_ends.remote()
        return [self.ref]


def test_objects_of_an_owner_that_died_on_another_node_raise_owner_died():
    if zray.is_initialized():
        zray.shutdown()
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1, resources={"far": 1})
        cluster.wait_for_nodes()
        cluster.connect()
        owner = FarOwner.remote()
        [ref] = zray.get(owner.make.remote(), timeout=60)
        assert ref.owner_address[3] != global_state.worker.node_id

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(zray.get, ref, timeout=60)    # waits on the far owner
            with pytest.raises(concurrent.futures.TimeoutError):
                waiting.result(timeout=0.5)
            zray.kill(owner)
            started = time.monotonic()
            with pytest.raises(zexc.OwnerDiedError):
                waiting.result(timeout=30)
            assert time.monotonic() - started < 10      # well within the node timeout
        with pytest.raises(zexc.OwnerDiedError):        # and later gets, at once
            zray.get(ref, timeout=10)
    finally:
        if zray.is_initialized():
            zray.shutdown()
        cluster.shutdown()
        assert_nothing_left(cluster.session_dir)
