"""The actor worker's side of a call, as a caller relies on it: many calls in
flight run in order with their own results, a reply goes out when its call
ends (never held for the next call), a threaded or async actor runs at
most ``max_concurrency`` calls at once (an async one starts them in arrival
order), and output a call prints reaches the driver's console when the call
ends.
"""
from __future__ import annotations

import asyncio
import io
import os
import threading
import time

import pytest

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
class AsyncPeak:
    """An async actor that records the order its calls started in and the
    most of them ever running at once."""

    def __init__(self):
        self.now = 0
        self.peak = 0
        self.started = []

    async def work(self, i, seconds):
        self.started.append(i)
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
            if i == 4:
                raise ValueError("call 4 fails")
            return i
        finally:
            self.now -= 1

    def seen(self):
        """(a plain method of an async actor) The peak and the start order."""
        return self.peak, self.started


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


@zray.remote
class Journal:
    """Records the calls in the order they ran."""

    def __init__(self):
        self.seen = []

    def note(self, i, payload=b""):
        self.seen.append(i)
        return len(payload)

    def notes(self):
        return self.seen

    def touch(self, path):
        with open(path, "w") as f:
            f.write("ran")

    def block(self, seconds):
        time.sleep(seconds)
        return seconds


def test_threaded_actor_runs_at_most_max_concurrency_calls_at_once(cluster):
    actor = Peak.options(max_concurrency=3).remote()
    zray.get([actor.work.remote(0.2) for _ in range(12)], timeout=60)
    assert zray.get(actor.peak_.remote(), timeout=20) == 3
    zray.kill(actor)


def test_async_actor_runs_at_most_max_concurrency_calls_at_once_in_arrival_order(cluster):
    """Calls past ``max_concurrency`` wait their turn and start in the order
    they came; a call that fails frees its turn like one that returns."""
    actor = AsyncPeak.options(max_concurrency=3).remote()
    refs = [actor.work.remote(i, 0.05) for i in range(12)]
    for i, ref in enumerate(refs):
        if i == 4:
            with pytest.raises(zray.exceptions.RayTaskError, match="call 4 fails"):
                zray.get(ref, timeout=60)
        else:
            assert zray.get(ref, timeout=60) == i
    assert zray.get(actor.seen.remote(), timeout=20) == (3, list(range(12)))
    zray.kill(actor)
    # one call at a time: the calls after a failed one still get their turn
    single = AsyncPeak.options(max_concurrency=1).remote()
    refs = [single.work.remote(i, 0.01) for i in (3, 4, 5, 6)]
    with pytest.raises(zray.exceptions.RayTaskError, match="call 4 fails"):
        zray.get(refs[1], timeout=60)
    assert zray.get([refs[0]] + refs[2:], timeout=60) == [3, 5, 6]
    assert zray.get(single.seen.remote(), timeout=20) == (1, [3, 4, 5, 6])
    zray.kill(single)


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
        pool.submit(i, None)        # (then its thread is idle again: counted)
        wait_for(lambda: len(ran) == i + 1 and len(pool._idle) == 1, timeout=10)
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


# -- calls sent together (ExecuteCalls) ----------------------------------------

def test_back_to_back_calls_run_in_submission_order_whatever_their_path(cluster):
    """Calls submitted while earlier ones are on their way travel together;
    large arguments and arguments that wait for a ref change how a call
    travels, never the order the actor runs them in."""
    actor = Journal.remote()
    pending = zray.put(b"r" * 10)
    refs = []
    for i in range(1500):
        if i % 300 == 7:
            refs.append(actor.note.remote(i, b"x" * 90_000))     # inline, large
        elif i % 500 == 11:
            refs.append(actor.note.remote(i, pending))           # a ref argument
        else:
            refs.append(actor.note.remote(i))
    sizes = zray.get(refs, timeout=60)
    assert sizes[7] == 90_000 and sizes[11] == 10 and sizes[0] == 0
    assert zray.get(actor.notes.remote(), timeout=20) == list(range(1500))
    zray.kill(actor)


