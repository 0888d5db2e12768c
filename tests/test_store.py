"""Tests for zray.store: arena, allocator, object table (eviction, spilling)."""

import os
import uuid

import numpy as np
import pytest

from zray.store import (Allocator, Arena, ObjectExistsError, ObjectStore,
                        ObjectStoreFullError, arena_path)

KB = 1024


def _shm_name(tag="arena"):
    return f"/dev/shm/zray_test_{tag}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_arena():
    """Makes small arenas; ALWAYS closes and unlinks them."""
    made = []

    def make(size=64 * KB):
        a = Arena.create(_shm_name(), size)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()
        a.unlink()
        assert not os.path.exists(a.path)


@pytest.fixture
def make_store(make_arena, tmp_path):
    stores = []

    def make(size=64 * KB):
        s = ObjectStore(make_arena(size), str(tmp_path / f"spill{len(stores)}"))
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


def oid(i):
    return i.to_bytes(4, "big") + b"\x00" * 24


def put(store, object_id, data, primary=True):
    data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else data
    off = store.create(object_id, data.nbytes, owner="me", primary=primary)
    store.arena.write(off, [data])
    store.seal(object_id)
    return off


def read(store, object_id, client="reader"):
    loc = store.pin(object_id, client)
    assert loc is not None
    data = bytes(store.arena.read_view(*loc))
    store.release(object_id, client)
    return data


# -- arena ------------------------------------------------------------------

def test_arena_path():
    assert arena_path("sess", "abcdef0123456789") == "/dev/shm/zray_sess_abcdef012345"


def test_arena_create_is_private_sparse_and_exclusive(make_arena):
    a = make_arena(1 << 20)
    st = os.stat(a.path)
    assert st.st_mode & 0o777 == 0o600
    assert st.st_size == a.size == 1 << 20
    assert st.st_blocks == 0  # no page touched at start-up
    with pytest.raises(FileExistsError):
        Arena.create(a.path, 4096)


def test_arena_write_chunks_and_bounds(make_arena):
    a = make_arena(4096)
    f_order = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    chunks = [b"abc", memoryview(b"defg"), np.arange(5, dtype=np.uint8), f_order,
              np.arange(10, dtype=np.uint8)[::2]]  # last one non-contiguous
    a.write(100, chunks)
    expect = b"abcdefg" + bytes(range(5)) + f_order.tobytes(order="A") + bytes(range(0, 10, 2))
    assert bytes(a.read_view(100, len(expect))) == expect
    with pytest.raises(ValueError):
        a.write(4090, [b"x" * 10])
    with pytest.raises(ValueError):
        a.read_view(4000, 100)


def test_arena_views_fresh_readonly_and_close_safe(make_arena):
    a = make_arena(4096)
    a.write(0, [b"hello"])
    v1, v2 = a.read_view(0, 5), a.read_view(0, 5)
    assert v1 is not v2 and v1.dtype == np.uint8
    with pytest.raises(ValueError):
        v1[0] = 1
    with pytest.raises(ValueError):
        v1.flags.writeable = True
    a.close()  # views alive: must not raise
    assert bytes(v1) == b"hello"


def test_arena_big_write_uses_split_copy(make_arena, monkeypatch):
    import threading
    from zray.store import arena as arena_mod
    monkeypatch.setattr(arena_mod, "PARALLEL_COPY_THRESHOLD", 64 * KB)
    a = make_arena(1 << 20)
    data = np.random.default_rng(1).integers(0, 256, 700 * KB, dtype=np.uint8)
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start",
                        lambda self: (started.append(self.name), real_start(self))[1])
    a.write(64, [b"head", data])
    assert started == ["zray-arena-copy"]
    assert bytes(a.read_view(64, 4)) == b"head"
    assert np.array_equal(a.read_view(68, data.nbytes), data)


# -- allocator --------------------------------------------------------------

def test_allocator_first_fit_alignment_and_coalescing():
    al = Allocator(1024, alignment=64)
    a, b, c = al.allocate(10), al.allocate(64), al.allocate(65)
    assert (a, b, c) == (0, 64, 128)
    assert al.used == 64 + 64 + 128
    assert al.allocate(0) == 256  # zero-size still gets a distinct block
    assert al.allocate(2000) is None
    al.free(b)
    assert al.allocate(100) == 320  # hole at 64 too small: first fit further on
    assert al.allocate(1) == 64     # ...but a small one reuses the low hole
    al.free(64)
    al.free(a)   # coalesces with the hole at 64
    al.free(c)   # coalesces [0, 256)
    assert al.allocate(256) == 0
    al.free(0)
    al.free(256)
    al.free(320)
    assert al.used == 0 and al.largest_free() == 1024
    with pytest.raises(KeyError):
        al.free(0)


def test_allocator_prefers_low_offsets():
    al = Allocator(1 << 20)
    offs = [al.allocate(1000) for _ in range(100)]
    for o in offs[::2]:
        al.free(o)
    assert al.allocate(1000) == offs[0]
    assert al.allocate(1000) == offs[2]
    for o in offs[1::2] + [offs[0], offs[2]]:
        al.free(o)
    assert al.used == 0 and al.largest_free() == 1 << 20
    for o in offs:  # everything offsets multiples of 64
        assert o % 64 == 0


