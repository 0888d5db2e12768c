"""Objects and memory as a user sees them: values come back exactly, large
arrays zero-copy and read-only, refs inside values and task arguments keep
their objects alive, dropped objects are freed, a full store spills, and an
object larger than the store is a clear error."""
from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest

import zray
from zray import exceptions as zexc
from zray.broker import protocol
from zray.object_ref import ObjectRef
from zray.worker import global_state

from conftest import wait_for

GET_TIMEOUT = 30
MiB = 1024 * 1024
INLINE_LIMIT = 100 * 1024


@dataclasses.dataclass
class Point:
    """A user class defined in the test module."""
    x: int
    y: float
    tags: list

    def norm1(self):
        return abs(self.x) + abs(self.y)


@zray.remote
def echo(value):
    return value


@zray.remote
def make_array(n, fill):
    return np.full(n, fill, dtype=np.int64)


@zray.remote
def summarize(arr):
    """What a task sees of an array argument: sum, size, writeable flag."""
    return int(arr.sum()), arr.size, bool(arr.flags.writeable)


@zray.remote
def get_and_sum(refs):
    return [int(zray.get(r, timeout=GET_TIMEOUT).sum()) for r in refs]


@zray.remote
def sleep_get_and_sum(refs, seconds):
    import time
    time.sleep(seconds)
    return [int(zray.get(r, timeout=GET_TIMEOUT).sum()) for r in refs]


@zray.remote
def too_big_for_the_store(n_bytes):
    return np.ones(n_bytes, dtype=np.uint8)


def store_stats() -> dict:
    worker = global_state.worker
    return worker.raylet.call(protocol.GetStoreStats()).stats


def store_used() -> int:
    return store_stats()["used"]


def settle_baseline() -> int:
    """Store usage once earlier tests' frees have landed and the blocks
    reserved for their puts went back (unused for a second)."""
    gc.collect()
    last = [store_used()]

    def stable():
        gc.collect()
        zray.get(echo.remote(None), timeout=GET_TIMEOUT)     # drains pending releases
        stats = store_stats()
        now = stats["used"]
        same = now == last[0] and stats["num_reserved"] == 0
        last[0] = now
        return same
    wait_for(stable, timeout=10, interval=0.2)
    return last[0]


def back_to(baseline: int, timeout: float = 10.0) -> None:
    def freed():
        gc.collect()
        zray.put(0)                 # any call lets the driver send its frees
        return store_used() <= baseline
    wait_for(freed, timeout=timeout, interval=0.1)


# ------------------------------------------------------------ small values

SMALL_VALUES = [
    0, -(2 ** 70), 3.25, "hé✓", b"\x00\xff", None, True, (1, "a"), {"a": [1, {"b": None}]},
    Point(3, -4.5, ["p"]), np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(["x", "yz"]),
]
SMALL_IDS = ["int", "bigint", "float", "str", "bytes", "none", "bool", "tuple", "dict",
             "custom_class", "numpy_2d", "numpy_str"]


def assert_same(out, value):
    assert type(out) is type(value)
    if isinstance(value, np.ndarray):
        assert out.dtype == value.dtype and out.shape == value.shape
        assert np.array_equal(out, value)
    else:
        assert out == value


@pytest.mark.parametrize("value", SMALL_VALUES, ids=SMALL_IDS)
def test_small_value_roundtrips_exactly_through_put_and_get(cluster, value):
    assert_same(zray.get(zray.put(value), timeout=GET_TIMEOUT), value)


@pytest.mark.parametrize("value", SMALL_VALUES, ids=SMALL_IDS)
def test_small_value_roundtrips_exactly_through_a_task(cluster, value):
    assert_same(zray.get(echo.remote(value), timeout=GET_TIMEOUT), value)


def test_custom_class_instance_keeps_its_methods(cluster):
    out = zray.get(echo.remote(Point(-1, 2.5, [])), timeout=GET_TIMEOUT)
    assert isinstance(out, Point) and out.norm1() == 3.5


def test_small_values_are_copies_neither_the_original_nor_gets_share_state(cluster):
    value = {"items": [1, 2]}
    ref = zray.put(value)
    value["items"].append(3)            # changing the original after put
    first = zray.get(ref, timeout=GET_TIMEOUT)
    assert first == {"items": [1, 2]}
    first["items"].append(4)            # changing what one get returned
    assert zray.get(ref, timeout=GET_TIMEOUT) == {"items": [1, 2]}


# ------------------------------------------------------------ large arrays

