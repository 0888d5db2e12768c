"""The GCS tables without a cluster: place(), the managers (nodes, actors and
their restart policy), the GCS's side of actor lifetimes, and a GCS rebuilt
on the tables another one left (a restart)."""
from __future__ import annotations

import os
import types

import msgpack
import pytest

from zray.broker import protocol as p
from zray.gcs import rows
from zray.gcs.actor_manager import OUT_OF_SCOPE, OWNER_DIED, ActorManager, should_restart
from zray.gcs.actor_scheduler import pick_node
from zray.gcs.node_manager import NodeManager
from zray.gcs.placement_group_scheduler import place
from zray.gcs.server import GcsServer
from zray.gcs.storage import DeepCopyStorage, open_storage

from conftest import task_batch

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


# --------------------------------------------------------------------------
# place()
# --------------------------------------------------------------------------

def test_pack_puts_every_bundle_on_one_node_when_one_holds_them():
    free = {A: {"CPU": 2.0}, B: {"CPU": 4.0}}
    assert place([{"CPU": 1.0}, {"CPU": 2.0}], "PACK", free) == [B, B]


def test_pack_falls_back_to_few_nodes_and_strict_pack_refuses():
    free = {A: {"CPU": 2.0}, B: {"CPU": 2.0}}
    bundles = [{"CPU": 2.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    placement = place(bundles, "PACK", free)
    assert placement is not None and len(set(placement)) == 2
    assert place(bundles, "STRICT_PACK", free) is None


def test_spread_uses_every_node_before_reusing_one():
    free = {A: {"CPU": 4.0}, B: {"CPU": 4.0}}
    placement = place([{"CPU": 1.0}] * 3, "SPREAD", free)
    assert set(placement[:2]) == {A, B} and placement[2] in (A, B)


def test_strict_spread_needs_a_node_per_bundle():
    free = {A: {"CPU": 4.0}, B: {"CPU": 4.0}}
    assert sorted(place([{"CPU": 1.0}] * 2, "STRICT_SPREAD", free)) == [A, B]
    assert place([{"CPU": 1.0}] * 3, "STRICT_SPREAD", free) is None


def test_place_returns_none_when_a_bundle_fits_nowhere_and_leaves_its_input_alone():
    free = {A: {"CPU": 1.0}}
    assert place([{"GPU": 1.0}], "PACK", free) is None
    assert place([{"CPU": 1.0}, {"CPU": 1.0}], "SPREAD", free) is None
    assert free == {A: {"CPU": 1.0}}


# --------------------------------------------------------------------------
# the node table
# --------------------------------------------------------------------------

def _register_node(node_id=A, cpus=2.0, address="tcp://127.0.0.1:1") -> p.RegisterNode:
    return p.RegisterNode(node_id, address, "tcp://127.0.0.1:2", "127.0.0.1", "host",
                          os.getpid(), {"CPU": cpus}, 1 << 20, "/tmp/session")


def _beat(node_id=A, available=None) -> p.Heartbeat:
    available = {"CPU": 1.0} if available is None else available
    return p.Heartbeat(node_id, available, 10, {"CPU": 2.0}, {"cpu_percent": 5.0,
                                                             "bogus": "x"})


def test_node_register_heartbeat_and_rows_cannot_change_the_table():
    storage = DeepCopyStorage()
    nodes = NodeManager(storage, node_timeout_s=30)
    row = nodes.register(_register_node())
    with pytest.raises(TypeError, match="read-only"):     # a row is read-only, deep down
        row.resources["CPU"] = 99.0
    with pytest.raises(TypeError, match="read-only"):
        row.available.update(CPU=99.0)
    assert nodes.get(A).resources["CPU"] == 2.0 and nodes.get(A).alive is True
    status, node = nodes.heartbeat(_beat())
    assert status == p.HEARTBEAT_OK
    assert node.available == {"CPU": 1.0} and node.stats == {"cpu_percent": 5.0}
    assert row.available == {"CPU": 2.0}      # a row got before is a snapshot: not changed
    assert storage.get("nodes", A)["store_used"] == 10       # written through (a dict)
    nodes.reserve(A, {"CPU": 0.5})
    assert nodes.get(A).available["CPU"] == pytest.approx(0.5)


def test_heartbeat_of_unknown_node_says_register_again_and_of_dead_node_says_dead():
    nodes = NodeManager(DeepCopyStorage(), node_timeout_s=30)
    assert nodes.heartbeat(_beat(B)) == (p.HEARTBEAT_UNKNOWN, None)
    nodes.register(_register_node(A))
    assert nodes.mark_dead(A).alive is False
    assert nodes.mark_dead(A) is None                    # once
    assert nodes.heartbeat(_beat(A)) == (p.HEARTBEAT_DEAD, None)


class FakeClock:
    """Stands in for the ``time`` module of the node table: time moves when told."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return self.now


def test_a_node_that_stops_reporting_expires(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("zray.gcs.node_manager.time", clock)
    nodes = NodeManager(DeepCopyStorage(), node_timeout_s=10)
    nodes.register(_register_node(A))
    nodes.register(_register_node(B))
    clock.now += 6
    nodes.heartbeat(_beat(B))                           # B reports, A stays silent
    assert nodes.expired() == []
    clock.now += 6
    assert nodes.expired() == [A]
    nodes.mark_dead(A)
    assert nodes.expired() == []


# --------------------------------------------------------------------------
# the actor table and its restart policy
# --------------------------------------------------------------------------

OWNER_WORKER, OWNER_NODE = b"w" * 16, A


def _spec(actor_id: bytes, resources=None, options=None, owner_worker=OWNER_WORKER,
          owner_node=OWNER_NODE) -> list:
    return list(p.TaskSpec(os.urandom(16), b"\0\0\0\1", p.TASK_ACTOR_CREATION, b"f" * 16,
                           "Counter", [], [], 1, resources or {"CPU": 1.0}, 0, False,
                           ["tcp://127.0.0.1:9", owner_worker, os.getpid(), owner_node],
                           0, actor_id, "", options or {}))


def _register_actor(actor_id: bytes, max_restarts=0, name="", detached=False, **spec_kw):
    return p.RegisterActor(actor_id, _spec(actor_id, **spec_kw), name, "ns", detached,
                           max_restarts, False, "Counter", b"meta")


def _started(actor_id: bytes, node_id=A) -> p.ActorStarted:
    return p.ActorStarted(actor_id, os.urandom(16), "tcp://127.0.0.1:7", node_id,
                          os.getpid(), b"")


def _actor(max_restarts: int, restarts=0, no_restart=False):
    """What the restart policy reads of an ActorRow."""
    return types.SimpleNamespace(max_restarts=max_restarts, restarts=restarts,
                                 no_restart=no_restart)


def test_restart_policy():
    assert not should_restart(_actor(0), intentional=False)
    assert should_restart(_actor(2, restarts=1), intentional=False)
    assert not should_restart(_actor(2, restarts=2), intentional=False)
    assert should_restart(_actor(-1, restarts=10 ** 6), intentional=False)
    assert not should_restart(_actor(-1), intentional=True)            # exit_actor()
    assert not should_restart(_actor(-1, no_restart=True), intentional=False)   # kill


def test_actor_restarts_up_to_max_restarts_then_dies_for_good():
    actors = ActorManager(DeepCopyStorage())
    actor_id = os.urandom(16)
    spec = p.task_spec(_spec(actor_id))
    assert actors.register(_register_actor(actor_id, max_restarts=1), spec).state == \
        p.ACTOR_PENDING
    assert actors.started(_started(actor_id)).incarnation == 1
    actor, restart = actors.died(actor_id, "crashed", intentional=False)
    assert restart and actor.state == p.ACTOR_RESTARTING and actor.restarts == 1
    actors.started(_started(actor_id))
    actor, restart = actors.died(actor_id, "crashed again", intentional=False)
    assert not restart and actor.state == p.ACTOR_DEAD
    assert actor.death_message == "crashed again"
    assert actors.died(actor_id, "late report", False) == (None, False)
    assert actors.get(actor_id).owner_worker_id == OWNER_WORKER


def test_a_dead_named_actor_frees_its_name():
    actors = ActorManager(DeepCopyStorage())
    actor_id = os.urandom(16)
    actors.register(_register_actor(actor_id, name="x"), p.task_spec(_spec(actor_id)))
    assert actors.named("x", "ns").actor_id == actor_id
    assert actors.named("x", "other") is None
    actors.died(actor_id, "gone", intentional=True)
    assert actors.named("x", "ns") is None


def _scan(actors: ActorManager, keep) -> set[bytes]:
    """What a scan over every row answers (the indexes must agree with it)."""
    return {a.actor_id for a in actors.all() if keep(a)}


def _answers(actors: ActorManager) -> dict:
    return {
        "of_owner": {o: {a.actor_id for a in actors.of_owner(o, b"")} for o in (OWNER_WORKER, B)},
        "of_node_owner": {a.actor_id for a in actors.of_owner(b"", C)},
        "alive_on": {n: {a.actor_id for a in actors.alive_on(n)} for n in (A, B)},
        "being_created_on": {n: {a.actor_id for a in actors.being_created_on(n)}
                             for n in (A, B)},
        "unfinished": {a.actor_id for a in actors.unfinished()},
        "counts": actors.alive_count_by_node(),
    }


def test_actor_queries_follow_moves_deaths_and_a_reload():
    storage = DeepCopyStorage()
    actors = ActorManager(storage)
    ids = [os.urandom(16) for _ in range(6)]
    for i, actor_id in enumerate(ids):
        owner = OWNER_WORKER if i % 2 else B
        msg = _register_actor(actor_id, max_restarts=1, owner_worker=owner, owner_node=C)
        actors.register(msg, p.task_spec(msg.spec))
    actors.scheduled(ids[0], A)
    actors.scheduled(ids[0], B)                   # moved before it started
    actors.started(_started(ids[1], A))
    actors.started(_started(ids[2], B))
    actors.died(ids[2], "crashed", intentional=False)       # restarting
    actors.started(_started(ids[3], A))
    actors.died(ids[3], "exit", intentional=True)           # dead
    actors.died(ids[4], "never started", intentional=True)  # dead while pending
    live = lambda a: a.state != p.ACTOR_DEAD                 # noqa: E731
    answers = _answers(actors)
    assert answers["of_owner"] == {
        o: _scan(actors, lambda a, o=o: live(a) and a.owner_worker_id == o)
        for o in (OWNER_WORKER, B)}
    assert answers["of_node_owner"] == _scan(actors, live) == {ids[0], ids[1], ids[2], ids[5]}
    assert answers["alive_on"] == {A: {ids[1]}, B: set()}
    assert answers["being_created_on"] == {A: set(), B: {ids[0], ids[2]}}
    assert answers["unfinished"] == {ids[0], ids[2], ids[5]}
    assert answers["counts"] == {A: 1}
    assert _answers(ActorManager(storage)) == answers        # rebuilt from the table


def test_table_rows_are_read_only_deep_down_and_stored_as_plain_dicts():
    storage = DeepCopyStorage()
    actors = ActorManager(storage)
    actor_id = os.urandom(16)
    row = actors.register(_register_actor(actor_id), p.task_spec(_spec(actor_id)))
    for change in (lambda: row.spec.append(1), lambda: row.spec[8].update(GPU=1.0),
                   lambda: row.spec[11].__setitem__(0, "x")):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert p.task_spec(rows.plain(row.spec)).actor_id == actor_id        # reads as before
    msgpack.packb([[k, v] for k, v in storage.items("actors")], use_bin_type=True,
                  strict_types=True)                 # stored as plain dicts and lists
    assert actors.get(actor_id) is row             # no copy: a read-only row is shared
    started = actors.started(_started(actor_id))
    assert row.state == p.ACTOR_PENDING and started.state == p.ACTOR_ALIVE   # a snapshot
    assert storage.get("actors", actor_id)["state"] == p.ACTOR_ALIVE        # written through


def test_actor_goes_to_the_node_with_most_free_cpu_or_where_its_options_say():
    def node(node_id, total, free):
        return p.NodeRow(node_id, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "127.0.0.1", "h",
                         1, {"CPU": total}, {"CPU": free}, 0, 0, True, 0.0, "/tmp")
    alive = [node(A, 4.0, 1.0), node(B, 4.0, 3.0), node(C, 1.0, 1.0)]
    spec = p.task_spec(_spec(os.urandom(16), resources={"CPU": 2.0}))
    assert pick_node(spec, alive, {}).node_id == B
    spread = p.task_spec(_spec(os.urandom(16), options={"strategy": "SPREAD"}))
    assert pick_node(spread, alive, {A: 0, B: 3, C: 1}).node_id == A
    pinned = p.task_spec(_spec(os.urandom(16), options={"strategy": "NODE", "node_id": C}))
    assert pick_node(pinned, alive, {}).node_id == C
    hard = p.task_spec(_spec(os.urandom(16), resources={"CPU": 2.0},
                             options={"strategy": "NODE", "node_id": C}))
    assert pick_node(hard, alive, {}) == "affinity"
    gpu = p.task_spec(_spec(os.urandom(16), resources={"GPU": 1.0}))
    assert pick_node(gpu, alive, {}) is None


# --------------------------------------------------------------------------
# a GcsServer in this process: handlers called directly
# --------------------------------------------------------------------------

class RecordingSender:
    """Stands in for the GCS's Sender: keeps (endpoint, message) of each send."""

    def __init__(self, name):
        self.sent = []

    def send(self, endpoint, message, blobs=()):
        self.sent.append((endpoint, message))
        return True

    def close(self):
        pass


class Recorded:
    """A GcsServer whose replies, events and one-way sends are recorded."""

    def __init__(self, storage, session_dir):
        self.gcs = GcsServer("127.0.0.1:0", session_dir, storage)
        self.replies, self.events = [], []
        self.sent = self.gcs.sender.sent          # from the constructor on (a reload)
        # replies go through the wire codec, as a peer would read them
        self.gcs.reply = lambda req, msg, blobs=(): self.replies.append(p.decode(p.encode(msg)))
        publish = self.gcs.publish
        self.gcs.publish = lambda topic, event: (self.events.append((topic, event)),
                                                 publish(topic, event))

    def __call__(self, msg):
        """Handle ``msg`` as if it came from a peer; the reply, if any."""
        before = len(self.replies)
        getattr(self.gcs, "handle_" + _snake(type(msg).__name__))(None, msg)
        return self.replies[-1] if len(self.replies) > before else None

    def close(self):
        self.gcs.close()


def _snake(name: str) -> str:
    from zray.broker.service import _snake as snake
    return snake(name)


@pytest.fixture
def make_gcs(tmp_path, monkeypatch):
    monkeypatch.setattr("zray.gcs.server.Sender", RecordingSender)
    made = []

    def make(storage):
        gcs = Recorded(storage, str(tmp_path))
        made.append(gcs)
        return gcs
    yield make
    for gcs in made:
        gcs.close()


def _live_actor(gcs: Recorded, **kw) -> bytes:
    actor_id = os.urandom(16)
    assert gcs(_register_actor(actor_id, **kw)).created is True
    gcs(_started(actor_id))
    assert gcs.gcs.actors.get(actor_id).state == p.ACTOR_ALIVE
    return actor_id


def _state(gcs: Recorded, actor_id: bytes) -> tuple[str, str]:
    actor = gcs.gcs.actors.get(actor_id)
    return actor.state, actor.death_message


def test_out_of_scope_ends_a_non_detached_actor_without_restart(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A))
    actor_id = _live_actor(gcs, max_restarts=-1)
    detached = _live_actor(gcs, max_restarts=-1, detached=True, name="keeper")
    gcs(p.ReportActorOutOfScope(actor_id))
    gcs(p.ReportActorOutOfScope(detached))
    assert _state(gcs, actor_id) == (p.ACTOR_DEAD, OUT_OF_SCOPE)
    assert _state(gcs, detached)[0] == p.ACTOR_ALIVE
    assert (gcs.gcs.nodes.get(A).address, p.KillActorWorker(actor_id)) in gcs.sent
    gcs(p.ReportActorDied(actor_id, "worker exited", False))    # its process exits later
    assert _state(gcs, actor_id) == (p.ACTOR_DEAD, OUT_OF_SCOPE)


def test_owner_death_ends_the_actors_it_owned_and_is_published(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A))
    other_owner = b"o" * 16
    owned = _live_actor(gcs, max_restarts=3, name="mine")
    detached = _live_actor(gcs, detached=True)
    not_owned = _live_actor(gcs, owner_worker=other_owner)
    gcs(p.ReportWorkerDied(OWNER_WORKER, A, "worker exited with code 1"))
    assert _state(gcs, owned) == (p.ACTOR_DEAD, OWNER_DIED)
    assert _state(gcs, detached)[0] == p.ACTOR_ALIVE
    assert _state(gcs, not_owned)[0] == p.ACTOR_ALIVE
    assert gcs(p.GetNamedActor("mine", "ns")).actor_id == b""
    assert (p.TOPIC_WORKER, p.WorkerDiedEvent(OWNER_WORKER, A,
                                              "worker exited with code 1")) in gcs.events


