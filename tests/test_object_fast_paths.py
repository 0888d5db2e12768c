"""The object paths that skip the raylet: a repeated get of a held ref is a
local lookup (its view and pin are kept while the ref lives), puts fill
blocks reserved ahead (one request for several objects), a multi-get pins
its local objects in one request; and what keeps them honest: the store
still gets its room back when it needs it, dropped refs free their memory,
and a reader never sees an object written into a reserved block as lost."""
from __future__ import annotations

import gc
import os
import uuid

import numpy as np
import pytest

import zray
from zray.broker import protocol
from zray.config import config
from zray.raylet.store_service import StoreService
from zray.store import Arena, ObjectStore
from zray.worker import global_state

from conftest import wait_for

GET_TIMEOUT = 30
MiB = 1024 * 1024


@zray.remote
def echo(value):
    return value


@zray.remote
def produce(n_bytes, fill):
    return np.full(n_bytes, fill, dtype=np.uint8)


def core():
    return global_state.worker


def store_used() -> int:
    return core().raylet.call(protocol.GetStoreStats()).stats["used"]


def settled_usage() -> int:
    """Store usage once frees, idle reserved blocks and releases have landed."""
    last = [-1]

    def stable():
        gc.collect()
        zray.put(0)                     # any call lets the driver send its releases
        if core().store_writer.pooled_count():
            last[0] = -1                # blocks still held: no reading counts yet
            return False
        # two equal readings, both taken after the driver gave its blocks back
        now = store_used()
        same, last[0] = now == last[0], now
        return same
    wait_for(stable, timeout=15, interval=0.3)
    return last[0]


# ------------------------------------------------------------ kept views

def test_repeated_get_of_a_held_ref_asks_the_raylet_nothing(cluster):
    ref = zray.put(np.arange(MiB, dtype=np.int64))          # 8 MB: in the store
    first = zray.get(ref, timeout=GET_TIMEOUT)
    del first                                               # the user's view is gone
    gc.collect()
    asked = core().getter.pin_requests
    for _ in range(20):
        arr = zray.get(ref, timeout=GET_TIMEOUT)
        assert arr[0] == 0 and arr[-1] == MiB - 1 and not arr.flags.writeable
        del arr
    assert core().getter.pin_requests == asked


def test_dropping_a_ref_releases_its_kept_view(cluster):
    baseline = settled_usage()
    ref = zray.put(np.ones(MiB, dtype=np.int64))
    zray.get(ref, timeout=GET_TIMEOUT)
    assert store_used() >= baseline + 8 * MiB
    del ref
    wait_for(lambda: (gc.collect(), zray.put(0), store_used() <= baseline)[-1], timeout=15)


