"""A driver's thread that waits in get/wait reads its own inbox (the baton,
see zray/worker/inbox.py): the reply is handled on the waiting thread, not
handed over by the I/O thread; the I/O thread serves the inbox again once
nobody waits; several waiting threads, work that needs no waiter, and a
shutdown under a waiting thread all still behave."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import zmq

import zray
from zray import exceptions as exc
from zray.broker import protocol as p
from zray.worker import global_state
from zray.worker.inbox import InboxDispatcher

from conftest import call_bounded, wait_for


class _Recorder:
    """Stands in for the core worker's parts: records which thread handled what."""

    def __init__(self):
        self.seen = []              # (task id, thread ident)
        self.task_manager = self

    def handle_task_returned(self, msg):
        self.seen.append((msg.task_id, threading.get_ident()))


@pytest.fixture
def inbox_pair():
    """An InboxDispatcher reading an inproc ROUTER, and a DEALER to it."""
    ctx = zmq.Context.instance()
    endpoint = f"inproc://baton-{os.getpid()}-{time.monotonic_ns()}"
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    recorder, cond = _Recorder(), threading.Condition(threading.Lock())
    inbox = InboxDispatcher(recorder, (router,), None, lambda: None,
                            lambda topic, event: None, lambda: None,
                            cond=cond, self_read=True)
    try:
        yield inbox, dealer, recorder, cond
    finally:
        inbox.stop()
        inbox.join(timeout=5)
        dealer.close(linger=0)
        router.close(linger=0)
        inbox.close()


def _returned(task_id: bytes) -> list:
    return [b"", p.encode(p.TaskReturned(task_id, []))]


def _take_baton(inbox, cond) -> None:
    """Ask the serving I/O thread for the baton, as a thread entering get does."""
    wait_for(lambda: inbox.reader == inbox.ident and inbox.ident is not None, timeout=5)
    with cond:
        deadline = time.monotonic() + 5
        while inbox.reader is not None and time.monotonic() < deadline:
            inbox.read_locked(0.5)
        assert inbox.reader is None, "the I/O thread did not give the baton up"


def test_a_waiting_thread_handles_the_messages_itself(inbox_pair):
    inbox, dealer, recorder, cond = inbox_pair
    inbox.park_s = 60.0             # the I/O thread stays parked for the whole test
    inbox.start()
    _take_baton(inbox, cond)
    dealer.send_multipart(_returned(b"t" * 16))
    with cond:
        deadline = time.monotonic() + 5
        while not recorder.seen and time.monotonic() < deadline:
            inbox.read_locked(0.5)
    assert recorder.seen == [(b"t" * 16, threading.get_ident())]


def test_the_io_thread_serves_again_once_nobody_waits(inbox_pair):
    inbox, dealer, recorder, cond = inbox_pair
    inbox.park_s = 0.05
    inbox.start()
    _take_baton(inbox, cond)
    dealer.send_multipart(_returned(b"u" * 16))     # nobody waits: the I/O thread takes it
    wait_for(lambda: recorder.seen, timeout=5)
    assert recorder.seen == [(b"u" * 16, inbox.ident)]


def test_stop_ends_a_parked_io_thread_at_once(inbox_pair):
    inbox, _, _, cond = inbox_pair
    inbox.park_s = 60.0
    inbox.start()
    _take_baton(inbox, cond)
    inbox.stop()
    inbox.join(timeout=5)
    assert not inbox._thread.is_alive()


# -- on a cluster -------------------------------------------------------------

@zray.remote
def square(x):
    return x * x


@zray.remote
def touch(path, _dep):
    with open(path, "w") as f:
        f.write("ran")
    return path


@zray.remote
def slow(seconds):
    time.sleep(seconds)
    return seconds


@zray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def test_threads_waiting_at_once_each_get_their_own_values(cluster):
    counter = Counter.remote()
    errors, done = [], []

    def client(k):
        try:
            for i in range(40):
                assert zray.get(square.remote(k * 100 + i), timeout=60) == (k * 100 + i) ** 2
                assert zray.get(counter.add.remote(1), timeout=60) > 0
            done.append(k)
        except BaseException as err:     # noqa: BLE001 — reported by the test
            errors.append(err)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    how, value = call_bounded(lambda: [zray.get(square.remote(i), timeout=60)
                                       for i in range(40)], timeout=120)
    assert how == "ok" and value == [i * i for i in range(40)]
    for t in threads:
        t.join(120)
    assert not errors and sorted(done) == list(range(6))
    assert zray.get(counter.add.remote(0), timeout=30) == 6 * 40


def test_a_dependent_task_is_sent_while_the_driver_does_not_wait(cluster, tmp_path):
    assert zray.get(square.remote(3), timeout=30) == 9     # the driver read its inbox last
    path = str(tmp_path / "ran")
    ref = touch.remote(path, slow.remote(0.2))             # sent when slow's result arrives
    wait_for(lambda: os.path.exists(path), timeout=30)     # no get: the I/O thread sends it
    assert zray.get(ref, timeout=30) == path


def test_wait_returns_the_first_ready_while_reading(cluster):
    fast, late = square.remote(4), slow.remote(30)
    ready, not_ready = zray.wait([late, fast], num_returns=1, timeout=20)
    assert ready == [fast] and not_ready == [late]
    zray.cancel(late, force=True)


def test_ctrl_c_while_the_main_thread_handles_a_reply_loses_nothing(cluster, monkeypatch):
    """A Ctrl-C that lands while the main thread handles a reply it took off
    the socket is raised once the reply is handled: the value is kept."""
    manager = global_state.worker.task_manager
    handle, hit = manager.handle_task_returned, []

    def interrupted(msg):
        if not hit and threading.current_thread() is threading.main_thread():
            hit.append(msg.task_id)
            os.kill(os.getpid(), signal.SIGINT)     # Python runs its handler here
        return handle(msg)

    monkeypatch.setattr(manager, "handle_task_returned", interrupted)
    ref = slow.remote(0.3)          # the main thread reads its inbox when the reply comes
    with pytest.raises(KeyboardInterrupt):
        zray.get(ref, timeout=30)
    assert hit, "the reply was not handled on the main thread"
    monkeypatch.undo()
    assert zray.get(ref, timeout=10) == 0.3
    with pytest.raises(KeyboardInterrupt):      # Ctrl-C still interrupts a get at once
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        zray.get(slow.remote(30), timeout=20)


def test_shutdown_while_a_thread_waits_in_get(start_cluster):
    start_cluster()
    ref = slow.remote(30)
    outcome = []

    def waiter():
        try:
            outcome.append(zray.get(ref, timeout=10))
        except BaseException as err:     # noqa: BLE001 — reported by the test
            outcome.append(err)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    inbox = global_state.worker.inbox
    wait_for(lambda: inbox.reader == thread.ident, timeout=10)     # it reads the inbox
    how, _ = call_bounded(zray.shutdown, timeout=20)
    assert how == "ok"
    thread.join(20)
    assert not thread.is_alive(), "a get in another thread did not end after shutdown"
    assert outcome and isinstance(outcome[0], (exc.GetTimeoutError, exc.RayError))

