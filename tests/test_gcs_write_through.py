"""A whole workload on a cluster whose GCS deep-copies every row on put and
get (ZRAY_GCS_STORAGE=memory+copy://): every result is right, so no code of
the GCS relies on sharing a row with its tables (every change is written
through ``storage.put``). The same on sqlite: every row is storable."""
from __future__ import annotations

import os
import signal

import pytest

import zray
from zray.broker import protocol as p
from zray.exceptions import RayActorError
from zray.util import state
from zray.util.placement_group import (placement_group, placement_group_table,
                                       remove_placement_group)
from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from zray.worker import global_state

from conftest import wait_for


@zray.remote
def square(x):
    return x * x


@zray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def incr(self):
        self.value += 1
        return self.value

    def pid(self):
        return os.getpid()


@pytest.fixture(params=["memory+copy", "sqlite"])
def copying_cluster(request, start_cluster, monkeypatch, tmp_path):
    """A local cluster whose GCS deep-copies rows (memory+copy://), or keeps
    them msgpack'd in a sqlite file (what a restart reloads)."""
    url, kind = {"memory+copy": ("memory+copy://", "DeepCopyStorage"),
                 "sqlite": (f"sqlite:///{tmp_path}/gcs.db", "SqliteStorage")}[request.param]
    monkeypatch.setenv("ZRAY_GCS_STORAGE", url)       # daemons inherit it
    start_cluster(num_cpus=2)
    info = global_state.worker.gcs.call(p.GetClusterInfo())
    assert info.storage == kind
    return zray


def _answering_pid(actor, old_pid: int) -> int:
    """Call until the actor answers from a process other than ``old_pid``."""
    def answer():
        try:
            pid = zray.get(actor.pid.remote(), timeout=20)
        except RayActorError:
            return None
        return pid if pid != old_pid else None
    return wait_for(answer, timeout=30, interval=0.1)


def test_a_whole_workload_runs_on_tables_that_share_no_row(copying_cluster):
    # tasks
    assert zray.get([square.remote(i) for i in range(20)], timeout=60) == \
        [i * i for i in range(20)]

    # a named actor, found by name with its state
    counter = Counter.options(name="counter", max_restarts=1).remote()
    assert zray.get([counter.incr.remote() for _ in range(3)], timeout=30) == [1, 2, 3]
    same = zray.get_actor("counter")
    assert zray.get(same.incr.remote(), timeout=30) == 4

    # its process killed: it restarts (max_restarts=1), state reset
    pid = zray.get(counter.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    _answering_pid(counter, pid)
    assert zray.get(counter.incr.remote(), timeout=30) == 1
    row = next(a for a in state.list_actors(detail=True) if a["name"] == "counter")
    assert row["state"] == "ALIVE" and row["num_restarts"] == 1

    # zray.kill: dead for good, and listed so
    other = Counter.remote()
    assert zray.get(other.incr.remote(), timeout=30) == 1
    zray.kill(other)
    with pytest.raises(RayActorError):
        zray.get(other.incr.remote(), timeout=30)
    other_id = other._actor_id.hex()
    wait_for(lambda: any(a["actor_id"] == other_id and a["state"] == "DEAD"
                         for a in state.list_actors(detail=True)), timeout=10)

    # a placement group: created, used, removed
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK", name="pg")
    assert pg.wait(30)
    assert placement_group_table(pg)["state"] == p.PG_CREATED
    in_group = square.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote(7)
    assert zray.get(in_group, timeout=30) == 49
    remove_placement_group(pg)
    wait_for(lambda: placement_group_table(pg)["state"] == p.PG_REMOVED, timeout=10)
    # its resources come back: a task needing both CPUs runs
    assert zray.get(square.options(num_cpus=2).remote(3), timeout=30) == 9

    # KV
    gcs = global_state.worker.gcs
    assert gcs.call(p.KVPut("test", b"key", b"value", False)).added is True
    assert gcs.call(p.KVPut("test", b"key", b"other", False)).added is False
    assert gcs.call(p.KVGet("test", b"key")).value == b"value"
    assert gcs.call(p.KVKeys("test", b"k")).keys == [b"key"]
    assert gcs.call(p.KVDelete("test", b"key")).deleted is True
    assert gcs.call(p.KVGet("test", b"key")).found is False

    # the node table, as zray.nodes() shows it
    nodes = zray.nodes()
    assert [n["Alive"] for n in nodes] == [True] and nodes[0]["Resources"]["CPU"] == 2
    assert zray.cluster_resources()["CPU"] == 2
    wait_for(lambda: zray.available_resources().get("CPU", 0) >= 1, timeout=10)

    # the actor table, as list_actors shows it
    listed = {a["actor_id"]: a for a in state.list_actors(detail=True)}
    assert listed[counter._actor_id.hex()]["state"] == "ALIVE"
    assert listed[other_id]["state"] == "DEAD"
