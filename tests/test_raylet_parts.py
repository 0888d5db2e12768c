"""The raylet's parts, each on its own (issue 7): the store service, the
client registry, the bundle manager, the local task manager, the GCS link
and the object transfer's patience with a loaded source. No cluster."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from test_data_port import _Raylet, _run_until        # two transfers in one process
from zray.broker import protocol as p
from zray.broker import security
from zray.raylet import object_transfer
from zray.raylet.bundle_manager import BundleManager
from zray.raylet.client_registry import ClientRegistry
from zray.raylet.gcs_link import GcsLink
from zray.raylet.resources import ResourceSet
from zray.raylet.server import Raylet
from zray.raylet.store_service import StoreService
from zray.raylet.task_manager import LocalTaskManager
from zray.store import Arena, ObjectStore

MB = 1024 * 1024
NODE = b"N" * 16


# ---------------------------------------------------------------- store service

@pytest.fixture
def store(tmp_path):
    arena = Arena.create(f"/dev/shm/zray_test-raylet-parts-{os.getpid()}", 8 * MB)
    service = StoreService(arena, ObjectStore(arena, str(tmp_path / "spill")))
    yield service
    service.close()


def test_a_seal_wakes_what_waited_for_it_once(store):
    store.create(b"o" * 20, 1000, owner=b"w" * 16, writer=b"writer")
    woke = []
    store.when_sealed(b"o" * 20, woke.append)
    assert woke == []
    store.seal(b"o" * 20, writer=b"writer")
    assert woke == [True]
    store.seal(b"o" * 20, writer=b"writer")          # a duplicate seal wakes no one again
    assert woke == [True]
    store.when_sealed(b"o" * 20, woke.append)          # sealed already: at once
    assert woke == [True, True]


def test_a_writer_that_dies_mid_write_wakes_its_waiters_with_not_here(store):
    store.create(b"o" * 20, 1000, owner=b"w" * 16, writer=b"writer")
    woke = []
    store.when_sealed(b"o" * 20, woke.append)
    store.client_gone(b"writer")
    assert woke == [False]
    assert not store.contains(b"o" * 20) and not store.is_being_created(b"o" * 20)


def test_objects_of_an_owner_that_is_gone_are_freed(store):
    for i in range(3):
        store.create(bytes([i]) * 20, 1000, owner=b"w" * 16, writer=b"writer")
        store.seal(bytes([i]) * 20, writer=b"writer")
    store.create(b"x" * 20, 1000, owner=b"v" * 16, writer=b"writer")
    store.seal(b"x" * 20, writer=b"writer")
    store.free_owned_by(b"w" * 16)
    assert [store.contains(bytes([i]) * 20) for i in range(3)] == [False] * 3
    assert store.contains(b"x" * 20)


def test_pin_all_answers_one_location_per_object(store):
    store.create(b"o" * 20, 1000, owner=b"w" * 16, writer=b"writer")
    store.seal(b"o" * 20, writer=b"writer")
    locations, spilled = store.pin_all([b"o" * 20, b"?" * 20], b"reader")
    assert locations[0][1] == 1000 and locations[1] is None and spilled == [None, None]
    assert store.info(b"o" * 20)["pins"] == {b"reader": 1}


# ---------------------------------------------------------------- client registry

def test_the_registry_finds_clients_by_identity_and_worker_id_until_removed(tmp_path):
    registry = ClientRegistry(str(tmp_path))
    msg = p.RegisterClient("driver", b"w" * 16, os.getpid(), b"j" * 4, "ipc://x")
    client = registry.add(b"identity", msg)
    assert registry.get(b"identity") is client and registry.of_worker(b"w" * 16) is client
    assert registry.dead_drivers() == []
    registry.remove(client)
    assert registry.get(b"identity") is None and registry.of_worker(b"w" * 16) is None
    assert registry.all() == []


def test_the_registry_names_drivers_whose_process_is_gone(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    registry = ClientRegistry(str(tmp_path))
    registry.add(b"a", p.RegisterClient("driver", b"a" * 16, gone.pid, b"j" * 4, ""))
    registry.add(b"b", p.RegisterClient("worker", b"b" * 16, gone.pid, b"j" * 4, ""))
    assert [c.worker_id for c in registry.dead_drivers()] == [b"a" * 16]


# ---------------------------------------------------------------- bundle manager

def test_a_reserved_bundle_becomes_the_groups_resources_until_given_back():
    resources = ResourceSet({"CPU": 4})
    bundles = BundleManager(resources)
    assert bundles.reserve(b"g" * 16, 0, {"CPU": 1})
    assert not bundles.reserve(b"g" * 16, 0, {"CPU": 1})       # a repeat changes nothing
    assert resources.available["CPU"] == 3
    assert resources.available[f"CPU_group_0_{(b'g' * 16).hex()}"] == 1
    assert bundles.give_back(b"g" * 16, 0)
    assert not bundles.give_back(b"g" * 16, 0)
    assert resources.available["CPU"] == 4
    assert not any("_group_" in name for name in resources.total)


# ---------------------------------------------------------------- local task manager

class _Pool:
    """A worker pool with no worker yet (every start is pending)."""

    def __init__(self):
        self.workers, self.started = {}, 0

    def pop_idle(self, job_id):
        return None

    def starting(self):
        return self.started

    def live_task_workers(self):
        return self.started

    def start_worker(self):
        self.started += 1


def _creation(actor_id: bytes) -> p.TaskSpec:
    return p.TaskSpec(os.urandom(16), b"j" * 4, p.TASK_ACTOR_CREATION, b"h" * 20, "Actor",
                      [], [], 0, {"CPU": 1}, 0, False, ["tcp://127.0.0.1:9", b"o" * 16, 1, NODE],
                      actor_id=actor_id)


def _manager(store=None):
    sent = []
    manager = LocalTaskManager(
        NODE, ResourceSet({"CPU": 2}), 2, _Pool(),
        SimpleNamespace(feasible=lambda r: None, with_room=lambda r: None),
        store, None, lambda to, message: sent.append(message), lambda address: "owner",
        lambda identity, message: True, lambda worker: None)
    return manager, sent


def test_an_actor_creation_sent_again_is_ignored_while_the_first_is_queued():
    manager, _ = _manager()
    raylet = SimpleNamespace(tasks=manager)         # what handle_submit_task uses
    spec = _creation(b"a" * 16)
    Raylet.handle_submit_task(raylet, None, p.SubmitTask(list(spec)))
    assert manager.has_actor(b"a" * 16) and manager.has_work()
    started = manager.pool.started
    again = spec._replace(task_id=os.urandom(16))  # the GCS resends after a restart
    Raylet.handle_submit_task(raylet, None, p.SubmitTask(list(again)))
    assert sum(len(q) for q in manager.queues.values()) == 1
    assert manager.pool.started == started, "a second worker started for the same actor"
    assert not manager.has_actor(b"b" * 16)


def test_an_actor_hosted_here_is_not_created_again():
    manager, _ = _manager()
    spec = _creation(b"a" * 16)
    manager.pool.workers[b"w"] = SimpleNamespace(task=spec)
    Raylet.handle_submit_task(SimpleNamespace(tasks=manager), None,
                              p.SubmitTask(list(spec._replace(task_id=os.urandom(16)))))
    assert not manager.has_work()


def test_a_queued_task_cancelled_is_dropped_and_its_owner_told():
    manager, sent = _manager()
    spec = _creation(b"a" * 16)
    manager.submit(spec)
    assert manager.cancel_queued(spec.task_id)
    assert not manager.has_work() and not manager.cancel_queued(spec.task_id)
    assert [type(m).__name__ for m in sent] == ["TaskFailed"]
    assert sent[0].error_type == "TaskCancelledError"


def test_tasks_of_an_owner_that_is_gone_are_dropped():
    manager, _ = _manager()
    manager.submit(_creation(b"a" * 16))
    manager.drop_tasks_of(b"x" * 16)                # someone else
    assert manager.has_work()
    manager.drop_tasks_of(b"o" * 16)                # the owner
    assert not manager.has_work()


# ---------------------------------------------------------------- GCS link

@pytest.fixture
def cluster_key(monkeypatch):
    monkeypatch.setenv(security.ENV_KEY, security.generate().secret.decode())
    monkeypatch.delenv(security.ENV_KEY_FILE, raising=False)


def _link(calls: dict) -> GcsLink:
    def note(name):
        return lambda *args: calls.setdefault(name, []).append(args)
    return GcsLink("127.0.0.1:9", lambda sock, handler: None, lambda: 0,
                   lambda: calls.setdefault("registration", []).append(1) or p.Ping(),
                   note("event"), note("dead"), note("registered"), note("cluster"))


def test_a_gcs_request_without_an_answer_calls_back_with_none(cluster_key):
    calls: dict = {}
    link = _link(calls)
    try:
        answers = []
        link.request(p.Ping(), answers.append, timeout=0.0)
        assert answers == []                     # never inside request(): on a later check
        link.check()
        assert answers == [None]
    finally:
        link.close()


def test_heartbeat_answers_drive_rejoin_and_one_registration_at_a_time(cluster_key):
    calls: dict = {}
    link = _link(calls)
    try:
        link._on_heartbeat_reply(p.HeartbeatReply(p.HEARTBEAT_UNKNOWN))
        link._on_heartbeat_reply(p.HeartbeatReply(p.HEARTBEAT_UNKNOWN))    # queued beats
        assert len(calls["registration"]) == 1
        link._on_heartbeat_reply(p.HeartbeatReply(p.HEARTBEAT_DEAD))
        assert len(calls["dead"]) == 1
        link._on_heartbeat_reply(p.HeartbeatReply(p.HEARTBEAT_OK))
        assert len(calls["dead"]) == 1 and len(calls["registration"]) == 1
    finally:
        link.close()


# ---------------------------------------------------------------- object transfer

@pytest.fixture
def two_raylets(tmp_path, cluster_key):
    loop, peers, made = {}, {}, []
    try:
        for name in ("source", "puller"):
            made.append(_Raylet(name, loop, peers, tmp_path))
        peers[b"S" * 16] = made[0].transfer.endpoint
        yield made[0], made[1], loop
    finally:
        for raylet in made:
            raylet.close()


def test_a_pull_of_an_object_its_source_has_not_sealed_yet_waits_for_the_seal(two_raylets):
    """The flake "an argument ... could not be fetched from its node": the
    writer's one-way seal reached the source's raylet after the puller asked."""
    source, puller, loop = two_raylets
    size = 4 * MB
    object_id = os.urandom(20)
    offset = source.service.create(object_id, size, owner=b"w" * 16, writer=b"writer")
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    deadline = time.monotonic() + 1.0
    _run_until(loop, lambda: done or time.monotonic() > deadline)
    assert done == [], "the pull gave up on an object being written at its source"
    source.arena.writable_view(offset, size)[:] = b"\x07" * size
    source.service.seal(object_id, writer=b"writer")
    _run_until(loop, lambda: done)
    assert done == [True]
    at, got = puller.store.pin(object_id, "test")
    assert got == size and bytes(puller.arena.read_view(at, size)).count(7) == size


def test_a_pull_whose_source_writer_dies_fails_instead_of_hanging(two_raylets):
    source, puller, loop = two_raylets
    object_id = os.urandom(20)
    source.service.create(object_id, MB, owner=b"w" * 16, writer=b"writer")
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    _run_until(loop, lambda: source.transfer.sessions)
    source.service.client_gone(b"writer")
    _run_until(loop, lambda: done)
    assert done == [False]


def test_a_pull_on_a_loaded_source_gets_more_links_for_a_while(two_raylets):
    _, puller, _ = two_raylets
    pull = object_transfer.Pull(b"o" * 20, b"S" * 16)
    pull.links = object_transfer.LINK_ATTEMPTS
    assert puller.transfer._may_relink(pull, refused=False)
    assert not puller.transfer._may_relink(pull, refused=True)     # another key: no use
    pull.started -= object_transfer.LINK_RETRY_S
    assert not puller.transfer._may_relink(pull, refused=False)
    pull.started = time.monotonic()
    pull.links = object_transfer.LINK_ATTEMPTS_MAX
    assert not puller.transfer._may_relink(pull, refused=False)