def test_large_array_comes_back_equal_read_only_and_zero_copy(cluster):
    arr = np.random.default_rng(0).random(40_000)          # 320 KB > inline limit
    assert arr.nbytes > INLINE_LIMIT
    ref = zray.put(arr)
    first = zray.get(ref, timeout=GET_TIMEOUT)
    second = zray.get(ref, timeout=GET_TIMEOUT)
    assert first.dtype == arr.dtype and np.array_equal(first, arr)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 1.0
    assert np.shares_memory(first, second)
    assert not np.shares_memory(first, arr)


def test_changing_the_original_after_put_does_not_change_the_object(cluster):
    arr = np.zeros(100_000)
    ref = zray.put(arr)
    arr[:] = 7
    assert zray.get(ref, timeout=GET_TIMEOUT).sum() == 0


@pytest.mark.parametrize("n_bytes", [1 * MiB, 100 * MiB], ids=["1MB", "100MB"])
def test_get_of_large_arrays_works(cluster, n_bytes):
    arr = np.arange(n_bytes // 8, dtype=np.int64)
    ref = zray.put(arr)
    out = zray.get(ref, timeout=GET_TIMEOUT)
    assert out.shape == arr.shape and np.array_equal(out, arr)
    assert np.shares_memory(out, zray.get(ref, timeout=GET_TIMEOUT))
    del out, ref


def test_large_values_inside_containers_roundtrip(cluster):
    value = {"a": np.ones(50_000), "b": [np.arange(30_000), "text"], "c": Point(1, 2.0, [])}
    out = zray.get(zray.put(value), timeout=GET_TIMEOUT)
    assert np.array_equal(out["a"], value["a"])
    assert np.array_equal(out["b"][0], value["b"][0]) and out["b"][1] == "text"
    assert out["c"] == value["c"]


# ------------------------------------------------- task results and args

def test_large_task_result_returns_and_passes_to_another_task(cluster):
    n = 200_000                                             # 1.6 MB of int64
    ref = make_array.remote(n, 3)
    out = zray.get(ref, timeout=GET_TIMEOUT)
    assert out.size == n and (out == 3).all()
    assert not out.flags.writeable
    assert zray.get(summarize.remote(ref), timeout=GET_TIMEOUT) == (3 * n, n, False)
    # A chain: result of one task straight into the next, never via the driver.
    assert zray.get(summarize.remote(make_array.remote(n, 5)),
                    timeout=GET_TIMEOUT) == (5 * n, n, False)


def test_large_array_argument_is_read_only_in_the_task(cluster):
    arr = np.ones(300_000, dtype=np.int64)
    assert zray.get(summarize.remote(arr), timeout=GET_TIMEOUT) == (300_000, 300_000, False)


def test_many_tasks_share_one_large_put_argument(cluster):
    ref = zray.put(np.full(500_000, 2, dtype=np.int64))
    results = zray.get([summarize.remote(ref) for _ in range(8)], timeout=GET_TIMEOUT)
    assert results == [(1_000_000, 500_000, False)] * 8


# ------------------------------------------------- refs kept alive by others

@pytest.mark.parametrize("n", [10, 200_000], ids=["inline", "stored"])
def test_put_value_holding_refs_keeps_them_alive_after_caller_drops_its_own(cluster, n):
    inner = [zray.put(np.full(n, i, dtype=np.int64)) for i in range(3)]
    outer = zray.put({"refs": inner})
    del inner
    gc.collect()
    zray.get(echo.remote(None), timeout=GET_TIMEOUT)        # let frees (if any) happen
    refs = zray.get(outer, timeout=GET_TIMEOUT)["refs"]
    assert all(isinstance(r, ObjectRef) for r in refs)
    values = zray.get(refs, timeout=GET_TIMEOUT)
    assert [int(v[0]) for v in values] == [0, 1, 2]
    assert all(v.size == n for v in values)


@pytest.mark.parametrize("n", [10, 200_000], ids=["inline", "stored"])
def test_refs_nested_in_task_args_stay_alive_after_the_driver_drops_them(cluster, n):
    refs = [zray.put(np.full(n, i + 1, dtype=np.int64)) for i in range(3)]
    result = sleep_get_and_sum.remote(refs, 0.5)
    del refs
    gc.collect()
    zray.put(0)                     # the driver sends whatever frees it has
    assert zray.get(result, timeout=GET_TIMEOUT) == [n, 2 * n, 3 * n]


def test_refs_to_task_results_nested_in_args_stay_alive(cluster):
    refs = [make_array.remote(200_000, i) for i in range(2)]
    result = sleep_get_and_sum.remote(refs, 0.5)
    del refs
    gc.collect()
    assert zray.get(result, timeout=GET_TIMEOUT) == [0, 200_000]


def test_task_returning_refs_it_received_keeps_them_usable(cluster):
    ref = zray.put(np.arange(200_000))
    [back] = zray.get(echo.remote([ref]), timeout=GET_TIMEOUT)
    del ref
    gc.collect()
    zray.put(0)
    assert int(zray.get(back, timeout=GET_TIMEOUT)[-1]) == 199_999


# ----------------------------------------------------------------- freeing

def test_dropping_a_large_object_frees_its_store_memory(cluster):
    baseline = settle_baseline()
    ref = zray.put(np.ones(2 * MiB, dtype=np.uint8))
    assert store_used() >= baseline + 2 * MiB
    del ref
    back_to(baseline)


def test_dropping_a_large_task_result_frees_its_store_memory(cluster):
    baseline = settle_baseline()
    ref = make_array.remote(MiB, 1)                         # 8 MB
    zray.wait([ref], timeout=GET_TIMEOUT)
    assert store_used() >= baseline + 8 * MiB
    del ref
    back_to(baseline)


def test_putting_and_dropping_1000_objects_of_10mb_keeps_the_store_at_baseline(cluster):
    baseline = settle_baseline()
    arr = np.ones(10 * MiB, dtype=np.uint8)
    for _ in range(1000):
        ref = zray.put(arr)             # no ObjectStoreFullError: 10 GB through 256 MB
        del ref
    back_to(baseline)
    assert store_stats()["num_spilled"] == 0    # nothing freed was left on disk


def test_a_view_pins_its_object_after_the_ref_is_dropped(cluster):
    baseline = settle_baseline()
    ref = zray.put(np.arange(MiB, dtype=np.int64))          # 8 MB
    view = zray.get(ref, timeout=GET_TIMEOUT)
    del ref
    gc.collect()
    # Churn the store so freed memory would be reused.
    for i in range(20):
        junk = zray.put(np.full(MiB, -1, dtype=np.int64))
        del junk
    zray.get(echo.remote(None), timeout=GET_TIMEOUT)
    assert np.array_equal(view, np.arange(MiB, dtype=np.int64))
    assert store_used() >= baseline + 8 * MiB              # still held by the view
    del view
    back_to(baseline)                                       # released with the view


# ------------------------------------------- own-cluster tests (kept last:
# start_cluster ends the module's shared cluster)

def test_dropping_a_partly_read_stream_frees_its_unread_items(cluster):
    @cluster.remote
    def stream(n):
        for _ in range(n):
            yield np.ones(1_000_000)          # 8 MB each: in the store

    baseline = store_used()
    for _ in range(3):
        items = stream.remote(8)
        first = cluster.get(next(items))
        assert first.shape == (1_000_000,)
        del first, items                     # seven items never read
    wait_for(lambda: store_used() == baseline, timeout=15)


def test_holding_refs_to_1_5x_the_store_spills_and_every_value_comes_back(start_cluster):
    start_cluster(object_store_memory=64 * MiB)
    n = 8 * MiB // 8
    refs = [zray.put(np.full(n, i, dtype=np.int64)) for i in range(12)]   # 96 MB
    stats = store_stats()
    assert stats["num_spilled"] > 0
    assert stats["used"] <= 64 * MiB
    for i, ref in enumerate(refs):
        arr = zray.get(ref, timeout=GET_TIMEOUT)
        assert arr.size == n and arr[0] == i and arr[-1] == i and (arr == i).all()
        del arr
    # Values also reach tasks, restored from disk as needed.
    sums = zray.get([summarize.remote(r) for r in refs[:3]], timeout=GET_TIMEOUT)
    assert [s[0] for s in sums] == [i * n for i in range(3)]
    # Task results beyond capacity spill too.
    results = [make_array.remote(n, 100 + i) for i in range(10)]
    for i, ref in enumerate(results):
        assert int(zray.get(ref, timeout=GET_TIMEOUT)[0]) == 100 + i


def test_object_larger_than_the_store_raises_object_store_full_error(start_cluster):
    start_cluster(object_store_memory=32 * MiB)
    big = np.ones(40 * MiB, dtype=np.uint8)
    with pytest.raises(zexc.ObjectStoreFullError) as info:
        zray.put(big)
    assert isinstance(info.value, MemoryError)
    assert isinstance(info.value, zexc.RayError)
    # A task returning such an object fails the same way instead of hanging.
    with pytest.raises(zexc.ObjectStoreFullError):
        zray.get(too_big_for_the_store.remote(40 * MiB), timeout=GET_TIMEOUT)
    # The store still works afterwards.
    arr = np.arange(MiB)
    assert np.array_equal(zray.get(zray.put(arr), timeout=GET_TIMEOUT), arr)