def test_node_death_is_the_death_of_every_owner_on_it(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A))
    gcs(_register_node(B))
    owned_from_a = _live_actor(gcs, owner_node=A)
    restartable_on_b = os.urandom(16)           # owned from node C, lives on B
    gcs(_register_actor(restartable_on_b, owner_node=C, owner_worker=b"o" * 16,
                        max_restarts=1))
    gcs(_started(restartable_on_b, node_id=B))
    gcs(p.UnregisterNode(A))
    assert _state(gcs, owned_from_a) == (p.ACTOR_DEAD, OWNER_DIED)
    assert _state(gcs, restartable_on_b)[0] == p.ACTOR_ALIVE
    worker_events = [e for t, e in gcs.events if t == p.TOPIC_WORKER]
    assert worker_events and worker_events[-1].worker_id == b"" \
        and worker_events[-1].node_id == A
    gcs(p.UnregisterNode(B))                   # its actor restarts (no node to go to)
    assert _state(gcs, restartable_on_b)[0] == p.ACTOR_RESTARTING


def test_kill_without_restart_and_actor_restart_after_a_crash(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A))
    actor_id = _live_actor(gcs, max_restarts=1)
    gcs(p.ReportActorDied(actor_id, "worker crashed", False))
    assert _state(gcs, actor_id)[0] == p.ACTOR_RESTARTING
    submitted = [m for _, m in gcs.sent if isinstance(m, p.SubmitTask)]
    assert len(submitted) == 2 and p.task_spec(submitted[-1].spec).attempt == 1
    gcs(_started(actor_id))
    assert gcs(p.KillActor(actor_id, True)).ok is True
    assert _state(gcs, actor_id) == (p.ACTOR_DEAD, "killed by zray.kill()")


