"""The inbox dispatcher (a part of the core worker): the I/O thread's loop.

It is a ``Service`` (``zray/broker/service.py``): it decodes what arrives on
the core worker's inboxes (IPC and TCP ROUTERs) and calls the handler named
after each message (``TaskReturned`` -> ``handle_task_returned``), which
hands it to the part that owns it. Garbage is logged and dropped by
``Service``, as in every daemon. It also serves the GCS event stream (SUB)
and runs the core worker's background work every ``TICK_S``.

A caller may rely on: handlers run on one thread at a time, the one that
holds the baton (``reader``); after each burst of messages the threads
waiting in ``get``/``wait`` are woken once, and the tasks whose last
dependency arrived are sent.

The baton (a driver's fast path for sync calls): a thread about to wait in
``get``/``wait`` reads the inboxes itself (``read_locked``) instead of
waiting for the I/O thread to hand each reply over (a thread wake-up and a
GIL hand-over per call). Whoever holds the baton polls the sockets, runs
every handler and the background tick, and wakes the other waiters, who
wait on ``cond`` as before. The I/O thread gives the baton up when a waiter
asks (a byte on the wake pipe) and takes it back once no thread has read
for ``PARK_S``, so messages are served while nobody waits too.
"""
from __future__ import annotations

import logging
import signal
import sys
from _signal import getsignal as _getsignal
import threading
import time

import zmq

from ..broker import protocol as p
from ..broker import sockets
from ..broker.service import Service

log = logging.getLogger(__name__)

_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)
_SIGINT = int(signal.SIGINT)

#: how often the background work (releases, raylet watch, task events) runs
TICK_S = 0.05
#: after a waiting thread read the inboxes, the I/O thread leaves them to it this long
#: (a loop of sync calls keeps the baton; messages wait at most this when nobody waits)
PARK_S = 0.005
#: how often a parked I/O thread looks again while another thread holds the baton
BUSY_PARK_S = 0.02


