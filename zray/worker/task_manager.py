"""The task manager (a part of the core worker): the tasks this process
submitted and has not seen finish, their dependencies, their retries, and
the lineage that rebuilds results lost with a node.

It owns: pending tasks (``tasks``), which pending task waits for which owned
object (``waiting_on``), finished tasks whose results live on other nodes
(``lineage``), the nodes known dead, and the task-id counter. Retries are
decided in one place (``_retry``): a task that raised (with
``retry_exceptions``), whose worker crashed, whose node died, or whose
result was lost is resubmitted while ``PendingTask.take_retry`` allows. A
caller may rely on: every submitted task ends exactly once, with its
results or an error in each of its return objects. A driver's plain task
goes straight to a worker it leased when one is idle (``leases``, see
lease_manager.py), else to the raylet. Guarded by the core worker's lock
(``cond``); ``*_locked`` methods expect it held.
"""
from __future__ import annotations

import collections
import itertools
import logging
import time

from .. import exceptions as exc
from ..broker import protocol as p
from ..config import config
from ..object_ref import ObjectRef
from . import serialization
from .lease_manager import LeaseManager
from .object_getter import error_return
from .pending_task import PendingTask, return_id
from .reference_table import PENDING, READY
from .task_events import error_info

log = logging.getLogger(__name__)
_time = time.time
_monotonic = time.monotonic