def test_heartbeat_replies_say_whether_the_gcs_knows_the_node(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    assert gcs(_beat(A)) == p.HeartbeatReply(p.HEARTBEAT_UNKNOWN)
    gcs(_register_node(A))
    assert gcs(_beat(A)) == p.HeartbeatReply(p.HEARTBEAT_OK)
    gcs(p.UnregisterNode(A))
    assert gcs(_beat(A)) == p.HeartbeatReply(p.HEARTBEAT_DEAD)


def test_placement_groups_reserve_bundles_and_go_pending_when_a_node_dies(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A, cpus=2.0, address="tcp://127.0.0.1:11"))
    gcs(_register_node(B, cpus=2.0, address="tcp://127.0.0.1:12"))
    pg_id = os.urandom(16)
    gcs(p.CreatePlacementGroup(pg_id, [{"CPU": 1.0}, {"CPU": 1.0}], "STRICT_SPREAD", "g",
                               b"\0\0\0\1", False))
    row = gcs(p.GetPlacementGroups(pg_id, "")).groups[0]
    assert row.state == p.PG_CREATED
    assert sorted(row.nodes) == sorted([A, B])
    assert sum(isinstance(m, p.ReserveBundle) for _, m in gcs.sent) == 2
    assert gcs.gcs.nodes.get(A).available["CPU"] == pytest.approx(1.0)
    gcs(p.UnregisterNode(A))
    assert gcs(p.GetPlacementGroups(b"", "g")).groups[0].state == p.PG_PENDING
    gcs(_register_node(C, cpus=2.0, address="tcp://127.0.0.1:13"))
    gcs(_beat(C, available={"CPU": 2.0}))
    row = gcs(p.GetPlacementGroups(pg_id, "")).groups[0]
    assert row.state == p.PG_CREATED and A not in row.nodes
    assert gcs(p.RemovePlacementGroup(pg_id)).ok is True
    assert gcs(p.GetPlacementGroups(pg_id, "")).groups[0].state == p.PG_REMOVED
    assert sum(isinstance(m, p.ReturnBundle) for _, m in gcs.sent) == 2