def test_allocator_random_consistency():
    rng = np.random.default_rng(7)
    al = Allocator(1 << 16, alignment=16)
    live = {}
    for _ in range(3000):
        if live and rng.random() < 0.5:
            off = list(live)[rng.integers(len(live))]
            al.free(off)
            del live[off]
        else:
            size = int(rng.integers(0, 2000))
            off = al.allocate(size)
            if off is not None:
                assert off % 16 == 0 and off + size <= al.capacity
                for o, s in live.items():  # no overlap
                    assert off + max(size, 1) <= o or o + max(s, 1) <= off
                live[off] = size
    for off in list(live):
        al.free(off)
    assert al.used == 0 and al.largest_free() == 1 << 16


# -- object store -----------------------------------------------------------

def test_roundtrip_between_two_mappings(make_store):
    store = make_store(64 * KB)
    client_arena = Arena.attach(store.arena.path)
    try:
        assert client_arena.size == store.arena.size
        data = np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8)
        off = store.create(oid(1), data.nbytes, owner="w1")
        assert not store.contains(oid(1))
        assert store.pin(oid(1), "r") is None  # not sealed yet
        client_arena.write(off, [data[:1000], data[1000:]])  # client writes directly
        store.seal(oid(1))
        assert store.contains(oid(1))
        loc = store.pin(oid(1), "r")
        assert loc == (off, 5000)
        view = store.arena.read_view(*loc)
        assert np.array_equal(view, data)
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view[0] = 0
        # zero-copy: a later write through the client mapping shows in the view
        client_arena.write(off, [b"\xff\xfe"])
        assert view[0] == 0xFF and view[1] == 0xFE
        store.release(oid(1), "r")
        with pytest.raises(ObjectExistsError):
            store.create(oid(1), 10)
        info = store.info(oid(1))
        assert info["state"] == "SEALED" and info["owner"] == "w1" and info["pins"] == {}
    finally:
        client_arena.close()


def test_pyarrow_zero_copy_over_view(make_store):
    pa = pytest.importorskip("pyarrow")
    store = make_store()
    put(store, oid(1), b"0123456789")
    view = store.arena.read_view(*store.pin(oid(1), "r"))
    buf = pa.py_buffer(view)
    assert buf.to_pybytes() == b"0123456789"
    assert buf.address == view.ctypes.data  # same memory, no copy


def test_abort_and_unknown_ids(make_store):
    store = make_store()
    store.create(oid(1), 1000)
    with pytest.raises(ObjectExistsError):
        store.create(oid(1), 1000)
    store.abort(oid(1))
    assert store.info(oid(1)) is None and store.stats()["used"] == 0
    store.free(oid(99))
    store.release(oid(99), "x")
    store.release_client("nobody")
    assert store.pin(oid(99), "x") is None and not store.contains(oid(99))
    with pytest.raises(KeyError):
        store.seal(oid(99))


def test_free_while_pinned_defers_delete(make_store):
    store = make_store()
    put(store, oid(1), b"x" * 3000)
    store.pin(oid(1), "a")
    store.pin(oid(1), "a")
    store.pin(oid(1), "b")
    store.free(oid(1))
    assert not store.contains(oid(1))
    assert store.pin(oid(1), "c") is None  # freed: no new readers
    assert store.stats()["num_objects"] == 1
    store.release(oid(1), "a")
    store.release(oid(1), "b")
    assert store.stats()["num_objects"] == 1  # "a" still holds one pin
    store.release(oid(1), "a")
    assert store.stats()["num_objects"] == 0 and store.stats()["used"] == 0


def test_release_client(make_store):
    store = make_store()
    for i in range(3):
        put(store, oid(i), bytes([i]) * 1000)
        store.pin(oid(i), "dead")
        store.pin(oid(i), "dead")
    store.pin(oid(0), "alive")
    store.free(oid(0))
    store.free(oid(1))
    store.release_client("dead")
    assert store.info(oid(0))["pins"] == {"alive": 1}
    assert store.info(oid(1)) is None        # freed and now unpinned
    assert store.info(oid(2))["pins"] == {}  # not freed: stays
    store.release(oid(0), "alive")
    assert store.stats()["num_objects"] == 1


