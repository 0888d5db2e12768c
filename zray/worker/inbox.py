"""The inbox dispatcher (a part of the core worker): the I/O thread's loop.

It is a ``Service`` (``zray/broker/service.py``): it decodes what arrives on
the core worker's inboxes (IPC and TCP ROUTERs) and calls the handler named
after each message (``TaskReturned`` -> ``handle_task_returned``), which
hands it to the part that owns it. Garbage is logged and dropped by
``Service``, as in every daemon. It also serves the GCS event stream (SUB)
and runs the core worker's background work every ``TICK_S``.

A caller may rely on: handlers run on this one thread; after each burst of
messages the threads waiting in ``get``/``wait`` are woken once, and the
tasks whose last dependency arrived are sent.
"""
from __future__ import annotations

import logging
import sys
import threading

import zmq

from ..broker import protocol as p
from ..broker import sockets
from ..broker.service import Service

log = logging.getLogger(__name__)

#: how often the background work (releases, raylet watch, task events) runs
TICK_S = 0.05


class InboxDispatcher(Service):
    name = "core worker inbox"

    def __init__(self, worker, inboxes, subscriber, on_burst, on_event, on_tick):
        """``worker``: the core worker (its parts handle the messages);
        ``on_burst()``: after each burst of inbox messages; ``on_event(topic,
        event)``: an event of the GCS stream; ``on_tick()``: every TICK_S."""
        self._worker = worker
        super().__init__()
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

    def _run(self) -> None:
        self.ident = threading.get_ident()
        try:
            self.run()
        except zmq.ZMQError as err:         # its sockets were closed under it
            if self.running:
                log.warning("core worker I/O thread stopped: %s", err)

    def _on_inbox(self, sock) -> None:
        for _ in range(1000):                # drain a burst, then let the rest run
            try:
                frames = sockets.recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                break
            self.dispatch_frames(frames[0].bytes, frames[1:], sock)
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
        with worker.cond:
            worker.task_manager.leases.granted(msg)

    def handle_release_kept_views(self, req, msg: p.ReleaseKeptViews) -> None:
        """(objects) The store needs room: give back kept views and reserved blocks."""
        self._worker.let_go_of_store()

    def handle_cancel_running(self, req, msg: p.CancelRunning) -> None:
        self._worker.cancel_running(msg.task_id)

    def handle_actor_info(self, req, msg: p.ActorInfo) -> None:
        self._worker.actor_calls.handle_actor_info(msg)