# --------------------------------------------------------------------------
# restart: a second GcsServer on the tables the first one left
# --------------------------------------------------------------------------

@pytest.fixture(params=["memory+copy", "sqlite"])
def tables(request, tmp_path):
    """(the storage a first GCS uses, a function giving the storage its
    restarted successor opens): shared in memory, or the same sqlite file
    closed and opened again."""
    if request.param == "memory+copy":
        storage = DeepCopyStorage()
        yield storage, lambda: storage
        return
    url = f"sqlite:///{tmp_path}/gcs.db"
    opened = [open_storage(url)]

    def reopen():
        opened[-1].close()
        opened.append(open_storage(url))
        return opened[-1]
    yield opened[0], reopen
    opened[-1].close()


def test_a_gcs_built_on_old_tables_reloads_them(make_gcs, tables, monkeypatch):
    from zray.config import config
    clock = FakeClock()
    monkeypatch.setattr("zray.gcs.node_manager.time", clock)
    storage, reopen = tables
    first = make_gcs(storage)
    first(_register_node(A, address="tcp://127.0.0.1:21"))
    first(_register_node(B, address="tcp://127.0.0.1:22"))
    job_id = first(p.RegisterJob(os.getpid(), [], "ns", [], "/")).job_id
    first(p.KVPut("ns", b"k", b"v", True))
    first(p.ExportFunction(b"h" * 16, b"blob"))
    alive = _live_actor(first, name="named", detached=True)
    pending = os.urandom(16)
    first(_register_actor(pending, resources={"GPU": 1.0}, owner_node=B))   # waits: no GPU
    pg_id = os.urandom(16)
    first(p.CreatePlacementGroup(pg_id, [{"CPU": 1.0}], "PACK", "", job_id, False))
    for table in ("nodes", "jobs", "actors", "placement_groups", "session", "kv:ns",
                  "kv:__functions__"):            # what a persistent backend can keep
        rows = storage.items(table)
        assert rows, table
        msgpack.packb([[k, v] for k, v in rows], use_bin_type=True, strict_types=True)
    cluster_id = first.gcs.session.cluster_id
    pub_address = first.gcs.pub_address
    first.close()                                # its sockets go before the next binds
    clock.now += 2 * config.node_timeout_s       # down longer than a node may be silent

    second = make_gcs(reopen())
    assert second.gcs.pub_address == pub_address                  # same PUB port
    assert second.gcs.session.cluster_id == cluster_id
    assert second(p.KVGet("ns", b"k")).value == b"v"
    assert second(p.GetFunction(b"h" * 16)).value == b"blob"
    assert second(p.GetJob(job_id)).job.alive is True
    assert second(p.GetNamedActor("named", "ns")).actor_id == alive
    assert _state(second, alive)[0] == p.ACTOR_ALIVE
    assert second(p.GetPlacementGroups(pg_id, "")).groups[0].state == p.PG_CREATED
    assert {n.node_id for n in second(p.GetNodes()).nodes if n.alive} == {A, B}
    assert second(p.RegisterJob(os.getpid(), [], "ns", [], "/")).job_id != job_id
    # a node that reports again stays; one that does not is declared dead after the timeout
    clock.now += 0.6 * config.node_timeout_s
    second(_beat(B))
    second.gcs.check_node_health()
    assert second.gcs.nodes.get(A).alive               # a fresh deadline after the restart
    clock.now += 0.6 * config.node_timeout_s
    second.gcs.check_node_health()
    assert not second.gcs.nodes.get(A).alive and second.gcs.nodes.get(B).alive
    # the actor that waited for a GPU is scheduled again once a GPU node joins
    second(p.RegisterNode(C, "tcp://127.0.0.1:23", "tcp://127.0.0.1:24", "127.0.0.1", "h",
                          os.getpid(), {"CPU": 1.0, "GPU": 1.0}, 1 << 20, "/tmp/s"))
    assert any(endpoint == "tcp://127.0.0.1:23" and isinstance(m, p.SubmitTask)
               for endpoint, m in second.sent)


