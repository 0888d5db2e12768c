"""The Memory view, as ``ray memory``: every object in the stores of the
cluster with its size, owner and state (pinned by whom, sealed, spilled,
being written), a summary by owner, on the Memory page, ``GET
/api/v0/objects``, ``zray.util.state.list_objects`` and ``zray list objects``;
a node that does not answer never holds the page up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import zray
from zray.broker import protocol as p
from zray.dashboard import store_objects
from zray._private.node import free_port
from zray.store import Arena, ObjectStore
from zray.util import state
from zray.worker import global_state

from conftest import assert_nothing_left, wait_for
from test_dashboard_helpers import start_local

MB = 1 << 20
STORE_BYTES = 64 * MB


@pytest.fixture(scope="module")
def dash():
    """A local 1-CPU cluster with a 64 MiB store and its dashboard."""
    if zray.is_initialized():
        zray.shutdown()
    d = start_local(dashboard_port=free_port(), num_cpus=1, object_store_memory=STORE_BYTES)
    session_dir = global_state.worker.session_dir
    yield d
    zray.shutdown()
    assert_nothing_left(session_dir)


def _row(ref) -> dict | None:
    rows = state.list_objects(filters=[("object_id", "=", ref.hex())])
    return rows[0] if rows else None


# --------------------------------------------------------------------------
# the object table's listing
# --------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    arena = Arena.create(f"/dev/shm/zray_test_mem_{os.getpid()}_{uuid.uuid4().hex[:10]}",
                         1 * MB)
    s = ObjectStore(arena, str(tmp_path / "spill"))
    yield s
    s.close()
    arena.close()
    arena.unlink()


def test_store_lists_each_object_with_its_owner_and_state(store):
    def oid(i):
        return i.to_bytes(4, "big") + b"\0" * 16
    store.create(oid(1), 1000, owner=b"owner-a", writer="w")
    store.create(oid(2), 2000, owner=b"owner-b")
    store.seal(oid(2))
    store.create(oid(3), 3000, owner=b"owner-b")
    store.seal(oid(3))
    store.pin(oid(3), "reader")
    listed, total = store.list_objects(10)
    assert total == 3
    by_id = {o["object_id"]: o for o in listed}
    assert by_id[oid(1)]["state"] == "BEING_WRITTEN" and by_id[oid(1)]["writer"] == "w"
    assert by_id[oid(2)]["state"] == "SEALED" and by_id[oid(2)]["owner"] == b"owner-b"
    assert by_id[oid(3)]["state"] == "PINNED" and by_id[oid(3)]["pins"] == {"reader": 1}
    assert [o["object_id"] for o in store.list_objects(1)[0]] == [oid(3)]   # newest first


# --------------------------------------------------------------------------
# the cluster: state API, REST API, page
# --------------------------------------------------------------------------

def test_put_of_1mb_array_is_listed_with_its_size_owner_pid_and_state(dash):
    ref = zray.put(np.ones(MB // 8))
    row = wait_for(lambda: _row(ref), 10)
    assert MB <= row["object_size"] < MB + 4096
    assert row["owner_pid"] == os.getpid() and row["owner_type"] == "DRIVER"
    assert row["owner_worker_id"] == global_state.worker.worker_id.hex()
    assert row["state"] == "SEALED" and row["pinned_by"] == []
    assert row["node_id"] == row["owner_node_id"]
    api = dash.get("/api/v0/objects?filter_keys=object_id&filter_predicates=%3D"
                   f"&filter_values={ref.hex()}").json()["data"]["result"]
    assert api["result"][0]["object_size"] == row["object_size"]
    assert api["total"] >= 1


def test_held_view_shows_as_pinned_by_its_reader_until_released(dash):
    ref = zray.put(np.arange(MB // 8))
    view = zray.get(ref)
    row = _row(ref)
    assert row["state"] == "PINNED"
    assert row["pinned_by"] == [f"driver pid {os.getpid()}"]
    # objects (issue 13): the reader keeps its pin while it holds the ref (a
    # repeated get is local) and lets go when the store needs the room.
    del view
    global_state.worker.let_go_of_store()
    wait_for(lambda: _row(ref)["state"] == "SEALED", 10)


def test_spilled_object_shows_as_spilled(dash):
    refs = [zray.put(np.full(8 * MB, i, dtype=np.uint8)) for i in range(10)]   # 80 MiB
    spilled = wait_for(lambda: [r for r in refs if (_row(r) or {}).get("state") == "SPILLED"],
                       10)
    assert refs[0] in spilled                       # least recently used goes first
    summary = state.summarize_objects()
    mine = [s for s in summary if s["owner_pid"] == os.getpid()][0]
    assert mine["spilled"] >= len(spilled)
    assert mine["spilled_bytes"] >= len(spilled) * 8 * MB
    assert mine["count"] >= 10
    assert zray.get(refs[0])[0] == 0                # restored on demand


def test_zray_list_objects_prints_each_object_with_its_owner_pid_and_state(dash):
    ref = zray.put(np.ones(MB // 8))
    env = {**os.environ, "ZRAY_ADDRESS": global_state.worker.gcs_address}
    out = subprocess.run([sys.executable, "-m", "zray._private.cli", "list", "objects",
                          "--filter", f"object_id={ref.hex()}"], env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    header, line = out.stdout.splitlines()[:2]
    assert "OBJECT_ID" in header and "OWNER_PID" in header
    assert ref.hex() in line and "SEALED" in line and str(os.getpid()) in line.split()


def test_memory_page_shows_objects_and_the_summary_by_owner(dash):
    ref = zray.put(np.ones(2 * MB // 8))
    view = zray.get(ref)
    page = dash.get("/memory")
    assert page.status == 200
    text = page.text
    assert f'data-object-id="{ref.hex()}"' in text
    row = text.split(f'data-object-id="{ref.hex()}"')[1].split("</tr>")[0]
    assert '<td class="state">PINNED</td>' in row
    assert f'<td class="owner-pid">{os.getpid()}</td>' in row
    assert 'id="owners"' in text and str(os.getpid()) in text.split('id="owners"')[1]
    summary = dash.get("/api/v0/objects/summarize").json()["data"]["result"]
    mine = [s for s in summary["summary"] if s["owner_pid"] == os.getpid()][0]
    assert mine["pinned"] >= 1 and mine["pinned_bytes"] >= 2 * MB
    assert dash.get("/memory", token=None).status == 302      # the token is needed
    del view


def test_node_that_does_not_answer_is_left_out_with_a_warning_within_its_timeout():
    def node(node_id, alive, address):
        return p.NodeRow(node_id, address, "tcp://127.0.0.1:2", "127.0.0.1", "h", 1, {}, {},
                         0, 0, alive, 0.0, "/tmp")
    silent = node(b"\x01" * 16, True, f"tcp://127.0.0.1:{free_port()}")
    dead = node(b"\x02" * 16, False, "tcp://127.0.0.1:1")
    started = time.monotonic()
    answers, warnings = store_objects.ask_raylets([silent, dead], 10, timeout=0.5)
    assert time.monotonic() - started < 3.0
    assert answers == {}
    assert len(warnings) == 1 and "010101010101" in warnings[0]
    assert "did not" in warnings[0]


# --------------------------------------------------------------------------
# two nodes: owners named across nodes; a dead node does not hold the list up
# --------------------------------------------------------------------------

@zray.remote
def make_array(n):
    return np.ones(n // 8)


def test_object_on_another_node_names_its_owner_and_a_silent_node_only_warns():
    from zray.cluster_utils import Cluster
    from zray.dashboard import rows
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if zray.is_initialized():
        zray.shutdown()
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=1)
        other = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cluster.connect()
        here = zray.get_runtime_context().get_node_id()
        ref = make_array.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            other.node_id, soft=False)).remote(MB)
        zray.wait([ref], timeout=60, fetch_local=False)     # made there, not fetched
        row = wait_for(lambda: _row(ref), 10)
        assert row["node_id"] == other.node_id and row["owner_node_id"] == here
        assert row["owner_pid"] == os.getpid() and row["owner_type"] == "DRIVER"

        os.kill(other.process.pid, signal.SIGSTOP)   # alive to the GCS, silent
        try:
            started = time.monotonic()
            listed = rows.list_state(global_state.worker.gcs, "objects", limit=100)
            assert time.monotonic() - started < store_objects.NODE_TIMEOUT_S + 2.0
            assert other.node_id[:12] in " ".join(listed["warnings"] or [])
            assert ref.hex() not in {o["object_id"] for o in listed["result"]}
        finally:
            os.kill(other.process.pid, signal.SIGCONT)
    finally:
        zray.shutdown()
        cluster.shutdown()
        assert_nothing_left(cluster.session_dir)
