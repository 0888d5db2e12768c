"""GCS rows, pub/sub events and query replies (issue 7): each is declared once
in ``protocol.py``, read by name, survives the wire codec, and a row stored
by an older GCS (fewer fields, or fields this one no longer knows) still
loads. Pure logic: no cluster."""
from __future__ import annotations

import os

import msgpack
import pytest

from zray.broker import protocol as p
from zray.gcs import rows
from zray.gcs.actor_manager import ActorManager
from zray.gcs.job_manager import JobManager
from zray.gcs.node_manager import NodeManager
from zray.gcs.placement_group_manager import PlacementGroupManager
from zray.gcs.storage import open_storage

A, B = b"a" * 16, b"b" * 16
ADDRESS = ["tcp://127.0.0.1:9", b"w" * 16, 7, B]


def _node(node_id=A, alive=True) -> p.NodeRow:
    return p.NodeRow(node_id, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "10.0.0.1", "host", 42,
                     {"CPU": 2.0}, {"CPU": 1.5}, 1 << 20, 10, alive, 1000.0, "/tmp/s",
                     {"cpu_percent": 5.0})


def _job() -> p.JobRow:
    return p.JobRow(b"\0\0\0\1", 9, ADDRESS, "ns", ["/a"], "/", 1000.0)


def _summary() -> p.ActorSummary:
    return p.ActorSummary(os.urandom(16), "keeper", "ns", "Counter", p.ACTOR_ALIVE, A, 7, 1,
                          True, b"\0\0\0\1", "", 1000.0)


def _group() -> p.PlacementGroupRow:
    return p.PlacementGroupRow(os.urandom(16), "g", [{"CPU": 1.0}, {"CPU": 1.0}], "PACK",
                               b"\0\0\0\1", False, p.PG_PENDING, [A, None], 1000.0)


def _wire(message):
    """``message`` as a peer decodes it."""
    return p.decode(p.encode(message))


# -- rows: storage form ----------------------------------------------------------

@pytest.mark.parametrize("row", [_node(), _job(), _summary(), _group()],
                         ids=lambda r: type(r).__name__)
def test_a_row_round_trips_through_its_storage_dict(row):
    stored = rows.stored(row)
    assert type(stored) is dict and set(stored) == set(type(row)._fields)
    assert rows.load(type(row), stored) == row
    assert rows.load(type(row), None) is None


def test_rows_loaded_share_nothing_with_the_table():
    stored = rows.stored(_node())
    row = rows.load(p.NodeRow, stored)
    row.resources["CPU"] = 99.0
    assert stored["resources"]["CPU"] == 2.0


def test_a_row_written_by_an_older_gcs_loads_with_defaults_and_extras_ignored():
    old = rows.stored(_node())
    del old["stats"], old["end_time"]                 # fields added later
    old["retired_field"] = "whatever"                  # a field this GCS no longer knows
    node = p.NodeRow.from_storage(old)
    assert node.stats == {} and node.end_time is None and node.node_id == A
    job = rows.stored(_job())
    del job["alive"], job["end_time"]
    assert p.JobRow.from_storage(job).alive is True


def test_a_stored_row_without_a_required_field_says_what_to_do():
    broken = rows.stored(_node())
    del broken["address"]
    with pytest.raises(ValueError, match=r"NodeRow has no 'address'.*new storage"):
        p.NodeRow.from_storage(broken)


def test_managers_reload_rows_a_sqlite_table_held_before_a_restart(tmp_path):
    """Dict rows as the GCS wrote them before typed rows (no end_time on a
    live node) reload through every manager."""
    url = f"sqlite:///{tmp_path}/gcs.db"
    storage = open_storage(url)
    node = rows.stored(_node())
    del node["end_time"]
    storage.put("nodes", A, node)
    storage.put("jobs", b"\0\0\0\1", rows.stored(_job()))
    group = _group()
    storage.put("placement_groups", group.pg_id, rows.stored(group))
    storage.close()
    storage = open_storage(url)
    try:
        assert NodeManager(storage, 30).get(A).address == "tcp://127.0.0.1:1"
        assert [n.node_id for n in NodeManager(storage, 30).alive()] == [A]
        assert JobManager(storage).get(b"\0\0\0\1").namespace == "ns"
        assert PlacementGroupManager(storage).pending()[0].nodes == [A, None]
        assert ActorManager(storage).all() == []
    finally:
        storage.close()


# -- events and replies: the wire ---------------------------------------------