def test_a_restarted_gcs_schedules_actors_that_were_waiting_for_a_worker(make_gcs, tables):
    storage, reopen = tables
    first = make_gcs(storage)
    first(_register_node(A, address="tcp://127.0.0.1:31"))
    restarting = _live_actor(first, max_restarts=1)
    first(p.ReportActorDied(restarting, "crashed", False))
    first.close()
    second = make_gcs(reopen())
    assert _state(second, restarting)[0] == p.ACTOR_RESTARTING
    assert [p.task_spec(m.spec).actor_id for e, m in second.sent
            if e == "tcp://127.0.0.1:31" and isinstance(m, p.SubmitTask)] == [restarting]


def test_a_second_start_report_changes_nothing(make_gcs):
    """After a GCS restart a worker may report its start again, or a creation
    sent again may start a second worker: the first worker stays the actor."""
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A))
    actor_id = os.urandom(16)
    gcs(_register_actor(actor_id))
    first = _started(actor_id)
    gcs(first)
    gcs(first)
    gcs(_started(actor_id))
    actor = gcs.gcs.actors.get(actor_id)
    assert actor.incarnation == 1 and actor.worker_id == first.worker_id


def test_an_actor_being_created_on_a_node_that_dies_is_created_elsewhere(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A, cpus=4.0, address="tcp://127.0.0.1:41"))   # most free CPU
    actor_id = os.urandom(16)
    gcs(_register_actor(actor_id, owner_node=C))
    gcs(_register_node(B, cpus=2.0, address="tcp://127.0.0.1:42"))
    gcs(p.UnregisterNode(A))                       # before the constructor finished
    sent_to = [e for e, m in gcs.sent if isinstance(m, p.SubmitTask)]
    assert sent_to == ["tcp://127.0.0.1:41", "tcp://127.0.0.1:42"]
    assert _state(gcs, actor_id)[0] == p.ACTOR_PENDING


