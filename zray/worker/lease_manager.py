"""Worker leases (a part of the core worker's task manager): a driver
leases a worker from its raylet once, then sends its plain tasks straight
to that worker, so the raylet leaves the per-task path (Ray's answer).

A lease is a TASK_LEASE spec the raylet queues like a task: the worker that
takes it holds the lease's resources, tells the owner ``LeaseGranted``,
then runs the ``ExecuteTask`` messages the owner sends to its direct
ROUTER, one at a time, until the owner sends ``ReturnLease`` (or dies);
then it is idle again and the raylet frees the resources.

It owns: one lease per (resource shape, job), asked for or granted, and
the shapes a raylet refused. A caller may rely on: only a plain task
(normal kind, inline arguments, no scheduling options, not streaming) of
a driver goes on a lease, and only on an idle one (one task in flight per
lease; a busy lease sends the task the raylet's way as before); a lease
idle for ``config.worker_lease_idle_ms`` is returned; when the leased
worker dies its task fails with WorkerCrashedError (and is retried like
any task), when it is force-cancelled with TaskCancelledError. No lease
is held for nothing: one asked for and not seen granted within
``GRANT_WAIT_S`` (its LeaseGranted lost, or the raylet's refusal) is given
up (the raylet ends it if a worker took it), and a ReturnLease the send
queue dropped is sent again each tick until it goes or the worker is gone.
Guarded by the core worker's lock (``cond``); ``*_locked`` methods expect it held.
"""
from __future__ import annotations

import logging
import time

from .._private.pids import pid_alive
from ..broker import protocol as p
from ..config import config

log = logging.getLogger(__name__)

#: a shape the raylet refused (the node can never fit it) is not asked again for this long
REFUSED_RETRY_S = 10.0
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
    def __init__(self, worker, new_task_id, raylet, pending_locked):
        """``worker``: the core worker (its address, sender and routes);
        ``new_task_id()``: a fresh task id (lease ids are task ids);
        ``pending_locked()``: how many tasks this process waits for."""
        self._worker = worker
        self._new_id = new_task_id
        self._raylet = raylet
        self._pending_locked = pending_locked
        self.enabled = worker.mode == "driver" and config.worker_lease_idle_ms > 0
        self._idle_s = config.worker_lease_idle_ms / 1000
        self.by_key: dict[tuple, Lease] = {}
        self.by_id: dict[bytes, Lease] = {}
        self._refused: dict[tuple, float] = {}      # key -> until when not to ask

    # -- sending -------------------------------------------------------------
    def send_locked(self, task):
        """(lock held) Send ``task`` on the idle lease of its shape. Returns
        ``(sent, ask)``: whether it went; a lease spec to send the raylet
        (outside the lock) when none is held or asked for yet."""
        spec = task.spec
        if not self.enabled or not leasable(spec):
            return False, None
        key = (tuple(sorted(spec.resources.items())), spec.job_id)
        lease = self.by_key.get(key)
        if lease is None:
            if self._elsewhere_locked() > 1:
                return False, None     # a burst: the raylet spreads it over the node
            until = self._refused.get(key)
            if until is not None:
                if time.monotonic() < until:
                    return False, None
                del self._refused[key]
            lease = Lease(self._new_id(), key, time.monotonic())
            self.by_key[key] = lease
            self.by_id[lease.lease_id] = lease
            return False, p.SubmitTask(list(p.TaskSpec(
                lease.lease_id, spec.job_id, p.TASK_LEASE, b"", LEASE_NAME, [], [], 0,
                dict(spec.resources), 0, False, list(self._worker.address))))
        if lease.endpoint is None or lease.task is not None or lease.doomed:
            return False, None
        if not self._worker.sender.send(lease.endpoint, p.ExecuteTask(list(spec))):
            self._drop_locked(lease)        # its socket is gone: the raylet's way
            return False, None
        lease.task = task
        task.lease = lease
        return True, None

    def ask(self, message) -> None:
        """Send the raylet a lease request ``send_locked`` made."""
        self._raylet.send(message)

    # -- what the inbox and the task manager tell ---------------------------------
    def granted(self, msg: p.LeaseGranted) -> None:
        """(I/O thread, lock held) A worker took our lease."""
        lease = self.by_id.get(msg.lease_id)
        address = msg.worker_address
        endpoint = self._worker.actor_endpoint(address)
        if lease is None:
            # given up meanwhile (shutdown, refused shape, waited too long): give it back
            stale = Lease(msg.lease_id, None)
            stale.address, stale.endpoint = address, endpoint
            self._drop_locked(stale)
            return
        if lease.address is not None:       # granted twice: the second one goes back
            self._worker.sender.send(endpoint, p.ReturnLease(msg.lease_id))
            return
        lease.address = address
        lease.endpoint = endpoint
        self._now_idle_locked(lease)

    def task_ended_locked(self, task) -> None:
        """(lock held, the task no longer pending) The task on a lease ended
        (results, error, cancel)."""
        lease = task.lease
        task.lease = None
        if lease is not None and lease.task is task:
            lease.task = None
            self._now_idle_locked(lease)

    def _now_idle_locked(self, lease: Lease) -> None:
        """An idle lease is kept for the next task, unless tasks of ours wait
        in the raylet's queue: then its CPU serves them better there."""
        if self._elsewhere_locked() > 0:
            self._drop_locked(lease)
        else:
            lease.idle_since = time.monotonic()

    def _elsewhere_locked(self) -> int:
        """How many of our pending tasks are not on a lease."""
        return self._pending_locked() - sum(1 for lease in self.by_id.values() if lease.task)

    def is_lease(self, task_id: bytes) -> bool:
        return task_id in self.by_id

    def lease_failed_locked(self, msg: p.TaskFailed):
        """(lock held) The raylet says a lease ended: refused, its worker
        died, or it was force-cancelled. Returns the TaskFailed for the task
        in flight on it, or None."""
        lease = self.by_id.get(msg.task_id)
        if lease is None:
            return None
        self._forget_locked(lease)
        if msg.error_type == p.LEASE_REFUSED:
            self._refused[lease.key] = time.monotonic() + REFUSED_RETRY_S
            log.info("no lease for %s: %s", dict(lease.key[0]), msg.message)
        task = lease.task
        if task is None:
            return None
        task.lease = None
        name = task.spec.function_name
        if msg.error_type == "TaskCancelledError":
            return p.TaskFailed(task.spec.task_id, msg.error_type, f"task {name} was cancelled")
        text = msg.message.replace(LEASE_NAME, name)
        return p.TaskFailed(task.spec.task_id, "WorkerCrashedError", text)

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
    def return_idle_locked(self, now: float) -> list:
        """(lock held) Give back the leases idle for ``worker_lease_idle_ms``,
        send again the ReturnLease messages dropped, and give up the leases
        asked for ``GRANT_WAIT_S`` ago and not seen granted. Returns the
        messages for the raylet: the caller sends them with ``ask`` once it
        let go of the lock (a raylet send may wait behind another call)."""
        to_raylet = []
        for lease in list(self.by_id.values()):
            if lease.returning:
                if pid_alive(lease.address.pid):
                    self._drop_locked(lease)
                else:
                    self._forget_locked(lease)      # its worker is gone: nothing to return
            elif lease.address is None:
                if now - lease.asked_at >= GRANT_WAIT_S:
                    to_raylet.append(self._give_up_locked(lease))
            elif lease.task is None and now - lease.idle_since >= self._idle_s:
                self._drop_locked(lease)
        return to_raylet

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
        if lease.key is not None and self.by_key.get(lease.key) is lease:
            del self.by_key[lease.key]