def test_a_call_behind_a_running_one_starts_without_a_get(cluster, tmp_path):
    """A call submitted while an earlier call to the same actor is still
    running may wait to be sent with the next ones, but not for a get: the
    I/O thread sends it within a tick."""
    actor = Journal.options(max_concurrency=2).remote()
    zray.get(actor.notes.remote(), timeout=20)
    slow = actor.block.remote(20)           # runs (and holds no reply) for 20 s
    path = str(tmp_path / "touched")
    started = time.monotonic()
    actor.touch.remote(path)                # no get, no wait: nothing else sends it
    wait_for(lambda: os.path.exists(path), timeout=10)
    assert time.monotonic() - started < 5, "the call waited for the running one"
    zray.kill(actor)
    with pytest.raises(zray.exceptions.ActorDiedError):
        zray.get(slow, timeout=20)


def test_calls_waiting_to_be_sent_fail_when_the_actor_is_killed(cluster):
    actor = Journal.options(max_concurrency=2).remote()
    zray.get(actor.notes.remote(), timeout=20)
    slow = actor.block.remote(20)
    behind = [actor.note.remote(i) for i in range(50)]
    zray.kill(actor)
    for ref in [slow, *behind]:
        with pytest.raises(zray.exceptions.ActorDiedError):
            zray.get(ref, timeout=20)


@zray.remote(max_restarts=3)
class Fragile:
    def die(self):
        os._exit(1)

    def echo(self, i):
        return i


def test_calls_behind_one_that_kills_the_actor_run_after_the_restart_or_fail_clearly(cluster):
    """The calls submitted right behind one that kills the actor were sent
    to it (no retries: ActorDiedError) or still waited to be sent (then the
    restarted actor runs them); each gets its own value or that error."""
    for _ in range(3):
        actor = Fragile.remote()
        assert zray.get(actor.echo.remote(-1), timeout=30) == -1
        actor.die.remote()
        refs = [actor.echo.remote(i) for i in range(30)]
        for i, ref in enumerate(refs):
            try:
                assert zray.get(ref, timeout=30) == i
            except zray.exceptions.ActorDiedError:
                pass
        assert zray.get(actor.echo.remote(99), timeout=30) == 99
        zray.kill(actor)


def test_held_results_leave_together_per_caller_on_flush():
    from zray.broker import protocol as p
    from zray.worker.held_replies import HeldReplies
    sent = []
    replies = HeldReplies(lambda owner, message: sent.append((owner, message)), hold_s=60)
    ret = [[b"o" * 20, p.RET_INLINE, b"x"]]
    replies.hold(["a"], b"1" * 16, ret)
    replies.hold(["b"], b"2" * 16, ret)
    replies.hold(["a"], b"3" * 16, ret)
    replies.flush()
    by_owner = {owner[0]: message for owner, message in sent}
    assert [r.task_id for r in by_owner["a"].results] == [b"1" * 16, b"3" * 16]
    assert by_owner["b"] == p.TaskReturned(b"2" * 16, ret)
    replies.flush()
    assert len(sent) == 2, "a flush sends what is held once"


def test_a_held_result_is_sent_without_a_flush_within_a_bound():
    """A call of the batch may block: the results before it still leave."""
    from zray.broker import protocol as p
    from zray.worker.held_replies import HeldReplies
    sent = []
    replies = HeldReplies(lambda owner, message: sent.append(message))
    started = time.monotonic()
    replies.hold(["a"], b"1" * 16, [[b"o" * 20, p.RET_INLINE, b"x"]])
    wait_for(lambda: sent, timeout=5)
    assert time.monotonic() - started < 1.0
    assert sent == [p.TaskReturned(b"1" * 16, [[b"o" * 20, p.RET_INLINE, b"x"]])]