def test_a_registration_sent_again_after_a_gcs_restart_creates_nothing_new(make_gcs):
    gcs = make_gcs(DeepCopyStorage())
    gcs(_register_node(A))
    actor_id = os.urandom(16)
    first = gcs(_register_actor(actor_id, name="once"))
    creations = [m for _, m in gcs.sent if isinstance(m, p.SubmitTask)]
    again = gcs(_register_actor(actor_id, name="once"))       # not "name already taken"
    assert again == first
    assert [m for _, m in gcs.sent if isinstance(m, p.SubmitTask)] == creations

    pg_id = os.urandom(16)
    create = p.CreatePlacementGroup(pg_id, [{"CPU": 1.0}], "PACK", "group", b"\0" * 4, False)
    assert gcs(create).ok is True
    assert gcs(create).ok is True                           # not "already exists"
    assert len([g for g in gcs.gcs.pgs.all() if g.pg_id == pg_id]) == 1


def test_removed_groups_leave_the_table_past_a_bound_and_live_ones_survive_a_reload(
        monkeypatch):
    from zray.gcs import placement_group_manager as pgm
    monkeypatch.setattr(pgm, "REMOVED_KEPT", 3)
    storage = DeepCopyStorage()
    groups = pgm.PlacementGroupManager(storage)
    ids = [os.urandom(16) for _ in range(6)]
    for pg_id in ids:
        groups.create(p.CreatePlacementGroup(pg_id, [{"CPU": 1.0}], "PACK", "", b"", False))
    for pg_id in ids[:5]:
        groups.removed(pg_id)
    assert [pg.pg_id for pg in groups.pending()] == [ids[5]]
    kept = {pg_id for pg_id, _ in storage.items(pgm.TABLE)}
    assert kept == set(ids[2:]), "only the last 3 removed groups and the live one stay"
    reloaded = pgm.PlacementGroupManager(storage)
    assert [pg.pg_id for pg in reloaded.pending()] == [ids[5]]
    assert reloaded.get(ids[4]).state == p.PG_REMOVED