def test_eviction_of_secondary_before_spilling_primary(make_store):
    store = make_store(64 * KB)
    size = 12 * KB
    put(store, oid(1), b"\x01" * size, primary=True)    # oldest
    put(store, oid(2), b"\x02" * size, primary=False)
    put(store, oid(3), b"\x03" * size, primary=True)
    put(store, oid(4), b"\x04" * size, primary=False)
    put(store, oid(5), b"\x05" * size, primary=True)
    put(store, oid(6), b"\x06" * size, primary=True)    # evicts 2 (LRU secondary)
    assert store.info(oid(2)) is None and store.info(oid(4)) is not None
    assert store.stats()["num_evicted"] == 1 and store.stats()["num_spilled"] == 0
    put(store, oid(7), b"\x07" * size, primary=True)    # evicts 4
    assert store.info(oid(4)) is None
    assert store.stats()["num_evicted"] == 2 and store.stats()["num_spilled"] == 0
    put(store, oid(8), b"\x08" * size, primary=True)    # no secondaries: spill LRU 1
    st = store.stats()
    assert st["num_spilled"] == 1 and st["spilled_bytes"] == size
    assert store.info(oid(1))["spilled"] and store.info(oid(1))["offset"] is None
    assert store.contains(oid(1))
    assert read(store, oid(1)) == b"\x01" * size          # restored on pin
    assert store.stats()["num_restored"] == 1
    assert store.info(oid(1))["spilled"] is None


def test_spill_and_restore_1_5x_capacity(make_store):
    store = make_store(256 * KB)
    rng = np.random.default_rng(3)
    blobs = {}
    while sum(b.nbytes for b in blobs.values()) < 1.5 * store.arena.size:
        k = oid(len(blobs))
        blobs[k] = rng.integers(0, 256, int(rng.integers(1, 20 * KB)), dtype=np.uint8)
        put(store, k, blobs[k])
    st = store.stats()
    assert st["num_spilled"] > 0 and st["used"] <= st["capacity"]
    assert st["spilled_bytes"] >= 0.5 * st["capacity"] - 20 * KB
    assert len(os.listdir(store.spill_dir)) == st["num_spilled"]
    for _ in range(2):  # every pass restores some and spills others
        for k, b in blobs.items():
            loc = store.pin(k, "r")
            assert np.array_equal(store.arena.read_view(*loc), b)
            store.release(k, "r")
    assert store.stats()["num_restored"] > st["num_spilled"]
    for k in blobs:
        store.free(k)
    st = store.stats()
    assert st["num_objects"] == 0 and st["used"] == 0
    assert st["num_spilled"] == 0 and st["spilled_bytes"] == 0
    assert os.listdir(store.spill_dir) == []


def test_restore_never_spills_the_object_being_restored(make_store):
    store = make_store(16 * KB)
    put(store, oid(1), b"a" * 10 * KB)
    put(store, oid(2), b"b" * 10 * KB)  # spills 1
    assert store.info(oid(1))["spilled"]
    assert read(store, oid(1)) == b"a" * 10 * KB  # spills 2 to restore 1
    assert store.info(oid(2))["spilled"]
    assert read(store, oid(2)) == b"b" * 10 * KB


def test_full_when_everything_pinned(make_store):
    store = make_store(64 * KB)
    for i in range(4):
        put(store, oid(i), b"z" * 16 * KB)
        store.pin(oid(i), "r")
    with pytest.raises(ObjectStoreFullError) as ei:
        store.create(oid(9), 1000)
    msg = str(ei.value)
    assert "1000 B" in msg and "64.0 KiB" in msg and "object_store_memory" in msg
    assert ei.value.requested == 1000 and ei.value.capacity == 64 * KB
    assert store.stats()["num_spilled"] == 0 and store.stats()["num_evicted"] == 0
    # a CREATED object is never evicted either
    store.release_client("r")
    store.free(oid(0))
    store.create(oid(10), 16 * KB)
    for i in (1, 2, 3):
        store.free(oid(i))
    store.create(oid(11), 48 * KB)
    with pytest.raises(ObjectStoreFullError):
        store.create(oid(12), 1)
    store.abort(oid(10))
    store.abort(oid(11))
    assert store.stats()["used"] == 0


def test_full_for_oversized_object(make_store):
    store = make_store(64 * KB)
    with pytest.raises(ObjectStoreFullError) as ei:
        store.create(oid(1), 64 * KB + 1)
    assert "larger than the whole store" in str(ei.value)
    assert "free references" in str(ei.value)
    assert store.stats()["num_objects"] == 0


def test_put_free_loop_stays_bounded(make_store):
    store = make_store(256 * KB)
    rng = np.random.default_rng(4)
    peak = 0
    live = []
    for i in range(200):
        data = rng.integers(0, 256, int(rng.integers(1, 30 * KB)), dtype=np.uint8)
        put(store, oid(i), data)
        live.append(oid(i))
        loc = store.pin(oid(i), "w")
        assert np.array_equal(store.arena.read_view(*loc), data)
        store.release(oid(i), "w")
        if len(live) > 3:
            store.free(live.pop(0))
        peak = max(peak, store.stats()["used"])
    st = store.stats()
    assert st["num_spilled"] == 0 and st["num_evicted"] == 0
    assert peak <= 4 * 30 * KB + 4 * 64
    for k in live:
        store.free(k)
    assert store.stats()["used"] == 0 and store.stats()["num_objects"] == 0


def test_close_removes_spill_files(make_store):
    store = make_store(16 * KB)
    for i in range(5):
        put(store, oid(i), bytes([i]) * 10 * KB)
    assert len(os.listdir(store.spill_dir)) == 4
    store.close()
    assert os.listdir(store.spill_dir) == []