def test_multi_get_of_local_objects_pins_them_in_one_request(cluster):
    refs = [echo.remote(np.full(MiB // 8, i, dtype=np.int64)) for i in range(10)]
    zray.wait(refs, num_returns=len(refs), timeout=GET_TIMEOUT, fetch_local=False)
    asked = core().getter.pin_requests
    values = zray.get(refs, timeout=GET_TIMEOUT)
    assert [int(v[0]) for v in values] == list(range(10))
    assert core().getter.pin_requests == asked + 1


class Tagged(np.ndarray):
    """An ndarray subclass defined here: it travels by value (cloudpickle)."""


@pytest.mark.parametrize("arr", [
    np.arange(MiB // 4, dtype=np.float32).reshape(512, -1).T,        # not contiguous
    np.zeros(MiB // 8, dtype=[("a", "i4"), ("b", "f4")]),            # structured
    np.array([{"k": 1}, None] * 60_000, dtype=object),               # objects inside
], ids=["transposed", "structured", "object_dtype"])
def test_arrays_of_every_layout_come_back_equal_through_a_task(cluster, arr):
    out = zray.get(echo.remote(arr), timeout=GET_TIMEOUT)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert (out == arr).all()


def test_an_ndarray_subclass_keeps_its_class(cluster):
    arr = np.arange(MiB, dtype=np.int64).view(Tagged)
    out = zray.get(echo.remote(arr), timeout=GET_TIMEOUT)
    assert type(out).__name__ == "Tagged" and out[-1] == MiB - 1


# ------------------------------------------------------------ reserved blocks

def test_puts_of_one_size_make_one_request_for_several_objects(cluster):
    writer = core().store_writer
    asked = writer.create_requests
    refs = [zray.put(np.full(MiB // 8, i, dtype=np.int64)) for i in range(21)]
    assert writer.create_requests - asked <= 21 // 3
    assert [int(zray.get(r, timeout=GET_TIMEOUT)[-1]) for r in refs] == list(range(21))


def test_task_results_written_into_reserved_blocks_read_back_everywhere(cluster):
    arrs = [np.full(MiB // 8, i, dtype=np.int64) for i in range(30)]
    outs = [echo.remote(a) for a in arrs]                   # 1 MiB results, reserved blocks
    again = [echo.remote(o) for o in outs]                  # passed on as arguments
    assert [int(v[0]) for v in zray.get(outs, timeout=GET_TIMEOUT)] == list(range(30))
    assert [int(v[-1]) for v in zray.get(again, timeout=GET_TIMEOUT)] == list(range(30))


def test_unused_reserved_blocks_go_back_to_the_store(cluster):
    baseline = settled_usage()
    ref = zray.put(np.ones(MiB // 8, dtype=np.int64))
    assert core().store_writer.pooled_count() > 0
    del ref
    assert settled_usage() <= baseline                     # blocks given back when idle


# ------------------------------------------- own cluster (kept last: start_cluster
# ends the module's shared cluster)

def test_kept_views_give_their_room_to_a_task_that_needs_it(start_cluster, monkeypatch):
    monkeypatch.setattr(config, "object_store_full_timeout_s", 5.0)
    start_cluster(object_store_memory=64 * MiB)
    refs = [zray.put(np.full(16 * MiB, i, dtype=np.uint8)) for i in range(3)]
    for i, ref in enumerate(refs):
        assert zray.get(ref, timeout=GET_TIMEOUT)[0] == i
    assert core().getter.kept_count() == 3                 # 48 of 64 MiB kept pinned
    # A worker needs 32 MiB: the raylet asks the driver to let go of its kept views.
    arr = zray.get(produce.remote(32 * MiB, 7), timeout=GET_TIMEOUT)
    assert len(arr) == 32 * MiB and arr[0] == 7 and arr[-1] == 7
    del arr
    # The refs still read right (restored from disk if they were spilled).
    assert [int(zray.get(r, timeout=GET_TIMEOUT)[-1]) for r in refs] == [0, 1, 2]


# ------------------------------------------------------------ the raylet's side

@pytest.fixture
def service(tmp_path):
    """A StoreService over a 4 MiB arena; records whom it asks to let go."""
    arena = Arena.create(f"/dev/shm/zray_test_fast_{os.getpid()}_{uuid.uuid4().hex[:10]}",
                         4 * MiB)
    asked = []
    svc = StoreService(arena, ObjectStore(arena, str(tmp_path / "spill")), asked.append)
    svc.asked = asked
    yield svc
    svc.close()
    assert not os.path.exists(arena.path)


def oid(i: int) -> bytes:
    return i.to_bytes(4, "big") + b"\x01" * 16


def test_a_pin_of_an_unknown_object_waits_for_the_blocks_reserved_before_it(service):
    p1, p2 = oid(101), oid(102)
    offsets = service.reserve([p1, p2], 1024, "writer")
    assert len(offsets) == 2
    x, lost = oid(1), oid(2)
    assert service.is_being_created(x)
    seen = []
    service.when_sealed(x, lambda ok: seen.append(("x", ok)))
    service.when_sealed(lost, lambda ok: seen.append(("lost", ok)))
    assert seen == []                                        # either block may become them
    service.arena.write(offsets[0], [b"a" * 1000])
    service.seal_reserved(p1, x, 1000, b"o" * 16, "writer")
    assert seen == [("x", True)]
    assert service.pin(x, "reader") == (offsets[0], 1000)
    service.release_reserved([p2], "writer")
    assert seen == [("x", True), ("lost", False)]
    assert not service.is_being_created(lost)                # answered: not here
    assert service.reserved_count() == 0


def test_blocks_reserved_after_a_question_do_not_make_it_wait(service):
    service.reserve([oid(101)], 1024, "writer")
    seen = []
    service.when_sealed(oid(2), lambda ok: seen.append(ok))
    service.reserve([oid(102)], 1024, "other")              # reserved after the question
    service.release_reserved([oid(101)], "writer")
    assert seen == [False]
    assert not service.is_being_created(oid(2))             # oid(102) cannot be it
    service.when_sealed(oid(2), lambda ok: seen.append(ok))
    assert seen == [False, False]


def test_an_object_made_on_another_node_never_waits_for_blocks_reserved_here(service):
    """A pin of an object its owner says another node made pulls at once:
    a block a local writer holds cannot turn out to be it."""
    service.reserve([oid(101)], 1024, "writer")
    assert service.is_being_created(oid(3))                     # made here: it may be
    assert not service.is_being_created(oid(3), made_here=False)  # made there: it is not


def test_an_object_freed_before_its_block_is_named_is_dropped(service):
    (offset,) = service.reserve([oid(101)], 2048, "writer")
    service.free(oid(1))                                     # the owner was quick
    service.seal_reserved(oid(101), oid(1), 2000, b"o" * 16, "writer")
    assert not service.contains(oid(1))
    assert service.stats()["used"] == 0


def test_a_gone_writer_gives_its_reserved_blocks_back(service):
    service.reserve([oid(101), oid(102), oid(103)], 4096, "writer")
    assert service.stats()["used"] > 0
    service.client_gone("writer")
    assert service.reserved_count() == 0 and service.stats()["used"] == 0


def test_a_full_store_asks_pin_holders_and_block_holders_to_let_go(service):
    big = oid(1)
    offset = service.create(big, 3 * MiB, b"o" * 16, "writer")
    service.seal(big, "writer")
    service.pin(big, "reader")
    service.reserve([oid(101)], 512 * 1024, "pooler")
    with pytest.raises(Exception) as info:
        service.create(oid(2), 2 * MiB, b"o" * 16, "writer")
    assert "full" in str(info.value)
    assert offset == 0 and len(service.asked) == 1
    assert set(service.asked[0]) == {"reader", "pooler"}


def test_reserved_blocks_are_not_listed_as_objects(service):
    service.reserve([oid(101), oid(102)], 1024, "writer")
    (offset,) = service.reserve([oid(103)], 1024, "writer")
    service.seal_reserved(oid(103), oid(1), 1000, b"o" * 16, "writer")
    records, total = service.list_objects(10)
    assert [r["object_id"] for r in records] == [oid(1)] and total == 1
    assert service.stats()["num_reserved"] == 2


# ------------------------------------------- reserved blocks: nothing lost or leaked

def test_a_reservation_that_fails_half_way_gives_the_caller_the_blocks_it_got(service):
    """A later block that cannot be had (its id is taken) ends the list: the
    caller gets the blocks already reserved, none is left unknown to it."""
    service.create(oid(102), 1024, b"o" * 16, "writer")
    service.seal(oid(102), "writer")
    offsets = service.reserve([oid(101), oid(102), oid(103)], 1024, "pooler")
    assert len(offsets) == 1 and service.reserved_count() == 1
    service.release_reserved([oid(101)], "pooler")
    assert service.reserved_count() == 0
    assert [r["object_id"] for r in service.list_objects(10)[0]] == [oid(102)]


def test_a_reservation_that_raises_half_way_leaves_nothing_reserved(service, monkeypatch):
    real_create = service.store.create
    calls = []

    def create(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("broken allocator")
        return real_create(*args, **kwargs)

    monkeypatch.setattr(service.store, "create", create)
    with pytest.raises(RuntimeError):
        service.reserve([oid(101), oid(102), oid(103)], 1024, "pooler")
    assert service.reserved_count() == 0 and service.stats()["used"] == 0


def test_a_reservation_with_no_answer_gives_its_blocks_back():
    """The raylet may have reserved blocks for a ReserveObjects whose answer
    never came: the writer gives all of them back."""
    from zray.worker.store_writer import StoreWriter

    class Raylet:
        def __init__(self):
            self.sent = []

        def call(self, message):
            raise TimeoutError("the raylet did not answer")

        def send(self, message):
            self.sent.append(message)

    class Arena_:
        size = 64 * MiB

    class Ser:
        size = 1000

    raylet = Raylet()
    writer = StoreWriter(raylet, Arena_(), lambda: None)
    with pytest.raises(TimeoutError):
        writer.put(oid(1), Ser(), b"o" * 16)
    (release,) = raylet.sent
    assert isinstance(release, protocol.ReleaseReserved) and len(release.placeholder_ids) > 1
    assert writer.pooled_count() == 0


def test_early_frees_are_never_forgotten_while_a_block_may_become_them(service):
    """However many objects are freed before a block reserved earlier is
    named, the first of them is still dropped when that block is named so;
    and once no block reserved before them is left, none is remembered."""
    (first,) = service.reserve([oid(101)], 2048, "writer")
    freed = [i.to_bytes(8, "big") + b"\x02" * 12 for i in range(100_050)]
    for object_id in freed:
        service.free(object_id)
    assert service.freed_early_count() == len(freed)
    service.reserve([oid(102)], 2048, "writer")             # after the frees
    service.seal_reserved(oid(101), freed[0], 2000, b"o" * 16, "writer")
    assert not service.contains(freed[0])                   # dropped: its owner freed it
    assert service.freed_early_count() == 0                 # no block left that could be them
    assert service.reserved_count() == 1
