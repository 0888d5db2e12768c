"""``zray.util.ActorPool`` and ``zray.util.queue.Queue``, used as a Ray user
uses ``ray.util.ActorPool`` and ``ray.util.queue.Queue``."""
from __future__ import annotations

import os
import time

import pytest

import zray
from zray.util import ActorPool
from zray.util.queue import Empty, Full, Queue


@zray.remote
class Worker:
    def __init__(self, tag):
        self.tag = tag
        self.seen = 0

    def double(self, x):
        self.seen += 1
        return 2 * x

    def sleep_then(self, args):
        seconds, value = args
        time.sleep(seconds)
        return value

    def who(self, x):
        return (self.tag, os.getpid(), x)

    def sleep_then_who(self, args):
        seconds, value = args
        time.sleep(seconds)
        return (self.tag, value)


def _pool(n=2):
    actors = [Worker.remote(i) for i in range(n)]
    return ActorPool(actors), actors


def _kill_all(actors):
    for actor in actors:
        zray.kill(actor)


# --------------------------------------------------------------------------
# ActorPool
# --------------------------------------------------------------------------

def test_actor_pool_map_returns_results_in_order(cluster):
    pool, actors = _pool(2)
    results = list(pool.map(lambda a, v: a.double.remote(v), range(20)))
    assert results == [2 * i for i in range(20)]
    # uneven durations: still submission order
    values = [(0.3, "slow"), (0.0, "fast1"), (0.0, "fast2")]
    assert list(pool.map(lambda a, v: a.sleep_then.remote(v), values)) == \
        ["slow", "fast1", "fast2"]
    _kill_all(actors)


def test_actor_pool_uses_every_actor(cluster):
    pool, actors = _pool(3)
    values = [(0.2, i) for i in range(6)]
    ran = list(pool.map_unordered(lambda a, v: a.sleep_then_who.remote(v), values))
    assert sorted(value for _, value in ran) == list(range(6))
    assert {tag for tag, _ in ran} == {0, 1, 2}     # spread out: every actor took calls
    tags = {tag for tag, _, _ in pool.map(lambda a, v: a.who.remote(v), range(9))}
    assert tags == {0, 1, 2}
    _kill_all(actors)


def test_actor_pool_map_unordered_yields_in_completion_order(cluster):
    pool, actors = _pool(2)
    values = [(1.0, "slow"), (0.0, "fast"), (0.0, "fast2")]
    results = list(pool.map_unordered(lambda a, v: a.sleep_then.remote(v), values))
    assert sorted(results) == ["fast", "fast2", "slow"]
    assert results[-1] == "slow", f"the slow call should come last: {results}"
    _kill_all(actors)


def test_actor_pool_submit_get_next_has_next(cluster):
    pool, actors = _pool(2)
    assert not pool.has_next()
    for i in range(5):                     # more than there are actors: some wait
        pool.submit(lambda a, v: a.double.remote(v), i)
    assert pool.has_next()
    got = []
    while pool.has_next():
        got.append(pool.get_next(timeout=20))
    assert got == [0, 2, 4, 6, 8]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()

    pool.submit(lambda a, v: a.double.remote(v), 21)
    pool.submit(lambda a, v: a.double.remote(v), 4)
    assert sorted([pool.get_next_unordered(timeout=20), pool.get_next_unordered(timeout=20)]) \
        == [8, 42]
    assert not pool.has_next()
    _kill_all(actors)


def test_actor_pool_get_next_with_timeout(cluster):
    pool, actors = _pool(1)
    pool.submit(lambda a, v: a.sleep_then.remote(v), (1.0, "late"))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1)
    assert time.monotonic() - started < 0.9, "get_next(timeout=0.1) waited for the result"
    assert pool.has_next(), "a timed-out get_next must not lose the result"
    assert pool.get_next(timeout=20) == "late"
    _kill_all(actors)