def test_events_round_trip_and_are_read_by_name():
    event = _wire(p.NodeEvent(p.NODE_REMOVED, _node(alive=False), "missed heartbeats"))
    assert event.node == _node(alive=False) and event.reason == "missed heartbeats"
    assert _wire(p.JobEvent(p.JOB_STARTED, _job())).job == _job()
    summary = _summary()
    assert _wire(p.ActorEvent(summary.state, summary)).actor == summary
    resources = _wire(p.ResourcesEvent(A, {"CPU": -0.5}, {"CPU": 2.0}, {"time": 1.0}))
    assert resources.available == {"CPU": -0.5} and resources.stats == {"time": 1.0}
    died = _wire(p.WorkerDiedEvent(b"", A, "node died"))
    assert (died.worker_id, died.node_id, died.message) == (b"", A, "node died")
    log = _wire(p.LogEvent(7, "10.0.0.1", ["hello"]))
    assert (log.pid, log.node_ip, log.lines) == (7, "10.0.0.1", ["hello"])
    assert _wire(p.TaskRowsEvent([{"task_id": b"t"}])).rows == [{"task_id": b"t"}]
    assert p.decode_event(p.encode_event(p.LogEvent(1, "", []))) == p.LogEvent(1, "", [])


def test_query_replies_round_trip_and_are_read_by_name():
    assert _wire(p.NodesReply([_node(), _node(B, alive=False)])).nodes == \
        [_node(), _node(B, alive=False)]
    info = _wire(p.ClusterInfoReply([_node()], [_job()], "tcp://127.0.0.1:5", "c1",
                                    "SqliteStorage", 12))
    assert info.nodes == [_node()] and info.jobs == [_job()]
    assert (info.pub_address, info.cluster_id, info.storage, info.requests_served) == \
        ("tcp://127.0.0.1:5", "c1", "SqliteStorage", 12)
    job = _wire(p.RegisterJobReply(b"\0\0\0\2", "tcp://127.0.0.1:5"))
    assert job.job_id == b"\0\0\0\2" and job.pub_address == "tcp://127.0.0.1:5"
    assert _wire(p.JobReply(_job())).job == _job()
    assert _wire(p.JobReply([])).job is None
    assert _wire(p.KVValueReply(True, b"v")).value == b"v"
    assert _wire(p.KVValueReply(False)).found is False
    assert _wire(p.KVPutReply(True)).added is True
    assert _wire(p.KVDeleteReply(False)).deleted is False
    assert _wire(p.KVKeysReply([b"a", b"b"])).keys == [b"a", b"b"]
    actor_id = os.urandom(16)
    created = _wire(p.RegisterActorReply(False, actor_id, b"meta"))
    assert (created.created, created.actor_id, created.handle_meta) == (False, actor_id, b"meta")
    assert _wire(p.NamedActorReply(b"")).actor_id == b""
    assert _wire(p.ActorsReply([_summary()])).actors[0].class_name == "Counter"
    group = _group()
    assert _wire(p.PlacementGroupsReply([group])).groups == [group]
    assert _wire(p.StoreStatsReply({"used": 5})).stats == {"used": 5}
    assert _wire(p.Ack()).ok is True and _wire(p.Ack(False)).ok is False


@pytest.mark.parametrize("cls, index, value, field", [
    (p.NodesReply, 0, "node_id", "NodeRow.node_id"),
    (p.NodesReply, 8, -1, "NodeRow.arena_size"),
    (p.NodesReply, 6, {"CPU": "x"}, "NodeRow.resources"),
    (p.ActorsReply, 4, 5, "ActorSummary.state"),
    (p.PlacementGroupsReply, 7, [b"short"], "PlacementGroupRow.nodes"),
])
def test_a_reply_with_a_malformed_row_is_refused_naming_the_column(cls, index, value, field):
    row = {p.NodesReply: _node, p.ActorsReply: _summary, p.PlacementGroupsReply: _group}[cls]()
    fields = list(row)
    fields[index] = b"x" if value == "node_id" else value
    payload = msgpack.packb([cls.CODE, [fields]], use_bin_type=True)
    with pytest.raises(p.ProtocolError, match=field.replace(".", r"\.")):
        p.decode(payload)


def test_a_row_with_too_few_or_too_many_columns_is_refused():
    for fields in (list(_node())[:5], list(_node()) + [1, 2]):
        with pytest.raises(p.ProtocolError, match="NodeRow"):
            p.decode(msgpack.packb([p.NodeEvent.CODE, "added", fields], use_bin_type=True))


def test_ack_carries_no_value_of_any_type():
    with pytest.raises(p.ProtocolError, match="Ack.ok"):
        p.decode(msgpack.packb([p.Ack.CODE, "pong"], use_bin_type=True))