class _Frames:
    """Stands in for the publisher socket when the GCS reads subscriptions."""

    def __init__(self, frames):
        self.frames = list(frames)

    def recv(self, flags=0):
        import zmq
        if not self.frames:
            raise zmq.Again()
        return self.frames.pop(0)


def _task_end(task_id: bytes) -> p.AddTaskEvents:
    return task_batch(b"w" * 16, A, 7, [(task_id, 0, p.TS_FINISHED, 2.0,
                                         {"name": "f"}, 1.0)], 0)


def test_waiting_task_events_are_applied_in_slices_only_while_cores_are_idle(make_gcs):
    """Nobody reading, the GCS applies waiting batches when the machine had
    an idle core in the last second: one slice per pass of its loop (requests
    are served between), until none wait; never while the cores are busy,
    and it stops when they get busy."""
    gcs = make_gcs(DeepCopyStorage()).gcs
    idle = [0.5]
    gcs._idle_cores = lambda: idle[0]
    gcs.APPLY_SLICE_EVENTS = 2
    for n in range(3):
        gcs.handle_add_task_events(None, task_batch(b"w" * 16, A, 7, [
            (bytes([n, i]) * 8, 0, p.TS_FINISHED, 2.0, {"name": "f"}, 1.0) for i in range(2)]))
    gcs.publish_task_events()
    gcs.run_once(0)
    assert gcs.task_events.waiting == 6 and not gcs.task_events.rows     # busy: they wait
    idle[0] = 1.5
    gcs.publish_task_events()
    left = []
    for _ in range(4):
        gcs.run_once(0)
        left.append(gcs.task_events.waiting)
    assert left == [4, 2, 0, 0] and len(gcs.task_events.rows) == 6
    # the cores get busy while it applies (a burst began): it stops at once
    gcs.IDLE_RECHECK_S = 0.0
    for n in range(3, 6):
        gcs.handle_add_task_events(None, task_batch(b"w" * 16, A, 7, [
            (bytes([n, i]) * 8, 0, p.TS_FINISHED, 2.0, {"name": "f"}, 1.0) for i in range(2)]))
    gcs.publish_task_events()
    gcs.run_once(0)
    idle[0] = 0.5
    for _ in range(3):
        gcs.run_once(0)
    assert gcs.task_events.waiting == 4 and len(gcs.task_events.rows) == 8