class InboxDispatcher(Service):
    name = "core worker inbox"

    def __init__(self, worker, inboxes, subscriber, on_burst, on_event, on_tick,
                 cond=None, self_read: bool = False):
        """``worker``: the core worker (its parts handle the messages);
        ``on_burst()``: after each burst of inbox messages; ``on_event(topic,
        event)``: an event of the GCS stream; ``on_tick()``: every TICK_S;
        ``cond``: the lock the waiters wait on (guards the baton too);
        ``self_read``: waiting threads read the inboxes themselves (the baton)."""
        self._worker = worker
        self._cond = cond if cond is not None else threading.Condition(threading.Lock())
        super().__init__()
        self.self_read = self_read
        #: the thread that holds the baton (reads the inboxes), or None (guarded by cond)
        self.reader = None
        #: threads waiting for the I/O thread to give the baton up (guarded by cond)
        self.want = 0
        #: when a thread last gave the baton back (guarded by cond)
        self.last_read = 0.0
        self.park_s = PARK_S
        self._unpark = threading.Event()        # set by stop(): a parked I/O thread ends
        self._interrupts = HeldInterrupt(self.interrupt)
        self._on_burst = on_burst
        self._on_event = on_event
        for inbox in inboxes:
            self.watch(inbox, self._on_inbox)
        if subscriber is not None:
            self.watch(subscriber, self._on_subscriber)
        self.every(TICK_S, on_tick)
        self.ident = None               # the I/O thread, once it runs
        self._thread = threading.Thread(target=self._run, name="zray-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        super().stop()
        self._unpark.set()

    def _run(self) -> None:
        self.ident = threading.get_ident()
        try:
            self._serve()
        except zmq.ZMQError as err:         # its sockets were closed under it
            if self.running:
                log.warning("core worker I/O thread stopped: %s", err)

    def _serve(self) -> None:
        """(I/O thread) Hold the baton and serve until a waiter asks for it;
        take it back once nobody has read for PARK_S."""
        cond, me, park = self._cond, self.ident, self.park_s
        while self.running:
            with cond:
                idle = time.monotonic() - self.last_read
                take = self.reader is None and not self.want and idle >= park
                if take:
                    self.reader = me
            if not take:            # another thread reads (maybe a long get): look less often
                busy = self.reader is not None or self.want
                self._unpark.wait(BUSY_PARK_S if busy else
                                  park - idle if 0 <= idle < park else park)
                continue
            try:
                while self.running and not self.want:
                    self.run_once(TICK_S)
            finally:
                self._give_back()

    def _give_back(self) -> None:
        with self._cond:
            self.reader = None
            self.last_read = time.monotonic()
            self._cond.notify_all()     # waiters may take the baton now

    def read_locked(self, timeout: float) -> None:
        """(``cond`` held; a thread waiting in get/wait) Wait at most
        ``timeout`` for news, then return (the caller re-checks what it waits
        for). Reads the inboxes on this thread when no other thread does;
        asks the I/O thread for the baton when it holds it; else waits on
        ``cond`` to be woken by the thread that reads."""
        cond = self._cond
        reader = self.reader
        if not self.self_read or not self.running:
            cond.wait(timeout)
        elif reader is None:
            me = threading.get_ident()
            self.reader = me
            guard = self._interrupts if me == _MAIN_THREAD else None
            cond.release()
            try:
                if guard is not None:
                    guard.hold()
                self.run_once(timeout)
            except zmq.ZMQError:
                if self.running:            # else: closed by shutdown under us
                    raise
            finally:
                cond.acquire()              # a Ctrl-C now is still held: the lock is
                self.reader = None          # surely taken back, the baton given back
                self.last_read = time.monotonic()
                cond.notify_all()
                if guard is not None:
                    guard.release()
            if guard is not None:
                guard.raise_held()
        elif reader == self.ident:
            self.want += 1
            self.interrupt()
            try:
                cond.wait(timeout)          # _give_back wakes us
            finally:
                self.want -= 1
        else:
            cond.wait(timeout)

    def restore_signal_handler(self) -> None:
        """(main thread, at shutdown) Put back the SIGINT handler ``read_locked`` wrapped."""
        self._interrupts.restore()

    def wait_idle_locked(self, timeout: float) -> bool:
        """(``cond`` held, after ``stop``) Wait until no thread reads the
        inboxes (before closing them); whether none does."""
        return self._cond.wait_for(lambda: self.reader is None, timeout)

    def _on_inbox(self, sock) -> None:
        for _ in range(1000):                # drain a burst, then let the rest run
            try:
                frames = sockets.recv_frames(sock, _NOBLOCK)
            except zmq.Again:
                break
            self.dispatch_frames(frames[0].bytes, frames[1:], sock)
            # asking is cheaper than the zmq.Again a recv of nothing raises
            if not sock.getsockopt(_EVENTS) & _POLLIN:
                break
        self._on_burst()

    def _on_subscriber(self, sub) -> None:
        for topic, event in sockets.recv_events(sub, 1000):
            try:
                self._on_event(topic, event)
            except Exception:
                log.exception("bad event on %r", topic)

    # -- handlers: one per message the inbox serves ------------------------
    def handle_task_returned(self, req, msg: p.TaskReturned) -> None:
        self._worker.task_manager.handle_task_returned(msg)

    def handle_calls_returned(self, req, msg: p.CallsReturned) -> None:
        """(actor calls) The results of several calls to one actor."""
        returned = self._worker.task_manager.handle_task_returned
        for result in msg.results:
            returned(result)

    def handle_task_failed(self, req, msg: p.TaskFailed) -> None:
        self._worker.task_manager.handle_task_failed(msg)

    def handle_task_placed(self, req, msg: p.TaskPlaced) -> None:
        self._worker.task_manager.handle_task_placed(msg)

    def handle_generator_item(self, req, msg: p.GeneratorItem) -> None:
        self._worker.generator_item(msg)

    def handle_get_object(self, req, msg: p.GetObject) -> None:
        self._worker.getter.handle_get_object(msg)

    def handle_object_value(self, req, msg: p.ObjectValue) -> None:
        if self._worker.getter.handle_object_value(msg):
            self._worker.wake()

    def handle_add_borrower(self, req, msg: p.AddBorrower) -> None:
        self._worker.references.add_borrower(msg.object_ids, msg.borrower)

    def handle_remove_borrower(self, req, msg: p.RemoveBorrower) -> None:
        self._worker.references.remove_borrower(msg.object_ids, msg.borrower)

    def handle_task_infeasible(self, req, msg: p.TaskInfeasible) -> None:
        if self._worker.task_manager.leases.is_lease(msg.task_id):
            return              # a lease waits: its tasks went the raylet's way
        print(f"zray: warning: {msg.message}", file=sys.stderr)

    def handle_lease_granted(self, req, msg: p.LeaseGranted) -> None:
        worker = self._worker
        leases = worker.task_manager.leases
        with worker.cond:
            ask = leases.granted(msg)
        if ask is not None:         # tasks still queue: one more lease
            leases.ask(ask)

    def handle_release_kept_views(self, req, msg: p.ReleaseKeptViews) -> None:
        """(objects) The store needs room: give back kept views and reserved blocks."""
        self._worker.let_go_of_store()

    def handle_cancel_running(self, req, msg: p.CancelRunning) -> None:
        self._worker.cancel_running(msg.task_id)

    def handle_actor_info(self, req, msg: p.ActorInfo) -> None:
        self._worker.actor_calls.handle_actor_info(msg)


_MAIN_THREAD = threading.main_thread().ident


class HeldInterrupt:
    """Ctrl-C while the main thread handles inbox messages (as the baton's
    reader) is held until it has handled them, then raised: a reply taken off
    the socket is never dropped half-handled. A Ctrl-C that comes while the
    main thread waits in the poll ends the wait at once (``wake``), so ``get``
    still stops at once. Main thread only (Python runs signal handlers there).

    The handler wraps the process's SIGINT handler the first time it is
    needed and stays installed (installing one per call costs a syscall); a
    handler the user installs later is wrapped anew, and ``restore()`` puts
    the user's back."""

    def __init__(self, wake):
        self._wake = wake
        self._wrapped = None            # the handler ours stands in front of
        self._holding = False
        self._held = None               # the frame of a held Ctrl-C
        self._handler = self._on_sigint  # one bound method, so `is` finds it

    def hold(self) -> None:
        """Hold Ctrl-C from now until ``release``."""
        self._held = None
        current = _getsignal(_SIGINT)       # (the C call: no enum made per get)
        if current is not self._handler:
            if not callable(current):       # ignored or the OS default: nothing to hold
                return
            self._wrapped = current
            signal.signal(signal.SIGINT, self._handler)
        self._holding = True

    def release(self) -> None:
        self._holding = False

    def raise_held(self) -> None:
        """Run the wrapped handler for a Ctrl-C held since ``hold`` (it raises
        KeyboardInterrupt, unless the user's handler does something else)."""
        frame, self._held = self._held, None
        if frame is not None and self._wrapped is not None:
            self._wrapped(signal.SIGINT, frame)

    def restore(self) -> None:
        """(main thread, at shutdown) Put the wrapped handler back."""
        if self._wrapped is not None and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, self._wrapped)
        self._wrapped = None

    def _on_sigint(self, signum, frame) -> None:
        if self._holding:
            self._held = frame
            self._wake()
        elif self._wrapped is not None:
            self._wrapped(signum, frame)