def test_actor_pool_get_next_raises_the_callers_error(cluster):
    pool, actors = _pool(1)
    pool.submit(lambda a, v: a.double.remote(v), "x")      # "x" * 2 is fine
    pool.submit(lambda a, v: a.double.remote(v), None)     # 2 * None raises
    assert pool.get_next(timeout=20) == "xx"
    with pytest.raises(TypeError):
        pool.get_next(timeout=20)
    # the actor went back to the pool and still works
    pool.submit(lambda a, v: a.double.remote(v), 3)
    assert pool.get_next(timeout=20) == 6
    _kill_all(actors)


# --------------------------------------------------------------------------
# Queue
# --------------------------------------------------------------------------

def test_queue_put_get_fifo_and_sizes(cluster):
    q = Queue()
    assert q.empty() and q.qsize() == 0 and len(q) == 0
    assert not q.full()                    # maxsize 0: never full
    for item in ["a", {"b": 2}, 3, None]:
        q.put(item)
    assert q.qsize() == 4 and q.size() == 4 and len(q) == 4 and not q.empty()
    assert [q.get(timeout=10) for _ in range(4)] == ["a", {"b": 2}, 3, None]
    assert q.empty()
    q.shutdown()


def test_queue_maxsize_full_and_nonblocking(cluster):
    q = Queue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(Full):
        q.put(3, block=False)
    started = time.monotonic()
    with pytest.raises(Full):
        q.put(3, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5, f"put(timeout=0.3) on a full queue took {elapsed:.2f}s"
    assert q.qsize() == 2, "a failed put must not add the item"
    assert q.get_nowait() == 1
    assert not q.full()
    q.put(3, timeout=5)
    assert [q.get(), q.get()] == [2, 3]
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(ValueError):
        q.put(4, timeout=-1)
    q.shutdown()


def test_queue_get_blocks_until_timeout_then_raises_empty(cluster):
    q = Queue()
    started = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5, f"get(timeout=0.3) on an empty queue took {elapsed:.2f}s"
    # Empty / Full are the standard library's too
    import queue as std_queue
    assert issubclass(Empty, std_queue.Empty) and issubclass(Full, std_queue.Full)
    q.shutdown()


def test_queue_blocking_get_waits_for_a_put_from_a_task(cluster):
    q = Queue()

    @zray.remote
    def put_later(queue, item, delay):
        time.sleep(delay)
        queue.put(item)
        return "put"

    ref = put_later.remote(q, "hello", 0.5)
    started = time.monotonic()
    assert q.get(timeout=20) == "hello"              # blocked until the task put it
    assert time.monotonic() - started >= 0.3
    assert zray.get(ref, timeout=20) == "put"
    q.shutdown()


def test_queue_batches(cluster):
    q = Queue(maxsize=5)
    q.put_nowait_batch([1, 2, 3])
    assert q.qsize() == 3
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5, 6])                # would not fit: nothing added
    assert q.qsize() == 3
    q.put_nowait_batch([4, 5])
    assert q.full()
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(Empty):
        q.get_nowait_batch(4)                        # only 3 left: nothing taken
    assert q.qsize() == 3
    assert q.get_nowait_batch(3) == [3, 4, 5]
    assert q.empty()
    q.shutdown()


def test_queue_handle_passed_to_a_task_that_consumes_it(cluster):
    q = Queue()

    @zray.remote
    def consume(queue, n):
        return [queue.get(timeout=20) for _ in range(n)]

    ref = consume.remote(q, 10)
    for i in range(10):
        q.put(i)
    assert zray.get(ref, timeout=30) == list(range(10))
    assert q.empty()

    # and one consumer actor shares the queue with the driver
    @zray.remote
    class Consumer:
        def __init__(self, queue):
            self.queue = queue

        def drain(self):
            out = []
            while True:
                try:
                    out.append(self.queue.get(timeout=0.5))
                except Empty:
                    return out

    consumer = Consumer.remote(q)
    q.put_nowait_batch(list("abc"))
    assert zray.get(consumer.drain.remote(), timeout=30) == ["a", "b", "c"]
    zray.kill(consumer)
    q.shutdown()
