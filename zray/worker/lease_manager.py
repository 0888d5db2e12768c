"""Worker leases (a part of the core worker's task manager): a driver
leases workers from its raylet, then sends its plain tasks straight to
them, so the raylet leaves the per-task path (Ray's answer).

A lease is a TASK_LEASE spec the raylet queues like a task: the worker that
takes it holds the lease's resources, tells the owner ``LeaseGranted``,
then runs the ``ExecuteTask`` messages the owner sends to its direct
ROUTER, one at a time, until the owner sends ``ReturnLease`` (or dies);
then it is idle again and the raylet frees the resources.

It owns, per resource shape and job (a ``Shape``): the leases asked for or
granted, the idle ones, and the tasks queued for a lease. A caller may rely
on: only a plain task (normal kind, inline arguments, no scheduling
options, not streaming) of a driver goes on a lease, one task in flight
per lease (as in Ray: no task waits behind another on a worker while a CPU
is free). A task that finds no idle lease waits in its shape's queue, and
the shape asks for one more lease at a time while tasks wait, so a burst
grows to a lease per CPU the node has free. The raylet grants a lease
only when its node fits it now; otherwise it answers ``LEASE_FULL``: the
queue waits for the shape's leases and asks again after ``FULL_RETRY_S``
(each tick). The queue goes the raylet's way instead (which spreads it
over the cluster, and reports work starved by actors), and so do the
shape's next tasks for ``BUSY_S``, on ``LEASE_FULL`` while the shape holds
no lease, on ``LEASE_BUSY`` (full, but another node has room), on
``LEASE_REFUSED`` (the node can never fit the shape; for
``REFUSED_RETRY_S``) and when a lease asked for is not seen granted within
``GRANT_WAIT_S`` (its LeaseGranted lost: it is given up, and the raylet
ends it if a worker took it). A lease idle for
``config.worker_lease_idle_ms`` is returned, and a ReturnLease the send
queue dropped is sent again each tick until it goes or the worker is gone.
When the leased worker dies its task fails with WorkerCrashedError (and is
retried like any task), when it is force-cancelled with
TaskCancelledError. Guarded by the core worker's lock (``cond``);
``*_locked`` methods expect it held, and the caller sends the messages
and tasks they return for the raylet once it let go of the lock (``ask``;
the task manager's ``submit_to_raylet``). A queued task that is cancelled
or ends stays in its queue, skipped when its turn comes.
"""
from __future__ import annotations

import collections
import logging
import time

from .._private.pids import pid_alive
from ..broker import protocol as p
from ..config import config

log = logging.getLogger(__name__)

#: a shape the raylet refused (the node can never fit it) is not asked again for this long
REFUSED_RETRY_S = 10.0
#: after the raylet said its node is full and another node has room, the
#: shape's tasks go the raylet's way (which spreads them) for this long
BUSY_S = 1.0
#: after the raylet said its node is full, tasks queue for the leases held
#: and a new lease is asked for again no sooner than this
FULL_RETRY_S = 0.05
#: the name lease specs carry (in the raylet's logs and its worker table)
LEASE_NAME = "<worker lease>"
#: a lease asked for and not seen granted for this long is given up (the
#: raylet ends it if a worker took it: its LeaseGranted was lost)
GRANT_WAIT_S = 10.0


class Lease:
    """One lease: asked for (``address`` None), granted, or being returned
    (``returning``: its ReturnLease was dropped, it is sent again)."""
    __slots__ = ("lease_id", "key", "address", "endpoint", "task", "idle_since", "doomed",
                 "asked_at", "returning")

    def __init__(self, lease_id: bytes, key, asked_at: float = 0.0):
        self.lease_id = lease_id
        self.key = key
        self.asked_at = asked_at        # when it was asked for (monotonic)
        self.returning = False
        self.address = None             # the leased worker's Address, once granted
        self.endpoint = None            # its direct ROUTER, once granted
        self.task = None                # the PendingTask in flight on it
        self.idle_since = 0.0
        self.doomed = False             # its worker is being killed (force-cancel): no new task


