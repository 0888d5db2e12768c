"""A node the GCS declared dead (it missed heartbeats) that comes back is told
so and joins again as a new node; the cluster keeps working."""
import os
import signal
import time

import pytest

import zray
from zray.cluster_utils import Cluster

from conftest import assert_nothing_left, wait_for


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("ZRAY_NODE_TIMEOUT_S", "1.5")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        c.shutdown()
        assert_nothing_left(c.session_dir)


def _alive_ids():
    return {n["NodeID"] for n in zray.nodes() if n["Alive"]}


def test_frozen_node_is_declared_dead_then_rejoins_as_a_new_node(cluster):
    node = cluster.add_node(num_cpus=1)
    cluster.connect()
    assert node.node_id in _alive_ids()
    os.kill(node.process.pid, signal.SIGSTOP)        # it misses its heartbeats
    try:
        wait_for(lambda: node.node_id not in _alive_ids(), timeout=15)
        dead = [n for n in zray.nodes() if n["NodeID"] == node.node_id]
        assert dead and dead[0]["Alive"] is False
    finally:
        os.kill(node.process.pid, signal.SIGCONT)
    # told it is dead, it registers again under a new id: two live nodes again
    wait_for(lambda: len(_alive_ids()) == 2 and node.node_id not in _alive_ids(), timeout=15)

    @zray.remote(num_cpus=1)
    def where():
        time.sleep(0.3)
        return zray.get_runtime_context().get_node_id()

    ran_on = set(zray.get([where.remote() for _ in range(4)], timeout=60))
    assert ran_on <= _alive_ids()
