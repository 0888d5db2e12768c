"""Many nodes on one machine (issue 4): joining, scheduling across nodes,
moving objects between nodes' stores, surviving the loss of a node.

Every cluster here is a ``zray.cluster_utils.Cluster``: each node is its own
raylet process with its own arena, and nodes talk TCP as separate hosts
would. Each class of tests shares one cluster (class-scoped fixture, always
shut down and checked for leftovers); the driver (this process) is attached
to the head node.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import zray
from zray import exceptions as zexc
from zray.broker import protocol as p
from zray.broker import security
from zray.cluster_utils import Cluster
from zray.worker import global_state
from zray._private.node import free_port
from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from conftest import assert_nothing_left, wait_for

#: node timeout for the node-loss tests (the GCS reads ZRAY_NODE_TIMEOUT_S at start)
NODE_TIMEOUT_S = 3
#: how long a node-loss test waits for the GCS to declare a killed node dead
DEATH_WAIT_S = NODE_TIMEOUT_S + 5

MB = 1024 * 1024


# ---------------------------------------------------------------- helpers

def node_id() -> str:
    return zray.get_runtime_context().get_node_id()


def alive_nodes() -> dict[str, dict]:
    return {n["NodeID"]: n for n in zray.nodes() if n["Alive"]}


def is_alive(nid: str) -> bool:
    return any(n["NodeID"] == nid and n["Alive"] for n in zray.nodes())


def on(nid: str, soft: bool = False) -> dict:
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(nid, soft=soft)}


def crash(cluster: Cluster, node) -> None:
    """Kill a node as a crash would and wait until the GCS declares it dead."""
    cluster.remove_node(node)
    wait_for(lambda: not is_alive(node.node_id), timeout=DEATH_WAIT_S)


@zray.remote(num_cpus=1)
def where():
    return zray.get_runtime_context().get_node_id()


@zray.remote
class Where:
    def node(self):
        return zray.get_runtime_context().get_node_id()


def _start_cluster(cluster: Cluster, *nodes: dict) -> list:
    handles = [cluster.add_node(**kw) for kw in nodes]
    cluster.wait_for_nodes()
    cluster.connect()
    return handles


def _stop_cluster(cluster: Cluster) -> None:
    try:
        cluster.shutdown()
    finally:
        assert_nothing_left(cluster.session_dir)


# ============================================================ a stable cluster

@pytest.fixture(scope="class")
def three():
    """A 3 x 1-CPU cluster; the third node alone has the custom resource
    ``special``. Nodes are never removed from it."""
    if zray.is_initialized():
        zray.shutdown()
    cluster = Cluster()
    try:
        head, w1, w2 = _start_cluster(cluster, {"num_cpus": 1}, {"num_cpus": 1},
                                      {"num_cpus": 1, "resources": {"special": 2}})
        ids = [head.node_id, w1.node_id, w2.node_id]
        # warm up: every node has run a task (workers up, function exported)
        assert zray.get([where.options(**on(n)).remote() for n in ids], timeout=60) == ids
        cluster.ids = ids
        cluster.special = w2.node_id
        cluster.driver_node = node_id()
        yield cluster
    finally:
        _stop_cluster(cluster)


class TestScheduling:
    def test_nodes_and_cluster_resources(self, three):
        nodes = zray.nodes()
        assert sorted(n["NodeID"] for n in nodes) == sorted(three.ids)
        assert all(n["Alive"] for n in nodes), nodes
        assert three.driver_node in three.ids
        res = zray.cluster_resources()
        assert res.get("CPU") == 3, res
        assert res.get("special") == 2, res
        summed: dict = {}
        for n in nodes:
            for k, v in n["Resources"].items():
                summed[k] = summed.get(k, 0) + v
        assert {k: v for k, v in summed.items() if k in ("CPU", "special")} == \
            {"CPU": 3, "special": 2}

    def test_three_tasks_run_at_once_on_three_nodes(self, three):
        @zray.remote(num_cpus=1)
        def nap():
            time.sleep(1)
            return zray.get_runtime_context().get_node_id()

        start = time.monotonic()
        got = zray.get([nap.remote() for _ in range(3)], timeout=30)
        took = time.monotonic() - start
        assert took < 2.5, f"3 one-second tasks on 3 one-CPU nodes took {took:.2f}s"
        assert sorted(got) == sorted(three.ids)

    def test_spread_uses_every_node(self, three):
        @zray.remote(num_cpus=0.1)
        def here():
            return zray.get_runtime_context().get_node_id()

        # SPREAD goes round the nodes with room (as Ray's): on an idle cluster,
        # every node; the earlier tests' leases are given back once idle
        wait_for(lambda: zray.available_resources().get("CPU") == 3)
        got = zray.get([here.options(scheduling_strategy="SPREAD").remote()
                        for _ in range(6)], timeout=30)
        assert set(got) == set(three.ids)

    def test_node_affinity_hard(self, three):
        for nid in three.ids:
            got = zray.get([where.options(**on(nid)).remote() for _ in range(2)], timeout=30)
            assert got == [nid, nid], (f"pinned to {nid} (driver on {three.driver_node}), "
                                       f"ran on {got}")

    def test_custom_resource_routes_task(self, three):
        @zray.remote(num_cpus=0, resources={"special": 1})
        def special():
            return zray.get_runtime_context().get_node_id()

        assert set(zray.get([special.remote() for _ in range(4)], timeout=30)) == \
            {three.special}

    def test_actor_with_custom_resource(self, three):
        actor = Where.options(resources={"special": 1}).remote()
        try:
            assert zray.get(actor.node.remote(), timeout=30) == three.special
        finally:
            zray.kill(actor)

    def test_object_moves_between_nodes(self, three):
        """A 20 MB array made on node P is read on the driver's node and
        passed as an argument to a task on the third node C."""
        producer, consumer = [n for n in three.ids if n != three.driver_node]

        @zray.remote(num_cpus=0)
        def make(n):
            return np.arange(n, dtype=np.int64)

        @zray.remote(num_cpus=0)
        def check(arr):
            return (zray.get_runtime_context().get_node_id(), arr.shape, int(arr[-1]),
                    int(arr.sum()))

        n = 20 * MB // 8
        expected = np.arange(n, dtype=np.int64)
        ref = make.options(**on(producer)).remote(n)
        arr = zray.get(ref, timeout=60)
        assert arr.shape == (n,)
        np.testing.assert_array_equal(arr, expected)
        got = zray.get(check.options(**on(consumer)).remote(ref), timeout=60)
        assert got == (consumer, (n,), n - 1, int(expected.sum()))
        del arr

    def test_concurrent_gets_of_one_remote_object(self, three):
        """Two tasks on one node get the same object (from another node) at
        the same time; both see it whole."""
        producer, reader = [n for n in three.ids if n != three.driver_node]

        @zray.remote(num_cpus=0)
        def make(n):
            return np.full(n, 7, dtype=np.int64)

        @zray.remote(num_cpus=0)
        def read(boxed):
            arr = zray.get(boxed[0])
            return zray.get_runtime_context().get_node_id(), int(arr.sum()), len(arr)

        n = 40 * MB // 8
        ref = make.options(**on(producer)).remote(n)
        ready, _ = zray.wait([ref], timeout=60, fetch_local=False)       # made, not fetched
        assert ready
        got = zray.get([read.options(**on(reader)).remote([ref]) for _ in range(2)],
                       timeout=60)
        assert got == [(reader, 7 * n, n)] * 2

    def test_status_lists_every_node(self, three):
        out = subprocess.run(
            [sys.executable, "-m", "zray._private.cli", "status", "--address", three.address],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        for nid in three.ids:
            assert nid[:12] in out.stdout, out.stdout
        assert "3 alive" in out.stdout, out.stdout


# ========================================================= losing nodes

@pytest.fixture(scope="class")
def dyn():
    """A cluster with a short node timeout: a 1-CPU head (the driver's node)
    and a 1-CPU worker that stay; tests add nodes and crash them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ZRAY_NODE_TIMEOUT_S", str(NODE_TIMEOUT_S))
    if zray.is_initialized():
        zray.shutdown()
    cluster = Cluster()
    try:
        head, worker = _start_cluster(cluster, {"num_cpus": 1}, {"num_cpus": 1})
        cluster.stable = {head.node_id, worker.node_id}
        assert zray.get([where.options(**on(n)).remote() for n in sorted(cluster.stable)],
                        timeout=60) == sorted(cluster.stable)
        yield cluster
    finally:
        try:
            _stop_cluster(cluster)
        finally:
            mp.undo()


class TestNodeLoss:
    def test_node_timeout_from_environment_reaches_the_gcs(self, dyn):
        """ZRAY_NODE_TIMEOUT_S set before the Cluster starts is what its GCS uses."""
        with open(os.path.join(dyn.session_dir, "logs", "gcs.log")) as f:
            found = re.search(r"a node silent for ([0-9.]+)s is dead", f.read())
        assert found, "the GCS should log its node timeout at start"
        value = found.group(1)
        assert float(value) == NODE_TIMEOUT_S, \
            f"the GCS runs with ZRAY_NODE_TIMEOUT_S={value!r}, the test set {NODE_TIMEOUT_S}"

    def test_removed_node_is_marked_dead(self, dyn):
        victim = dyn.add_node(num_cpus=1)
        assert is_alive(victim.node_id)
        crash(dyn, victim)
        dead = [n for n in zray.nodes() if n["NodeID"] == victim.node_id]
        assert dead and dead[0]["Alive"] is False
        assert set(alive_nodes()) == dyn.stable

    def test_node_affinity_to_dead_node(self, dyn):
        victim = dyn.add_node(num_cpus=1)
        assert zray.get(where.options(**on(victim.node_id)).remote(), timeout=30) == \
            victim.node_id
        crash(dyn, victim)
        hard = where.options(**on(victim.node_id, soft=False)).remote()
        with pytest.raises(zexc.RayError) as info:
            zray.get(hard, timeout=20)
        assert not isinstance(info.value, zexc.GetTimeoutError), \
            "a task pinned (soft=False) to a dead node hung instead of failing"
        soft = where.options(**on(victim.node_id, soft=True)).remote()
        assert zray.get(soft, timeout=20) in dyn.stable

    def test_tasks_on_removed_node_are_retried_elsewhere(self, dyn, tmp_path):
        victim = dyn.add_node(num_cpus=2)

        @zray.remote(num_cpus=1, max_retries=1)
        def stuck_on(victim_id, marks, i):
            here = zray.get_runtime_context().get_node_id()
            if here == victim_id:
                open(os.path.join(marks, f"{i}"), "w").close()
                time.sleep(120)
            return here

        refs = [stuck_on.options(**on(victim.node_id, soft=True)).remote(
            victim.node_id, str(tmp_path), i) for i in range(2)]
        wait_for(lambda: len(os.listdir(tmp_path)) == 2, timeout=30)   # both run there
        crash(dyn, victim)
        got = zray.get(refs, timeout=30)
        assert set(got) <= dyn.stable, got

    def test_actor_on_removed_node_restarts_elsewhere(self, dyn):
        victim = dyn.add_node(num_cpus=1)
        actor = Where.options(max_restarts=1, **on(victim.node_id, soft=True)).remote()
        try:
            assert zray.get(actor.node.remote(), timeout=30) == victim.node_id
            crash(dyn, victim)
            deadline = time.monotonic() + 30
            while True:         # a call may find it still restarting, or (sent
                try:            # before this driver heard of the death) die with it
                    got = zray.get(actor.node.remote(), timeout=30)
                    break
                except (zexc.ActorUnavailableError, zexc.ActorDiedError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert got in dyn.stable
        finally:
            zray.kill(actor)

    def test_lost_object_is_rebuilt_from_lineage(self, dyn):
        victim = dyn.add_node(num_cpus=1)

        @zray.remote(num_cpus=1, max_retries=1)
        def make(n):
            return np.arange(n, dtype=np.int64), zray.get_runtime_context().get_node_id()

        n = 2 * MB // 8
        ref = make.options(**on(victim.node_id, soft=True)).remote(n)
        ready, _ = zray.wait([ref], timeout=30, fetch_local=False)      # made there, never fetched here
        assert ready
        crash(dyn, victim)
        arr, made_on = zray.get(ref, timeout=30)
        np.testing.assert_array_equal(arr, np.arange(n, dtype=np.int64))
        assert made_on in dyn.stable

    def test_lost_object_is_rebuilt_before_the_drivers_death_notice(self, dyn, monkeypatch):
        """A get that finds its object gone from a node the GCS already
        declared dead, before the death notice reached the driver, rebuilds
        it from its lineage all the same (here the notice never comes)."""
        victim = dyn.add_node(num_cpus=1)
        inbox = global_state.worker.inbox
        hear = inbox._on_event
        monkeypatch.setattr(inbox, "_on_event", lambda topic, event: None
                            if topic == p.TOPIC_NODE and event.event == p.NODE_REMOVED
                            else hear(topic, event))

        @zray.remote(num_cpus=1, max_retries=1)
        def make(n):
            return np.arange(n, dtype=np.int64)

        n = 2 * MB // 8
        ref = make.options(**on(victim.node_id, soft=True)).remote(n)
        ready, _ = zray.wait([ref], timeout=30, fetch_local=False)
        assert ready
        crash(dyn, victim)
        np.testing.assert_array_equal(zray.get(ref, timeout=30), np.arange(n, dtype=np.int64))

    def test_lost_object_without_retries_raises(self, dyn):
        victim = dyn.add_node(num_cpus=1)

        @zray.remote(num_cpus=1, max_retries=0)
        def make(n):
            return np.arange(n, dtype=np.int64)

        ref = make.options(**on(victim.node_id, soft=True)).remote(2 * MB // 8)
        ready, _ = zray.wait([ref], timeout=30, fetch_local=False)
        assert ready
        crash(dyn, victim)
        with pytest.raises(zexc.ObjectLostError):
            zray.get(ref, timeout=30)

    def test_infeasible_task_waits_for_a_node_that_fits(self, dyn):
        @zray.remote(num_cpus=1, resources={"later": 1})
        def needs_later():
            return zray.get_runtime_context().get_node_id()

        ref = needs_later.remote()
        with pytest.raises(zexc.GetTimeoutError):
            zray.get(ref, timeout=1.5)
        node = dyn.add_node(num_cpus=1, resources={"later": 1})
        assert zray.get(ref, timeout=30) == node.node_id


# ======================================================== joining errors

def test_join_wrong_address_fails_fast(monkeypatch, tmp_path):
    """A driver with a cluster key but the address of nothing at all gets a
    ConnectionError that names the address, within seconds."""
    if zray.is_initialized():
        zray.shutdown()
    key = security.create_key_file(str(tmp_path / "cluster.key"))
    monkeypatch.delenv(security.ENV_KEY, raising=False)
    monkeypatch.setenv(security.ENV_KEY_FILE, key)
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionError) as info:
            zray.init(address=address)
    finally:
        if zray.is_initialized():
            zray.shutdown()
    took = time.monotonic() - start
    assert took < 8, f"joining a wrong address took {took:.1f}s to fail"
    assert address in str(info.value), str(info.value)