class Shape:
    """The leases of one (resources, job) shape and the tasks queued for them."""
    __slots__ = ("leases", "idle", "queue", "asking", "not_before", "ask_after")

    def __init__(self):
        self.leases: dict[bytes, Lease] = {}    # asked or granted, by lease id
        self.idle: list[Lease] = []             # granted, no task in flight
        self.queue: collections.deque = collections.deque()   # PendingTasks waiting
        self.asking = 0                         # asked for, not granted yet
        self.not_before = 0.0                   # refused or busy: the raylet's way until then
        self.ask_after = 0.0                    # the node was full: no new lease asked till then


def leasable(spec) -> bool:
    """Whether a resolved task may go on a lease: a plain task of this node
    (no placement group, no scheduling option), every argument inline."""
    if spec.kind != p.TASK_NORMAL or spec.num_returns == p.STREAMING or spec.options:
        return False
    for name in spec.resources:
        if "_group_" in name:
            return False
    return all(type(arg) is p.ValueArg for arg in spec.args)


class LeaseManager:
    def __init__(self, worker, new_task_id, raylet, at_raylet_locked, is_pending=None):
        """``worker``: the core worker (its address, sender and routes);
        ``new_task_id()``: a fresh task id (lease ids are task ids);
        ``at_raylet_locked()``: how many plain tasks of this process went
        the raylet's way and have not ended; ``is_pending(task)``: whether a
        queued task still waits (not ended or cancelled meanwhile)."""
        self._worker = worker
        self._new_id = new_task_id
        self._raylet = raylet
        self._at_raylet_locked = at_raylet_locked
        self._is_pending = is_pending or (lambda task: not task.cancelled)
        self.enabled = worker.mode == "driver" and config.worker_lease_idle_ms > 0
        self._idle_s = config.worker_lease_idle_ms / 1000
        self.shapes: dict[tuple, Shape] = {}
        self.by_id: dict[bytes, Lease] = {}

    # -- sending -------------------------------------------------------------
    def send_locked(self, task):
        """(lock held) Send ``task`` on an idle lease of its shape, or queue
        it for the next one. Returns ``(taken, ask)``: whether the lease
        manager took it (sent or queued; if not, it goes the raylet's way);
        a lease spec to send the raylet (``ask``, outside the lock)."""
        spec = task.spec
        if not self.enabled or not spec.resources or not leasable(spec):
            return False, None      # (a shape that holds nothing would lease a worker a task)
        key = (tuple(sorted(spec.resources.items())), spec.job_id)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = Shape()
        elif shape.not_before:
            if time.monotonic() < shape.not_before:
                return False, None
            shape.not_before = 0.0
        while shape.idle:
            if self._send_on_locked(shape.idle.pop(), task):
                return True, None
        shape.queue.append(task)
        task.queued = True
        return True, self._ask_locked(key, shape)

    def _send_on_locked(self, lease: Lease, task) -> bool:
        if not self._worker.sender.send(lease.endpoint, p.ExecuteTask(list(task.spec))):
            self._drop_locked(lease)        # its socket is gone
            return False
        lease.task = task
        task.lease = lease
        return True

    def _ask_locked(self, key, shape: Shape):
        """A lease request for ``shape`` when its queue needs one more and
        none is asked for yet, else None."""
        if shape.asking or (shape.leases and not shape.queue):
            return None
        if shape.ask_after:
            if time.monotonic() < shape.ask_after:
                return None
            shape.ask_after = 0.0
        lease = Lease(self._new_id(), key, time.monotonic())
        shape.leases[lease.lease_id] = lease
        shape.asking += 1
        self.by_id[lease.lease_id] = lease
        return p.SubmitTask(list(p.TaskSpec(
            lease.lease_id, key[1], p.TASK_LEASE, b"", LEASE_NAME, [], [], 0,
            dict(key[0]), 0, False, list(self._worker.address))))

    def ask(self, message) -> None:
        """Send the raylet a lease request (or cancel) made under the lock."""
        self._raylet.send(message)

    # -- what the inbox and the task manager tell ---------------------------------
    def granted(self, msg: p.LeaseGranted):
        """(I/O thread, lock held) A worker took our lease. Returns a lease
        request for the raylet (tasks still queue), or None."""
        lease = self.by_id.get(msg.lease_id)
        address = msg.worker_address
        endpoint = self._worker.actor_endpoint(address)
        if lease is None:
            # given up meanwhile (shutdown, refused shape, waited too long): give it back
            stale = Lease(msg.lease_id, None)
            stale.address, stale.endpoint = address, endpoint
            self._drop_locked(stale)
            return None
        if lease.address is not None:       # granted twice: the second one goes back
            self._worker.sender.send(endpoint, p.ReturnLease(msg.lease_id))
            return None
        shape = self.shapes[lease.key]     # an asked lease is in its shape's table
        shape.asking -= 1
        lease.address = address
        lease.endpoint = endpoint
        self._now_idle_locked(lease)
        return self._ask_locked(lease.key, shape) if shape.queue else None

    def task_ended_locked(self, task) -> None:
        """(lock held, the task no longer pending) The task on a lease ended
        (results, error, cancel): the lease takes the next queued task."""
        lease = task.lease
        task.lease = None
        if lease is not None and lease.task is task:
            lease.task = None
            self._now_idle_locked(lease)

    def _now_idle_locked(self, lease: Lease) -> None:
        """A lease with no task: it takes the next queued one; else it is
        kept for the next task, unless tasks of ours wait in the raylet's
        queue: then its CPU serves them better there."""
        lease.idle_since = time.monotonic()
        shape = self.shapes.get(lease.key)
        if lease.doomed or shape is None or lease.lease_id not in shape.leases:
            return          # being killed (goes back when idle long enough), or forgotten
        queue = shape.queue
        while queue:
            task = queue.popleft()
            task.queued = False
            if self._is_pending(task):
                if not self._send_on_locked(lease, task):
                    queue.appendleft(task)
                    task.queued = True
                return
        if self._at_raylet_locked() > 0:
            self._drop_locked(lease)
        else:
            shape.idle.append(lease)

    def is_lease(self, task_id: bytes) -> bool:
        return task_id in self.by_id

    def lease_failed_locked(self, msg: p.TaskFailed):
        """(lock held) The raylet says a lease ended: refused, busy, its
        worker died, or it was force-cancelled. Returns ``(failed, flushed)``:
        the TaskFailed for the task in flight on it (or None), and the queued
        tasks to send the raylet's way (outside the lock)."""
        lease = self.by_id.get(msg.task_id)
        if lease is None:
            return None, []
        shape = self.shapes.get(lease.key)
        self._forget_locked(lease)
        flushed = []
        if shape is None:
            pass
        elif msg.error_type == p.LEASE_FULL and any(
                held.address is not None for held in shape.leases.values()):
            shape.ask_after = time.monotonic() + FULL_RETRY_S   # the queue waits for ours
        elif msg.error_type == p.LEASE_FULL:
            # no lease of ours: the raylet's queue (which reports starved work) serves it
            flushed = self._flush_locked(shape, BUSY_S)
        elif msg.error_type in (p.LEASE_REFUSED, p.LEASE_BUSY):
            refused = msg.error_type == p.LEASE_REFUSED
            if refused:
                log.info("no lease for %s: %s", dict(lease.key[0]), msg.message)
            flushed = self._flush_locked(shape, REFUSED_RETRY_S if refused else BUSY_S)
        task = lease.task
        if task is None:
            return None, flushed
        task.lease = None
        name = task.spec.function_name
        if msg.error_type == "TaskCancelledError":
            return p.TaskFailed(task.spec.task_id, msg.error_type,
                                f"task {name} was cancelled"), flushed
        text = msg.message.replace(LEASE_NAME, name)
        return p.TaskFailed(task.spec.task_id, "WorkerCrashedError", text), flushed

    def _flush_locked(self, shape: Shape, seconds: float) -> list:
        """The shape's queued tasks, to send the raylet's way, as its next
        tasks for ``seconds``."""
        shape.not_before = time.monotonic() + seconds
        flushed = [task for task in shape.queue if self._is_pending(task)]
        for task in shape.queue:
            task.queued = False
        shape.queue.clear()
        return flushed

    def cancel(self, task, force: bool) -> None:
        """Cancel a task in flight on a lease: interrupt it in the leased
        worker, or (``force``) have the raylet kill that worker."""
        with self._worker.cond:
            lease = task.lease
            if lease is None or lease.address is None:
                return
            if force:
                # the raylet kills whatever the worker runs when the cancel
                # lands: no later task of ours may go onto this lease
                lease.doomed = True
            lease_id, address = lease.lease_id, lease.address
        if force:
            self._raylet.send(p.CancelTask(lease_id, True))
        else:
            self._worker.send_to(address, p.CancelRunning(task.spec.task_id))

    # -- returning -------------------------------------------------------------
    def return_idle_locked(self, now: float):
        """(lock held) Give back the leases idle for ``worker_lease_idle_ms``,
        send again the ReturnLease messages dropped, give up the leases
        asked for ``GRANT_WAIT_S`` ago and not seen granted (their queue
        goes the raylet's way), and ask for a lease for a queue that has
        none coming. Returns ``(to_raylet, flushed)``: the messages for the
        raylet and the tasks to send its way; the caller sends them once it
        let go of the lock (a raylet send may wait behind another call)."""
        to_raylet, flushed = [], []
        for lease in list(self.by_id.values()):
            if lease.returning:
                if pid_alive(lease.address.pid):
                    self._drop_locked(lease)
                else:
                    self._forget_locked(lease)      # its worker is gone: nothing to return to
            elif lease.address is None:
                if now - lease.asked_at >= GRANT_WAIT_S:
                    shape = self.shapes.get(lease.key)
                    to_raylet.append(self._give_up_locked(lease))
                    if shape is not None:
                        flushed += self._flush_locked(shape, BUSY_S)
            elif lease.task is None and now - lease.idle_since >= self._idle_s:
                self._drop_locked(lease)
        for key, shape in list(self.shapes.items()):
            while shape.queue and not self._is_pending(shape.queue[0]):
                shape.queue.popleft().queued = False
            if shape.queue:
                ask = self._ask_locked(key, shape)      # none coming: ask
                if ask is not None:
                    to_raylet.append(ask)
            elif not shape.leases and shape.not_before <= now:
                del self.shapes[key]
        return to_raylet, flushed

    def _give_up_locked(self, lease: Lease) -> p.CancelTask:
        """A lease asked for long ago and not granted: forget it. The message
        returned, sent to the raylet, drops it from its queue, or ends it if a
        worker took it (a lost LeaseGranted), so its CPU is not held for nothing."""
        log.info("lease %s for %s not granted after %.0fs: given up",
                 lease.lease_id.hex()[:12], dict(lease.key[0]), GRANT_WAIT_S)
        self._forget_locked(lease)
        return p.CancelTask(lease.lease_id, False)

    def return_all_locked(self) -> None:
        """(lock held) Give back every lease (at shutdown); asked ones are
        given back when granted (or dropped with this driver's job)."""
        for lease in list(self.by_id.values()):
            if lease.address is not None:
                self._drop_locked(lease)
            else:
                self._forget_locked(lease)
        self.shapes.clear()
        self.enabled = False

    def _drop_locked(self, lease: Lease) -> None:
        """Return a granted lease to its worker; if the send queue drops the
        ReturnLease, keep it (``returning``) to send again next tick."""
        self._forget_locked(lease)
        if self._worker.sender.send(lease.endpoint, p.ReturnLease(lease.lease_id)):
            return
        if not lease.returning:
            log.info("lease %s: ReturnLease not sent (the worker's queue is full), sent "
                     "again next tick", lease.lease_id.hex()[:12])
        lease.returning = True
        self.by_id[lease.lease_id] = lease

    def _forget_locked(self, lease: Lease) -> None:
        self.by_id.pop(lease.lease_id, None)
        shape = self.shapes.get(lease.key) if lease.key is not None else None
        if shape is None or shape.leases.pop(lease.lease_id, None) is None:
            return
        if lease.address is None:
            shape.asking -= 1
        elif lease in shape.idle:
            shape.idle.remove(lease)