class TaskManager:
    def __init__(self, cond, worker, references, getter, streams, raylet, task_events,
                 pump_actor, actor_call_ended_locked):
        """``streams``: the generator streams; actor calls go to their actor,
        not to the raylet: ``pump_actor(actor_id)`` sends the calls queued
        for it, ``actor_call_ended_locked(task, failed)`` (lock held) forgets
        one."""
        self.cond = cond
        self._worker = worker
        self._in_worker = worker.mode == "worker"      # (not a driver): tasks have parents
        self.address = worker.address
        self.node_id = worker.node_id
        self.worker_id = worker.worker_id
        self.references = references
        self.refs = references.refs
        self.getter = getter
        self.streams = streams
        self._raylet = raylet
        self.task_events = task_events
        self._pump_actor = pump_actor
        self._actor_call_ended_locked = actor_call_ended_locked
        self.tasks: dict[bytes, PendingTask] = {}
        self.waiting_on: dict[bytes, list[bytes]] = {}
        self.lineage: dict[bytes, PendingTask] = {}   # finished tasks whose results live
                                                      # on other nodes: how to rebuild them
        self.dead_nodes: set[bytes] = set()
        self._deferred: collections.deque = collections.deque()
        self._task_counter = itertools.count(1)
        self._id_prefix = worker.worker_id[:8]
        self.wake_locked = None             # set by the core worker: wake get/wait
        self._at_raylet = 0                 # plain tasks sent the raylet's way, not ended
        self.leases = LeaseManager(worker, self.new_task_id, raylet, lambda: self._at_raylet,
                                   self._waits_for_lease)

    def _waits_for_lease(self, task: PendingTask) -> bool:
        """(lock held) Whether a task queued for a lease still waits to run."""
        return not task.cancelled and self.tasks.get(task.spec.task_id) is task

    # -- ids -----------------------------------------------------------------
    def new_task_id(self) -> bytes:
        return self._id_prefix + next(self._task_counter).to_bytes(8, "big")

    # -- submitting ------------------------------------------------------------
    def prepare_args(self, args, kwargs):
        """Arg entries for the spec, the ids the task holds until it ends,
        and the owned ids it must wait for.

        Small plain values travel inline; large ones (and values holding refs)
        are put first and passed like refs; refs to our own objects are turned
        into values or store ids when the task is dispatched."""
        entries, held, deps, keep = [], [], [], []
        for index, value in enumerate(itertools.chain(args, kwargs.values())):
            if not isinstance(value, ObjectRef):
                try:
                    ser = serialization.serialize(value)
                except TypeError as err:
                    name = (f"argument {index}" if index < len(args) else
                            f"keyword argument {list(kwargs)[index - len(args)]!r}")
                    raise TypeError(f"{name} of the task: {err}") from None
                if ser.size <= config.inline_threshold and not ser.contained_refs:
                    entries.append(p.ValueArg(p.ARG_VALUE, ser.to_bytes()))
                    continue
                value = self._worker.put_serialized(ser)
                keep.append(value)
            entries.append(p.RefArg(p.ARG_REF, value._id, list(value._owner)))
            held.append(value._id)
            if self.references.owns(value):
                deps.append(value._id)
        if held:
            self.references.hold_submitted(held)
        del keep
        return entries, held, deps

    def new_task(self, spec, retry_exceptions, held, deps,
                 then_locked=None) -> tuple[PendingTask, list]:
        """Record a submitted task: an owned ref per return (its "done"
        object for a generator) and the owned objects it waits for;
        ``then_locked(task)`` runs under the same hold of the lock.
        Returns the task and its refs."""
        if spec.num_returns == p.STREAMING:
            return_ids = [return_id(spec.task_id, self.streams.DONE_INDEX)]
        else:
            return_ids = [return_id(spec.task_id, i + 1) for i in range(spec.num_returns)]
        task = PendingTask(spec, return_ids, held, retry_exceptions)
        refs = []
        add_owned, address, worker = self.refs.add_owned, self.address, self._worker
        with self.cond:
            for object_id in return_ids:
                add_owned(object_id).local = 1
                refs.append(ObjectRef(object_id, address, worker))
            task_id = spec.task_id
            if spec.num_returns == p.STREAMING:
                self.streams.open_locked(task_id)
            self.tasks[task_id] = task
            for dep in deps:
                entry = self.refs.get(dep)
                if entry is not None and entry.state == PENDING:
                    task.deps.add(dep)
                    self.waiting_on.setdefault(dep, []).append(task_id)
            if then_locked is not None:
                then_locked(task)
        if self.task_events.enabled and (not task.deps or spec.kind == p.TASK_ACTOR_METHOD):
            # task events: reported if it still waits a while later (a task
            # waiting for its arguments its submitter reports at once)
            if self._in_worker:
                task.parent = self._worker.current_task_id()
            task.since = _monotonic()       # (a flush may look at it from now on)
        return task, refs

    def parent_task_id(self):
        """The task that submits a task now (in a worker), else None."""
        return self._worker.current_task_id() if self._in_worker else None

    def event_info(self, spec, parent) -> dict:
        """What the first task event of a task submitted here (from task
        ``parent``, or None) says of it; an actor call is named by its method."""
        actor_call = spec.kind == p.TASK_ACTOR_METHOD
        info = {"name": spec.method_name if actor_call else spec.function_name,
                "job_id": spec.job_id, "type": spec.kind}
        if spec.resources:
            info["required_resources"] = spec.resources
        if spec.actor_id:
            info["actor_id"] = spec.actor_id
        if parent:
            info["parent_task_id"] = parent
        return info

    def waiting_events(self, since: float, limit: int) -> list:
        """(task events) A TaskEvent for each task submitted here (stamped
        by ``new_task``) before ``since`` (``time.monotonic()``) whose first
        attempt still waits, each once, the oldest first, at most ``limit``
        (the others at a later call): an actor call waits for its actor
        (PENDING_ARGS_AVAIL), a task for a node (PENDING_NODE_ASSIGNMENT)."""
        events, infos = [], {}      # one info dict per kind of task
        to_wall = _time() - _monotonic()
        for task in list(self.tasks.values()):      # (a copy: other threads add)
            at = task.since
            if at is None:          # not stamped, or reported
                continue
            if at > since or len(events) >= limit:  # (tasks are in the order submitted)
                break
            task.since = None
            spec = task.spec
            if spec.attempt:        # retried: its attempts are reported as they go
                continue
            key = (spec.function_name, spec.method_name, spec.kind, spec.job_id, spec.actor_id,
                   task.parent, tuple(sorted(spec.resources.items())))
            info = infos.get(key)
            if info is None:
                info = infos[key] = self.event_info(spec, task.parent)
            state = (p.TS_PENDING_ARGS_AVAIL if spec.kind == p.TASK_ACTOR_METHOD
                     else p.TS_PENDING_NODE_ASSIGNMENT)
            events.append(p.TaskEvent(spec.task_id, 0, state, at + to_wall, info))
        return events

    def resolve_owned_args_locked(self, task: PendingTask):
        """(lock held) Turn refs to our own objects into values or store ids.
        Returns the error to fail the task with (a failed dependency), or None."""
        args = task.spec.args
        for i, arg in enumerate(args):
            # the owner's own spec: its args are the records prepare_args made
            if type(arg) is not p.RefArg or arg.owner_address.worker_id != self.worker_id:
                continue
            entry = self.refs.get(arg.object_id)
            if entry is None or entry.ret is None:
                return exc.ObjectLostError(f"argument object {arg.object_id.hex()} was lost")
            ret = entry.ret
            if ret.kind == p.RET_INLINE:
                args[i] = p.ValueArg(p.ARG_VALUE, ret.payload)
            elif ret.kind == p.RET_STORED:
                where = ret.stored_at
                # a StoredArg without its offset: the raylet that pins it appends that
                args[i] = [p.ARG_STORED, arg.object_id, where.size, where.node_id]
            else:
                return ret.payload          # a failed dependency fails the task
        return None

    def dispatch(self, task: PendingTask, first: bool = False) -> None:
        """Send a task whose dependencies are ready on a lease (or queue it
        for one), else to the raylet (``first``: at its submission, which
        already noted its task event)."""
        if task.spec.kind == p.TASK_ACTOR_METHOD:
            self._pump_actor(task.spec.actor_id)
            return
        sent, ask = False, None
        with self.cond:
            error = self.resolve_owned_args_locked(task)
            if error is None:
                task.submitted = True
                if self.leases.enabled:
                    sent, ask = self.leases.send_locked(task)
        if error is not None:
            self.fail_task(task.spec.task_id, error)
            return
        if not first and self.task_events.enabled:
            self.task_events.record(task.spec.task_id, task.spec.attempt,
                                    p.TS_PENDING_NODE_ASSIGNMENT)
        if not sent:
            self._to_raylet(task)
        if ask is not None:
            self.leases.ask(ask)

    def _to_raylet(self, task: PendingTask) -> None:
        """Send a task the raylet's way (counted while it has not ended:
        an idle lease goes back while such tasks wait there)."""
        if task.spec.kind == p.TASK_NORMAL and not task.via_raylet:
            with self.cond:
                if self.tasks.get(task.spec.task_id) is task:
                    task.via_raylet = True
                    self._at_raylet += 1
        self._raylet.send(p.SubmitTask(list(task.spec)))

    def _ended_locked(self, task: PendingTask) -> None:
        """(lock held) A task left ``tasks``: it no longer counts anywhere."""
        if task.via_raylet:
            task.via_raylet = False
            self._at_raylet -= 1
        if task.lease is not None:
            self.leases.task_ended_locked(task)

    def submit_to_raylet(self, tasks) -> None:
        """Send the raylet's way the tasks a lease queue gave up (outside
        the lock); one cancelled meanwhile fails here instead."""
        for task in tasks:
            if task.cancelled:
                self.fail_task(task.spec.task_id, exc.TaskCancelledError(
                    f"task {task.spec.function_name} was cancelled before it ran"))
            else:
                self._to_raylet(task)

    def run_deferred(self) -> None:
        """Dispatch the tasks whose last dependency became ready."""
        while self._deferred:
            task = self._deferred.popleft()
            if not task.cancelled:
                self.dispatch(task)

    # -- retries: the one place ------------------------------------------------
    def _retry(self, task: PendingTask, why: str, error=None) -> None:
        """Resubmit ``task`` whose retry was taken (``take_retry``): its
        failed attempt ends with ``error`` in the task events."""
        if why:
            log.info("retrying task %s after: %s", task.spec.function_name, why)
        if self.task_events.enabled:
            spec = task.spec
            info = error_info(error) if error is not None else {
                "error_type": "TASK_EXECUTION_EXCEPTION", "error_message": ""}
            self.task_events.record(spec.task_id, spec.attempt - 1, p.TS_FAILED, info)
            self.task_events.record(spec.task_id, spec.attempt, p.TS_PENDING_NODE_ASSIGNMENT)
        self._to_raylet(task)

    def _retryable(self, task, returns) -> bool:
        """Whether the error a task raised is one it retries on."""
        if task.retry_exceptions is True:
            return True
        try:
            err = self.getter.value_of(returns[0], raise_errors=False)
        except Exception:
            log.debug("could not read the error of task %s", task.spec.function_name,
                      exc_info=True)
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, tuple(task.retry_exceptions))

    # -- results -----------------------------------------------------------------
    def handle_task_returned(self, msg: p.TaskReturned) -> None:
        returns = msg.results
        with self.cond:
            task = self.tasks.get(msg.task_id)
            if task is None:
                self._free_orphans(returns)
                return
            resubmit = (task.retry_exceptions and not task.cancelled
                        and task.retries_left != 0
                        and any(r.kind == p.RET_ERROR for r in returns)
                        and self._retryable(task, returns) and task.take_retry())
            if not resubmit:
                del self.tasks[msg.task_id]
                self._ended_locked(task)
                if task.spec.kind == p.TASK_ACTOR_METHOD:
                    self._actor_call_ended_locked(task, False)
                self._complete_locked(returns, task)
            elif task.lease is not None:
                self.leases.task_ended_locked(task)
        if resubmit:
            self._free_orphans(returns)
            self._retry(task, "")
        elif task.held:         # a task without ref arguments holds nothing
            self.references.release_submitted(task.held)

    def _complete_locked(self, returns, task) -> None:
        """(lock held) Record results and wake whoever waits for them."""
        if task.spec.kind == p.TASK_NORMAL and any(
                r.kind == p.RET_STORED and r.stored_at.node_id != self.node_id
                for r in returns):
            self.lineage[task.spec.task_id] = task
        streaming = task.spec.num_returns == p.STREAMING
        for ret in returns:
            object_id = ret.object_id
            entry = self.refs.get(object_id)
            if entry is None:
                self._free_orphans([ret])
                continue
            entry.ret = ret
            entry.state = READY
            if streaming:
                self.streams.ended_locked(task.spec.task_id, ret)
            self.object_ready_locked(object_id, entry)
        self.wake_locked()

    def object_ready_locked(self, object_id: bytes, entry) -> None:
        """(lock held) Answer remote waiters; dispatch tasks that waited."""
        self.getter.answer_waiters_locked(object_id, entry)
        waiting = self.waiting_on.pop(object_id, None)
        if waiting:
            for task_id in waiting:
                task = self.tasks.get(task_id)
                if task is None:
                    continue
                task.deps.discard(object_id)
                if not task.deps:
                    self._deferred.append(task)     # dispatched outside the lock

    def _free_orphans(self, returns) -> None:
        stored = [r.object_id for r in returns if r.kind == p.RET_STORED]
        if stored:
            self._raylet.send(p.FreeObjects(stored))

    def free_orphan(self, ret: p.Return) -> None:
        """A result nobody waits for any more: free its store copy."""
        self._free_orphans([ret])

    def is_pending(self, task_id: bytes) -> bool:
        return task_id in self.tasks

    def handle_task_failed(self, msg: p.TaskFailed) -> None:
        if self.leases.is_lease(msg.task_id):
            with self.cond:         # a lease ended: so did the task in flight on it
                msg, flushed = self.leases.lease_failed_locked(msg)
            self.submit_to_raylet(flushed)  # refused or busy: queued tasks go the raylet's way
            if msg is None:
                return
        error_cls = exc.BY_NAME.get(msg.error_type, exc.RaySystemError)
        error = error_cls(msg.message)
        with self.cond:
            task = self.tasks.get(msg.task_id)
            if task is None:
                return
            retry = (msg.error_type == "WorkerCrashedError" and not task.cancelled
                     and task.spec.num_returns != p.STREAMING and task.take_retry())
        if retry:
            self._retry(task, msg.message, error)
            return
        self.fail_task(msg.task_id, error)

    def fail_task(self, task_id: bytes, error) -> None:
        """Finish a task with ``error`` (an exception or an error blob)."""
        blob = error if isinstance(error, bytes) else serialization.error_bytes(error)
        with self.cond:
            task = self.tasks.pop(task_id, None)
            if task is None:
                return
            self._ended_locked(task)
            if self.task_events.enabled:
                self.task_events.record(task_id, task.spec.attempt, p.TS_FAILED,
                                        error_info(error))
            if task.spec.kind == p.TASK_ACTOR_METHOD:
                self._actor_call_ended_locked(task, True)
            for dep in task.deps:
                waiting = self.waiting_on.get(dep)
                if waiting and task_id in waiting:
                    waiting.remove(task_id)
            if task.spec.num_returns == p.STREAMING:
                count = self.streams.failed_locked(task_id, blob)
                returns = [p.Return(task.return_ids[0], p.RET_INLINE,
                                    serialization.serialize(count).to_bytes())]
            else:
                returns = [p.Return(oid, p.RET_ERROR, blob) for oid in task.return_ids]
            self._complete_locked(returns, task)
        self.references.release_submitted(task.held)

    def fail_all(self, error) -> None:
        """Fail every pending task with ``error``."""
        with self.cond:
            task_ids = list(self.tasks)
        for task_id in task_ids:
            self.fail_task(task_id, error)

    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        task_id = ref._id[:16]
        with self.cond:
            task = self.tasks.get(task_id)
            if task is None:
                return
            task.cancelled = True
            local = not task.submitted or task.queued      # queued: skipped in its turn
            leased = task.lease is not None
        if local:
            self.fail_task(task_id, exc.TaskCancelledError(
                f"task {task.spec.function_name} was cancelled before it ran"))
        elif leased:
            self.leases.cancel(task, force)
        else:
            self._raylet.send(p.CancelTask(task_id, force))

    # -- nodes -------------------------------------------------------------------
    def handle_task_placed(self, msg: p.TaskPlaced) -> None:
        resubmit = None
        with self.cond:
            task = self.tasks.get(msg.task_id)
            if task is not None:
                task.node = msg.node_id
                if msg.node_id in self.dead_nodes:
                    # a raylet that had not heard of the death yet sent it there
                    task.node = b""
                    resubmit = task
        if resubmit is not None:
            self._to_raylet(resubmit)

    def node_died(self, node_id: bytes) -> None:
        """A node died: retry our tasks that ran there, rebuild (or give up
        on) our objects whose only copy was there. Once per node (a get may
        learn of a death before the GCS's notice comes)."""
        lost_tasks, rebuild, lost = [], {}, []
        with self.cond:
            if node_id in self.dead_nodes:
                return
            self.dead_nodes.add(node_id)
            for task_id, task in self.tasks.items():
                if task.node == node_id:
                    lost_tasks.append(task_id)
            for object_id, entry in self.refs.entries.items():
                ret = entry.ret
                if entry.owned and ret is not None and ret.kind == p.RET_STORED \
                        and ret.stored_at.node_id == node_id:
                    task = self.lineage.get(object_id[:16])
                    if task is not None and task.retries_left != 0:
                        rebuild[id(task)] = task
                    else:
                        lost.append(object_id)
            for object_id in lost:
                self.refs.get(object_id).ret = error_return(object_id, exc.ObjectLostError(
                    f"object {object_id.hex()} was lost with node {node_id.hex()[:12]} "
                    f"and cannot be rebuilt"))
            for task in rebuild.values():
                task.node = b""
                task.take_retry()
                self.tasks[task.spec.task_id] = task
                self.lineage.pop(task.spec.task_id, None)
                for object_id in task.return_ids:
                    entry = self.refs.get(object_id)
                    if entry is not None:
                        entry.ret = None
                        entry.state = PENDING
            self.cond.notify_all()
        for task_id in lost_tasks:
            self.handle_task_failed(p.TaskFailed(task_id, "WorkerCrashedError",
                                                 f"node {node_id.hex()[:12]} died"))
        for task in rebuild.values():
            log.info("rebuilding the results of %s lost with a node", task.spec.function_name)
            self._to_raylet(task)

    def forget_lineage_locked(self, object_id: bytes, ret) -> None:
        """(lock held) An owned object was freed: no need to rebuild it."""
        if ret is not None and ret.kind == p.RET_STORED and ret.stored_at.node_id != self.node_id:
            self.lineage.pop(object_id[:16], None)

    def __len__(self):
        return len(self.tasks)
