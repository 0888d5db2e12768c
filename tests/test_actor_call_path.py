"""The actor worker's side of a call, as a caller relies on it: many calls in
flight run in order with their own results, a reply goes out when its call
ends (never held for the next call), a threaded actor runs at most
``max_concurrency`` calls at once, and output a call prints reaches the
driver's console when the call ends.
"""
from __future__ import annotations

import io
import threading
import time

import zray
from zray.worker.executor import LogForwarder, _CallPool

from conftest import wait_for


@zray.remote
class Peak:
    """Counts the calls running at once, and the most ever seen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def work(self, seconds):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1
        return self.peak

    def peak_(self):
        return self.peak


@zray.remote
class Signal:
    def __init__(self):
        self.event = threading.Event()

    def fast(self, i):
        return i

    def wait(self):
        return self.event.wait(30)

    def set(self):
        self.event.set()

    def is_set(self):
        return self.event.is_set()


@zray.remote
class Serial:
    def fast(self, i):
        return i

    def wait_for(self, signal):
        """True once ``signal`` is set (asks it, at most for 30 s)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if zray.get(signal.is_set.remote(), timeout=10):
                return True
            time.sleep(0.01)
        return False


@zray.remote
class Log:
    def items(self, n):
        return list(range(n))


def test_threaded_actor_runs_at_most_max_concurrency_calls_at_once(cluster):
    actor = Peak.options(max_concurrency=3).remote()
    zray.get([actor.work.remote(0.2) for _ in range(12)], timeout=60)
    assert zray.get(actor.peak_.remote(), timeout=20) == 3
    zray.kill(actor)


def test_reply_is_not_held_back_by_the_next_call(cluster):
    """A burst of calls is read at once, but each reply leaves when its call
    ends: the caller gets the quick calls' results while a later call blocks
    (here, until the caller reacts to them)."""
    actor = Signal.options(max_concurrency=2).remote()
    quick = [actor.fast.remote(i) for i in range(20)]
    blocked = actor.wait.remote()
    assert zray.get(quick, timeout=20) == list(range(20))
    actor.set.remote()
    assert zray.get(blocked, timeout=20) is True
    zray.kill(actor)

    # one call at a time: the blocked call waits for a flag the caller
    # raises only once it has the quick calls' results
    flag, serial = Signal.remote(), Serial.remote()
    quick = [serial.fast.remote(i) for i in range(20)]
    blocked = serial.wait_for.remote(flag)
    assert zray.get(quick, timeout=20) == list(range(20))
    flag.set.remote()
    assert zray.get(blocked, timeout=30) is True
    zray.kill(serial)
    zray.kill(flag)


def test_many_calls_in_flight_return_in_order_with_their_own_results(cluster):
    actor = Log.remote()
    refs = [actor.items.remote(i % 7) for i in range(2000)]
    assert zray.get(refs, timeout=60) == [list(range(i % 7)) for i in range(2000)]
    zray.kill(actor)


def test_call_pool_starts_threads_only_when_none_is_idle():
    ran, done = [], threading.Event()

    def run(spec, fn):
        ran.append(spec)
        if len(ran) == 50:
            done.set()

    pool = _CallPool(8, run)
    for i in range(50):
        pool.submit(i, None)
        wait_for(lambda: len(ran) == i + 1, timeout=10)
    assert done.wait(10)
    assert ran == list(range(50))
    assert pool._threads == 1, "one call at a time needs one thread"


class _Recorder:
    def __init__(self):
        self.lines = []

    def forward_lines(self, lines):
        self.lines.extend(lines)


class _Stream(io.StringIO):
    flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_log_forwarder_sends_an_unfinished_line_when_the_task_ends():
    stream, sink = _Stream(), _Recorder()
    out = LogForwarder(stream, sink)
    out.flush_written()
    assert stream.flushes == 0, "nothing written: nothing to flush"
    out.write("progress 50%")
    assert sink.lines == []
    out.flush_written()
    assert sink.lines == ["progress 50%"]
    assert stream.getvalue() == "progress 50%"
    out.write("done\n")
    assert sink.lines == ["progress 50%", "done"]
    before = stream.flushes
    out.encoding                     # anything read around the wrapper: flushed at the end
    out.flush_written()
    assert stream.flushes == before + 1