def test_task_rows_are_built_and_published_only_while_someone_follows_them(make_gcs):
    rec = make_gcs(DeepCopyStorage())
    gcs = rec.gcs
    gcs.handle_add_task_events(None, _task_end(b"1" * 16))
    gcs.publish_task_events()               # nobody follows: nothing built or sent
    assert not gcs.task_events.rows and gcs.task_events.waiting == 1
    gcs.task_events.query(0, {})            # a reader builds the rows
    gcs.publish_task_events()
    gcs.publish_task_events()               # (the row read two intervals ago is let go)
    gcs.handle_add_task_events(None, _task_end(b"2" * 16))
    assert [r["task_id"] for r in gcs.task_events.query(0, {})] == \
        [(b"1" * 16).hex(), (b"2" * 16).hex()]     # a dashboard reads, then subscribes
    gcs.publish_task_events()
    assert not [e for t, e in rec.events if t == p.TOPIC_TASK_EVENTS]
    # a follower arrives (junk on the stream is logged and skipped)
    gcs._on_subscriptions(_Frames([b"", b"hello", b"\x01" + p.TOPIC_TASK_EVENTS]))
    assert gcs.followed(p.TOPIC_TASK_EVENTS) and not gcs.followed(p.TOPIC_NODE)
    gcs.handle_add_task_events(None, _task_end(b"3" * 16))
    gcs.publish_task_events()
    [(topic, event)] = [(t, e) for t, e in rec.events if t == p.TOPIC_TASK_EVENTS]
    # the rows of the interval before the subscription came too (a follower
    # that read the table just before its subscription arrived misses none)
    assert [r["task_id"] for r in event.rows] == [(b"2" * 16).hex(), (b"3" * 16).hex()]
    gcs._on_subscriptions(_Frames([b"\x00" + p.TOPIC_TASK_EVENTS]))
    assert not gcs.followed(p.TOPIC_TASK_EVENTS)
    gcs._on_subscriptions(_Frames([b"\x01"]))   # everything (the empty prefix)
    assert gcs.followed(p.TOPIC_TASK_EVENTS) and gcs.followed(p.TOPIC_NODE)
