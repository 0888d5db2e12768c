"""The core worker: what a driver or a worker uses to submit tasks, own
objects, and get values.

Sockets and threads:

* ``raylet`` — an RpcClient (DEALER) to the node's raylet: task submission,
  store requests. Any thread may use it.
* ``gcs`` — an RpcClient to the GCS: functions, jobs, KV.
* ``sender`` — DEALERs to other core workers' inboxes (one-way messages).
* the inbox — a ROUTER other processes send to (task results, object
  requests, borrower notices). Only the I/O thread touches it; it stores what
  arrives and wakes the threads waiting in ``get``/``wait``.

The object table, pending tasks and generator streams are guarded by one lock
(``self.cond``).
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
import threading
import time
import weakref

import zmq

from .. import exceptions as exc
from ..broker import protocol as p
from ..broker import sockets
from ..broker.rpc import RpcClient, Sender
from ..config import config
from ..object_ref import ObjectRef, ObjectRefGenerator
from .._private.session import actor_ipc, inbox_ipc, route
from ..store.arena import Arena
from ..store.spill_file import read_spill_file
from .._private.pids import pid_alive
from . import serialization
from .function_manager import FunctionManager
from .raylet_link import RayletWatch, remove_leftovers
from .actor_calls import ActorCalls, ActorState
from .pending_task import PendingTask
from .reference_table import PENDING, READY, ReferenceTable, actor_of_handle_id
from .streams import GEN_DONE_INDEX, GeneratorState, Streams
from .task_events import TaskEventReporter, error_info

log = logging.getLogger(__name__)



class CoreWorker(ActorCalls, Streams):
    def __init__(self, mode: str, raylet_endpoint: str, session_dir: str,
                 job_id: bytes = b"", worker_id: bytes | None = None,
                 connect_timeout: float | None = None):
        self.mode = mode
        self.worker_id = worker_id or os.urandom(16)
        self.pid = os.getpid()
        self.session_dir = session_dir
        self.job_id = job_id
        self.inbox_endpoint = inbox_ipc(session_dir, self.worker_id)
        self._inbox, _ = sockets.inbox_router(self.inbox_endpoint)
        self._inbox_tcp = None
        self.raylet = RpcClient(raylet_endpoint, config.rpc_timeout_s, "raylet")
        timeout = config.connect_timeout_s if connect_timeout is None else connect_timeout
        try:
            reply = self.raylet.call(
                p.RegisterClient(mode, self.worker_id, self.pid, job_id, self.inbox_endpoint),
                timeout=timeout)
        except TimeoutError:
            self._close_sockets()
            raise ConnectionError(
                f"no raylet answered at {raylet_endpoint} within {timeout:.0f}s") from None
        self.node_id = reply.node_id
        self.node_ip = reply.node_ip
        self.gcs_address = reply.gcs_address
        # storage: rides out a GCS restart (waits, resends), RayError after the timeout
        self.gcs = RpcClient(sockets.tcp_endpoint(reply.gcs_address), config.rpc_timeout_s,
                             "GCS", reconnect_timeout=config.gcs_reconnect_timeout_s,
                             unreachable_error=exc.GcsUnreachableError)
        self._gcs_reconnections = 0
        self.arena = Arena.attach(reply.arena_path)
        self.raylet_watch = RayletWatch(raylet_endpoint, reply.node_id, reply.raylet_pid)
        #: set once the raylet died: every call that needs it raises this
        self.raylet_error: exc.NodeDiedError | None = None
        self._inbox_tcp, tcp = sockets.inbox_router(f"tcp://{self.node_ip}:0")
        self.address = p.Address(tcp, self.worker_id, self.pid, self.node_id)
        self.sender = Sender()
        self._routes: dict = {}
        self.functions = FunctionManager(self.gcs)
        self.task_events = TaskEventReporter(self.gcs.endpoint, self.worker_id, self.node_id,
                                             self.pid)

        self.cond = threading.Condition(threading.Lock())
        self.refs = ReferenceTable()
        self.tasks: dict[bytes, PendingTask] = {}
        self.waiting_on: dict[bytes, list[bytes]] = {}
        self.generators: dict[bytes, GeneratorState] = {}
        self.actors: dict[bytes, ActorState] = {}
        self.dead_nodes: set[bytes] = set()
        self.namespace = ""
        self.actor_id = None                # set in an actor's worker
        self.released_refs: collections.deque = collections.deque()
        self.released_views: collections.deque = collections.deque()
        self.released_generators: collections.deque = collections.deque()
        self.actors_out_of_scope: collections.deque = collections.deque()   # to report
        self.creating: dict = {}        # actor id -> (since, class, resources): not up yet
        self.owned_actors = 0           # live non-detached actors we created
        self._owns_lock = threading.Lock()
        self._told_owns = False
        self._next_creation_check = 0.0
        self.dead_owners: dict[bytes, str] = {}     # worker id -> why (TOPIC_WORKER)
        self._deferred: collections.deque = collections.deque()
        self._views: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._task_counter = itertools.count(1)
        self._id_prefix = self.worker_id[:8]

        # The task this thread is running (workers), for nesting and context.
        self.current = threading.local()
        self.blocked_hook = None            # set by the worker: tell raylet we wait
        self.log_handler = None             # set by the driver: print worker logs
        self.lineage: dict[bytes, PendingTask] = {}   # finished tasks whose results live
                                                      # on other nodes: how to rebuild them
        topics = [p.TOPIC_NODE, p.TOPIC_WORKER] + (
            [p.log_topic(job_id)] if mode == "driver" else [])
        self.pub_address = reply.pub_address        # the GCS event stream
        self._subscriber = sockets.subscriber(reply.pub_address, topics)
        self._running = True
        self._wake_pending = False
        self._io_ident = None
        self._io_thread = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)
        self._io_thread.start()

    # ------------------------------------------------------------------ ids
    def new_task_id(self) -> bytes:
        return self._id_prefix + next(self._task_counter).to_bytes(8, "big")

    @staticmethod
    def return_id(task_id: bytes, index: int) -> bytes:
        return task_id + index.to_bytes(4, "big")

    def endpoint_of(self, address) -> str:
        """Where to send to the core worker at ``address`` from here."""
        key = (address[1], address[3])
        endpoint = self._routes.get(key)
        if endpoint is None:
            endpoint = self._routes[key] = route(address, self.node_id, self.session_dir)
        return endpoint

    def actor_endpoint(self, address) -> str:
        key = (address[1], address[3], "actor")
        endpoint = self._routes.get(key)
        if endpoint is None:
            endpoint = self._routes[key] = route(address, self.node_id, self.session_dir,
                                                 actor_ipc)
        return endpoint

    def owns(self, ref: ObjectRef) -> bool:
        return ref._owner[1] == self.worker_id

    # ------------------------------------------------------------- refs
    def _new_owned_ref(self, object_id: bytes, ret=None, contained=None) -> ObjectRef:
        with self.cond:
            entry = self.refs.add_owned(object_id, ret)
            entry.local = 1
            entry.contained = contained or None
        return ObjectRef(object_id, self.address, self)

    def deserialized_ref(self, object_id: bytes, owner) -> ObjectRef:
        """A ref that arrived inside a value: count it, and if another
        process owns it, tell that owner we borrow it."""
        owner = tuple(owner)
        with self.cond:
            if owner[1] == self.worker_id:
                entry = self.refs.get(object_id)
                if entry is None:       # freed already; the ref can only fail
                    return ObjectRef(object_id, owner, None)
                entry.local += 1
                return ObjectRef(object_id, owner, self)
            entry, new = self.refs.add_borrowed(object_id, owner)
            entry.local += 1
        if new:
            self.sender.send(self.endpoint_of(owner), p.AddBorrower([object_id], self.worker_id))
        return ObjectRef(object_id, owner, self)

    def drain_releases(self) -> None:
        """Apply the refs, views and streams that were garbage collected."""
        while self.released_generators:
            try:
                self.drop_generator(self.released_generators.popleft())
            except IndexError:
                break
        released = self.released_refs
        freed_stored, give_back = [], {}
        if released:
            with self.cond:
                while released:
                    try:
                        object_id = released.popleft()
                    except IndexError:
                        break
                    entry = self.refs.release(object_id, "local")
                    if entry is not None:
                        self._forget(object_id, entry, freed_stored, give_back)
        self._send_frees(freed_stored, give_back)
        views = self.released_views
        if views:
            ids = []
            while views:
                try:
                    ids.append(views.popleft())
                except IndexError:
                    break
            self.raylet.send(p.ReleaseObjects(ids))

    def _forget(self, object_id, entry, freed_stored, give_back) -> None:
        """An entry lost its last hold (lock held): collect what to tell whom."""
        if entry.owned:
            if entry.ret is not None and entry.ret[1] == p.RET_STORED:
                freed_stored.append(object_id)
                if entry.ret[2][0] != self.node_id:
                    self.lineage.pop(object_id[:16], None)
            entry.contained = None
        else:
            if entry.ret is not None and entry.ret[1] == p.RET_STORED:
                pass                    # the owner frees the store copy
            give_back.setdefault(self.endpoint_of(entry.owner), []).append(object_id)
        actor_id = actor_of_handle_id(object_id)
        if actor_id is not None:            # our last handle to it and its calls are done
            if entry.owned:
                self.actors_out_of_scope.append(actor_id)
                self.owned_actors -= 1
            self.forget_actor(actor_id)

    def _send_frees(self, freed_stored, give_back) -> None:
        while self.actors_out_of_scope:
            try:
                actor_id = self.actors_out_of_scope.popleft()
            except IndexError:
                break
            self.gcs.send(p.ReportActorOutOfScope(actor_id))
            self.tell_owns()
        if freed_stored:
            self.raylet.send(p.FreeObjects(freed_stored))
        for endpoint, ids in give_back.items():
            self.sender.send(endpoint, p.RemoveBorrower(ids, self.worker_id))

    def lend(self, refs, borrower_id: bytes) -> None:
        """Refs inside a value sent to ``borrower_id`` stay alive until it
        gives them back (it sends RemoveBorrower when it drops them)."""
        for ref in refs:
            if self.owns(ref):
                with self.cond:
                    entry = self.refs.get(ref._id)
                    if entry is not None:
                        if entry.borrowers is None:
                            entry.borrowers = set()
                        entry.borrowers.add(borrower_id)
            elif ref._owner[1] != borrower_id:
                self.sender.send(self.endpoint_of(ref._owner),
                                 p.AddBorrower([ref._id], borrower_id))

    def _release_submitted(self, object_ids) -> None:
        freed_stored, give_back = [], {}
        with self.cond:
            for object_id in object_ids:
                entry = self.refs.release(object_id, "submitted")
                if entry is not None:
                    self._forget(object_id, entry, freed_stored, give_back)
        self._send_frees(freed_stored, give_back)

    # ------------------------------------------------------------- put
    def put(self, value) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("zray.put() of an ObjectRef is not allowed: pass the ref itself")
        self.check_raylet()
        self.drain_releases()
        return self.put_serialized(serialization.serialize(value))

    def _ret_of(self, object_id: bytes, ser, owner_id: bytes | None = None) -> list:
        """How ``ser`` travels: inline in messages, or written to the store."""
        if ser.size <= config.inline_threshold:
            return [object_id, p.RET_INLINE if ser.kind == 0 else p.RET_ERROR, ser.to_bytes()]
        self.store_put(object_id, ser, owner_id or self.worker_id)
        return [object_id, p.RET_STORED, [self.node_id, ser.size]]

    def store_put(self, object_id: bytes, ser, owner_id: bytes) -> None:
        """Write ``ser`` into this node's store and seal it. A store full of
        pinned or half-written objects is asked again with backoff
        (``object_store_full_delay_ms`` doubling to 1 s) for up to
        ``object_store_full_timeout_s``; then, or at once for an object larger
        than the whole store, ObjectStoreFullError naming who holds the room."""
        create = p.CreateObject(object_id, ser.size, owner_id)
        reply = self.raylet.call(create)
        started = time.monotonic()
        delay = 0.0                     # first retry at once: our own dead views
        while reply.offset == p.CREATE_FULL:
            self.drain_releases()       # our own dead views may be what blocks it
            waited = time.monotonic() - started
            if waited >= config.object_store_full_timeout_s:
                raise exc.ObjectStoreFullError(
                    f"{reply.error} (still full after waiting {waited:.1f}s, "
                    f"object_store_full_timeout_s={config.object_store_full_timeout_s:g})")
            time.sleep(min(delay, config.object_store_full_timeout_s - waited))
            delay = min(max(delay * 2, config.object_store_full_delay_ms / 1000), 1.0)
            reply = self.raylet.call(create)
        if reply.offset == p.CREATE_EXISTS:
            return                      # a retried task's result that is already there
        if reply.offset < 0:
            raise exc.ObjectStoreFullError(reply.error)
        self.arena.write(reply.offset, ser.chunks())
        self.raylet.send(p.SealObject(object_id))

    # ------------------------------------------------------------- submit
    def submit_task(self, function_hash: bytes, function_name: str, args, kwargs,
                    num_returns: int, resources: dict, max_retries: int,
                    retry_exceptions, kind: int = p.TASK_NORMAL, actor_id: bytes = b"",
                    method_name: str = "", options: dict | None = None):
        """Submit a task; returns its ObjectRef(s), or an ObjectRefGenerator.
        Raises NodeDiedError once the raylet of this node died."""
        self.check_raylet()
        self.drain_releases()
        task_id = self.new_task_id()
        arg_entries, held, deps = self._prepare_args(args, kwargs)
        streaming = num_returns == p.STREAMING
        spec = p.TaskSpec(task_id, self.job_id, kind, function_hash, function_name,
                          arg_entries, list(kwargs), num_returns, resources,
                          max_retries, bool(retry_exceptions), list(self.address), 0,
                          actor_id, method_name, options or {})
        if streaming:
            return_ids = [self.return_id(task_id, GEN_DONE_INDEX)]
        else:
            return_ids = [self.return_id(task_id, i + 1) for i in range(num_returns)]
        task = PendingTask(spec, return_ids, held, retry_exceptions)
        with self.cond:
            refs = self._register(task, deps)
            ready = not task.deps
        if self.task_events.enabled:
            info = self._event_info(function_name, kind, actor_id, resources)
            if ready:       # to the raylet at once: reported if it still waits at a flush
                self.task_events.submitted(task_id, 0, p.TS_PENDING_NODE_ASSIGNMENT, info)
            else:
                self.task_events.record(task_id, 0, p.TS_PENDING_ARGS_AVAIL, info)
        if ready:
            self._dispatch(task, first=True)
        if streaming:
            return ObjectRefGenerator(task_id, self, refs[0])
        return refs[0] if num_returns == 1 else refs

    def _register(self, task: PendingTask, deps) -> list:
        """(lock held) Record a submitted task: an owned entry and a ref per
        return, its stream if it streams, and the dependencies it waits for."""
        refs = []
        for object_id in task.return_ids:
            entry = self.refs.add_owned(object_id)
            entry.local = 1
            refs.append(ObjectRef(object_id, self.address, self))
        task_id = task.spec.task_id
        if task.spec.num_returns == p.STREAMING:
            self.generators[task_id] = GeneratorState()
        self.tasks[task_id] = task
        for dep in deps:
            entry = self.refs.get(dep)
            if entry is not None and entry.state == PENDING:
                task.deps.add(dep)
                self.waiting_on.setdefault(dep, []).append(task_id)
        return refs

    def _prepare_args(self, args, kwargs):
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
                    entries.append([p.ARG_VALUE, ser.to_bytes()])
                    continue
                value = self.put_serialized(ser)
                keep.append(value)
            entries.append([p.ARG_REF, value._id, list(value._owner)])
            held.append(value._id)
            if self.owns(value):
                deps.append(value._id)
        if held:
            with self.cond:
                for object_id in held:
                    entry = self.refs.get(object_id)
                    if entry is not None:
                        entry.submitted += 1
        del keep
        return entries, held, deps

    def put_serialized(self, ser) -> ObjectRef:
        object_id = self.new_task_id() + b"\0\0\0\0"
        ret = self._ret_of(object_id, ser)
        return self._new_owned_ref(object_id, ret, ser.contained_refs)

    def _resolve_owned_args(self, task: PendingTask):
        """(lock held) Turn refs to our own objects into values or store ids.
        Returns the error to fail the task with (a failed dependency), or None."""
        args = task.spec.args
        for i, arg in enumerate(args):
            if arg[0] == p.ARG_REF and arg[2][1] == self.worker_id:
                entry = self.refs.get(arg[1])
                if entry is None or entry.ret is None:
                    return exc.ObjectLostError(f"argument object {arg[1].hex()} was lost")
                kind = entry.ret[1]
                if kind == p.RET_INLINE:
                    args[i] = [p.ARG_VALUE, entry.ret[2]]
                elif kind == p.RET_STORED:
                    args[i] = [p.ARG_STORED, arg[1], entry.ret[2][1], entry.ret[2][0]]
                else:
                    return entry.ret[2]          # a failed dependency fails the task
        return None

    def _event_info(self, name: str, kind: int, actor_id: bytes, resources) -> dict:
        """What the first task event of a task submitted here says of it."""
        info = {"name": name, "job_id": self.job_id, "type": kind}
        if resources:
            info["required_resources"] = resources
        if actor_id:
            info["actor_id"] = actor_id
        parent = getattr(self.current, "task_id", None) if self.mode == "worker" else None
        if parent:
            info["parent_task_id"] = parent
        return info

    def _dispatch(self, task: PendingTask, first: bool = False) -> None:
        """Send a task whose dependencies are ready to the raylet (``first``:
        at its submission, which already noted its task event)."""
        if task.spec.kind == p.TASK_ACTOR_METHOD:
            self._pump_actor(task.spec.actor_id)
            return
        with self.cond:
            error = self._resolve_owned_args(task)
            if error is None:
                task.submitted = True
        if error is not None:
            self._fail_task(task.spec.task_id, error)
            return
        if not first and self.task_events.enabled:
            self.task_events.record(task.spec.task_id, task.spec.attempt,
                                    p.TS_PENDING_NODE_ASSIGNMENT)
        self.raylet.send(p.SubmitTask(list(task.spec)))

    def await_ref(self, ref: ObjectRef):
        """An awaitable of the value (for ``await ref`` in async code)."""
        import asyncio
        return asyncio.wrap_future(self.future_of(ref))

    def future_of(self, ref: ObjectRef):
        import concurrent.futures
        future = concurrent.futures.Future()

        def resolve():
            try:
                future.set_result(self.get(ref))
            except BaseException as err:  # noqa: BLE001 — delivered to the awaiter
                future.set_exception(err)
        threading.Thread(target=resolve, daemon=True, name="zray-future").start()
        return future

    # ------------------------------------------------------- task results
    def _on_task_returned(self, msg: p.TaskReturned) -> None:
        self.task_events.done(msg.task_id)
        with self.cond:
            task = self.tasks.get(msg.task_id)
            if task is None:
                self._free_orphans(msg.returns)
                return
            if task.retry_exceptions and not task.cancelled and task.retries_left != 0 \
                    and any(r[1] == p.RET_ERROR for r in msg.returns) \
                    and self._retryable(task, msg.returns):
                task.retries_left -= 1
                spec = task.spec._replace(attempt=task.spec.attempt + 1)
                task.spec = spec
                resubmit = True
            else:
                resubmit = False
                del self.tasks[msg.task_id]
                if task.spec.kind == p.TASK_ACTOR_METHOD:
                    actor = self.actors.get(task.spec.actor_id)
                    if actor is not None:
                        actor.inflight.pop(msg.task_id, None)
                self._complete(msg.returns, task)
        if resubmit:
            if self.task_events.enabled:
                self._record_retry(task)
            self._free_orphans(msg.returns)
            self.raylet.send(p.SubmitTask(list(task.spec)))
        else:
            self._release_submitted(task.held)

    def _record_retry(self, task) -> None:
        """Task events of a task retried after it raised. (The executor
        reports how an attempt ended; the owner only the failures it sees
        itself: a dead worker or node, a cancel, a failed dependency.)"""
        spec = task.spec
        self.task_events.record(spec.task_id, spec.attempt - 1, p.TS_FAILED, {
            "error_type": "TASK_EXECUTION_EXCEPTION", "error_message": ""})
        self.task_events.record(spec.task_id, spec.attempt, p.TS_PENDING_NODE_ASSIGNMENT)

    def _retryable(self, task, returns) -> bool:
        if task.retry_exceptions is True:
            return True
        try:
            err = self._value_of(returns[0], raise_errors=False)
        except Exception:
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, tuple(task.retry_exceptions))

    def _complete(self, returns, task) -> None:
        """Record results (lock held) and wake whoever waits for them."""
        if task.spec.kind == p.TASK_NORMAL and any(
                r[1] == p.RET_STORED and r[2][0] != self.node_id for r in returns):
            self.lineage[task.spec.task_id] = task
        for ret in returns:
            object_id = ret[0]
            entry = self.refs.get(object_id)
            if entry is None:
                self._free_orphans([ret])
                continue
            entry.ret = ret
            entry.state = READY
            if task.spec.num_returns == p.STREAMING:
                gen = self.generators.get(task.spec.task_id)
                if gen is not None:
                    gen.count = self._stream_count(ret)
            self._object_ready(object_id, entry)
        self._wake()

    def _wake(self) -> None:
        """(lock held) Wake the threads waiting for objects. The I/O thread
        wakes them once per batch of messages instead (see _io_loop)."""
        if threading.get_ident() == self._io_ident:
            self._wake_pending = True
        else:
            self.cond.notify_all()

    def _stream_count(self, ret) -> int:
        if ret[1] == p.RET_INLINE:
            return serialization.deserialize(ret[2])[1]
        return 0

    def _object_ready(self, object_id: bytes, entry) -> None:
        """(lock held) Answer remote waiters; dispatch tasks that waited."""
        if entry.remote_waiters:
            for address in entry.remote_waiters:
                self.sender.send(self.endpoint_of(address), p.ObjectValue(object_id, entry.ret))
            entry.remote_waiters = None
        waiting = self.waiting_on.pop(object_id, None)
        if waiting:
            for task_id in waiting:
                task = self.tasks.get(task_id)
                if task is None:
                    continue
                task.deps.discard(object_id)
                if not task.deps:
                    self._deferred.append(task)     # dispatched outside the lock

    def _run_deferred(self) -> None:
        while self._deferred:
            task = self._deferred.popleft()
            if not task.cancelled:
                self._dispatch(task)

    def _free_orphans(self, returns) -> None:
        stored = [r[0] for r in returns if r[1] == p.RET_STORED]
        if stored:
            self.raylet.send(p.FreeObjects(stored))

    def _on_task_failed(self, msg: p.TaskFailed) -> None:
        self.task_events.done(msg.task_id)
        error_cls = exc.BY_NAME.get(msg.error_type, exc.RaySystemError)
        error = error_cls(msg.message)
        with self.cond:
            task = self.tasks.get(msg.task_id)
            if task is None:
                return
            retry = (msg.error_type == "WorkerCrashedError" and not task.cancelled
                     and task.retries_left != 0 and task.spec.num_returns != p.STREAMING)
            if retry:
                task.retries_left -= 1
                task.spec = task.spec._replace(attempt=task.spec.attempt + 1)
        if retry:
            log.info("retrying task %s after: %s", task.spec.function_name, msg.message)
            if self.task_events.enabled:
                self.task_events.record(msg.task_id, task.spec.attempt - 1, p.TS_FAILED,
                                        error_info(error))
                self.task_events.record(msg.task_id, task.spec.attempt,
                                        p.TS_PENDING_NODE_ASSIGNMENT)
            self.raylet.send(p.SubmitTask(list(task.spec)))
            return
        self._fail_task(msg.task_id, error)

    def _fail_task(self, task_id: bytes, error) -> None:
        """Finish a task with ``error`` (an exception or an error blob)."""
        blob = error if isinstance(error, bytes) else \
            serialization.serialize(error, serialization.KIND_ERROR).to_bytes()
        with self.cond:
            task = self.tasks.pop(task_id, None)
            if task is None:
                return
            if self.task_events.enabled:
                self.task_events.done(task_id)
                self.task_events.record(task_id, task.spec.attempt, p.TS_FAILED,
                                        error_info(error))
            if task.spec.kind == p.TASK_ACTOR_METHOD:
                actor = self.actors.get(task.spec.actor_id)
                if actor is not None:
                    actor.inflight.pop(task_id, None)
                    if task in actor.queue:
                        actor.queue.remove(task)
            for dep in task.deps:
                waiting = self.waiting_on.get(dep)
                if waiting and task_id in waiting:
                    waiting.remove(task_id)
            if task.spec.num_returns == p.STREAMING:
                gen = self.generators.get(task_id)
                if gen is not None:     # the error comes after the items received
                    index = gen.received
                    gen.received += 1
                    item_id = self.return_id(task_id, index + 1)
                    entry = self.refs.add_owned(item_id, [item_id, p.RET_ERROR, blob])
                    entry.held = True
                    gen.items[index] = item_id
                returns = [[task.return_ids[0], p.RET_INLINE,
                            serialization.serialize(gen.received if gen else 0).to_bytes()]]
            else:
                returns = [[oid, p.RET_ERROR, blob] for oid in task.return_ids]
            self._complete(returns, task)
        self._release_submitted(task.held)

    # ------------------------------------------------------------- get / wait
    def get(self, refs, timeout=None):
        single = isinstance(refs, ObjectRef)
        if single:
            refs = [refs]
        elif not isinstance(refs, (list, tuple)):
            raise TypeError(f"zray.get() takes an ObjectRef or a list of them, "
                            f"not {type(refs).__name__}")
        for ref in refs:
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"zray.get() takes ObjectRefs, got {type(ref).__name__}: "
                                f"{ref!r:.60}")
        self.drain_releases()
        deadline = None if timeout is None else time.monotonic() + timeout
        rets = self._wait_for(refs, len(refs), deadline, fetch=True)
        if rets is None:
            raise exc.GetTimeoutError(
                f"get timed out after {timeout}s waiting for {len(refs)} object(s)")
        values = [self._value_of(ret) for ret in rets]
        return values[0] if single else values

    def _wait_for(self, refs, num_ready: int, deadline, fetch: bool):
        """Wait until ``num_ready`` of ``refs`` are ready; their rets, or None
        on timeout. ``fetch`` asks owners for borrowed values."""
        requests = []
        with self.cond:
            entries = []
            for ref in refs:
                entry = self.refs.get(ref._id)
                if entry is None:
                    entry = self._entry_for_unknown(ref)
                elif not entry.owned and entry.state == PENDING and not entry.requested:
                    entry.requested = True
                    requests.append(ref)
                entries.append(entry)
            blocked = False
            last_check = time.monotonic()
            pending = [e for e in entries if e.state != READY]
            while True:
                if pending:
                    pending = [e for e in pending if e.state != READY]
                if len(entries) - len(pending) >= num_ready:
                    break
                if self.raylet_error is not None:
                    if blocked:
                        self._set_blocked(False)
                    raise self.raylet_error
                if requests:
                    self.cond.release()
                    try:
                        for ref in requests:
                            self.sender.send(self.endpoint_of(ref._owner),
                                             p.GetObject(ref._id, list(self.address)))
                    finally:
                        self.cond.acquire()
                    requests = []
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if blocked:
                        self._set_blocked(False)
                    return None
                if not blocked and self.blocked_hook is not None:
                    blocked = True
                    self._set_blocked(True)
                if now - last_check > 1.0:
                    last_check = now
                    self._check_owners(refs, entries)
                wait = 1.0 if deadline is None else min(1.0, deadline - now)
                self.cond.wait(wait)
            if blocked:
                self._set_blocked(False)
            return [e.ret if e.state == READY else None for e in entries]

    def _set_blocked(self, blocked: bool) -> None:
        self.cond.release()
        try:
            self.blocked_hook(blocked)
        finally:
            self.cond.acquire()

    def _entry_for_unknown(self, ref):
        """(lock held) A ref whose entry is gone or never counted here."""
        stale = ref._worker is not None and ref._worker is not self
        if self.owns(ref) or stale:
            why = (f"object {ref.hex()} belongs to a zray session that was shut down"
                   if stale else f"object {ref.hex()} was freed: no reference to it was held")
            error = exc.OwnerDiedError(why) if stale else exc.ObjectLostError(why)
            blob = serialization.serialize(error, serialization.KIND_ERROR).to_bytes()
            entry = self.refs.add_owned(ref._id, [ref._id, p.RET_ERROR, blob])
            self.released_refs.append(ref._id)
            entry.local = 1
            return entry
        entry, _ = self.refs.add_borrowed(ref._id, tuple(ref._owner))
        entry.local += 1
        self.released_refs.append(ref._id)
        if not entry.requested:
            entry.requested = True
            self.sender.send(self.endpoint_of(ref._owner),
                             p.GetObject(ref._id, list(self.address)))
        return entry

    def _check_owners(self, refs, entries) -> None:
        """(lock held) Fail borrowed objects whose owner process died."""
        for ref, entry in zip(refs, entries):
            if entry.owned or entry.state == READY:
                continue
            owner = ref._owner
            why = self.dead_owners.get(owner[1])
            if why is None and owner[3] in self.dead_nodes:
                why = f"its node {owner[3].hex()[:12]} died"
            if why is not None:         # told by the GCS (TOPIC_WORKER, TOPIC_NODE)
                self._owner_died_error(ref._id, entry, why)
                continue
            if owner[3] == self.node_id and (not pid_alive(owner[2]) or (
                    owner[2] == self.pid and owner[1] != self.worker_id)):
                blob = serialization.serialize(exc.OwnerDiedError(
                    f"the owner of object {ref.hex()} (pid {owner[2]}) died"),
                    serialization.KIND_ERROR).to_bytes()
                entry.ret = [ref._id, p.RET_ERROR, blob]
                entry.state = READY

    def wait(self, refs, num_returns: int = 1, timeout=None, fetch_local: bool = True):
        if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
            raise TypeError("zray.wait() takes a list of ObjectRefs")
        if len(set(r._id for r in refs)) != len(refs):
            raise ValueError("zray.wait() got the same ObjectRef twice")
        if num_returns < 1 or num_returns > len(refs):
            raise ValueError(f"num_returns must be between 1 and {len(refs)}, "
                             f"got {num_returns}")
        self.drain_releases()
        deadline = None if timeout is None else time.monotonic() + timeout
        rets = self._wait_for(refs, num_returns, deadline, fetch=True)
        self.check_raylet()     # the refs it failed are "ready": say why instead
        if rets is None:
            with self.cond:
                rets = [self.refs.get(r._id).ret if self.refs.get(r._id) else None
                        for r in refs]
        ready, not_ready = [], []
        for ref, ret in zip(refs, rets):
            (ready if ret is not None and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    def _value_of(self, ret, raise_errors: bool = True):
        kind = ret[1]
        if kind == p.RET_STORED:
            _, value = serialization.deserialize(
                self._view(ret[0], source=ret[2][0], size=ret[2][1]))
            return value
        code, value = serialization.deserialize(ret[2])
        if kind == p.RET_ERROR or code == serialization.KIND_ERROR:
            if not raise_errors:
                return value
            if isinstance(value, exc.RayTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def _view(self, object_id: bytes, pinned_at=None, source: bytes = b"", size: int = 0):
        """A read-only view of a stored object, pinned while it lives.
        ``pinned_at`` is ``(offset, size)`` when the raylet pinned it for us."""
        view = self._views.get(object_id)
        if view is not None:
            if pinned_at is not None:
                self.released_views.append(object_id)     # one pin is enough
            return view
        if pinned_at is None:
            pinned_at, view = self._pin_or_read_spilled(object_id, source, size)
            if view is not None:
                self._views[object_id] = view
                return view
        view = self.arena.read_view(pinned_at[0], pinned_at[1])
        weakref.finalize(view, self.released_views.append, object_id)
        self._views[object_id] = view
        return view

    def _pin_or_read_spilled(self, object_id: bytes, source: bytes, size: int = 0):
        """``(location, None)`` once the raylet pinned the object for us, or
        ``(None, private copy)`` when the store is too full of pinned objects
        to restore it from disk and we read its spill file instead (the file
        may vanish meanwhile, restored or spilled again: then ask again).
        An object on another node that this store has no room for yet is
        asked for again with backoff, as in ``store_put``, then
        ObjectStoreFullError. ObjectLostError only when it is nowhere."""
        started, delay, rereads = None, 0.0, 0
        while True:
            reply = self.raylet.call(p.PinObjects([object_id], [source], [size]))
            location, spilled, full = reply.locations[0], reply.spilled[0], reply.full[0]
            if location is not None:
                return location, None
            if full:
                now = time.monotonic()
                started = now if started is None else started
                if now - started >= config.object_store_full_timeout_s:
                    raise exc.ObjectStoreFullError(
                        f"{full} (still full after waiting {now - started:.1f}s, "
                        f"object_store_full_timeout_s={config.object_store_full_timeout_s:g})")
                self.drain_releases()   # our own dead views may be what blocks it
                time.sleep(delay)
                delay = min(max(delay * 2, config.object_store_full_delay_ms / 1000), 1.0)
                continue
            if spilled is None:
                raise exc.ObjectLostError(f"object {object_id.hex()} is not in the object store")
            view = read_spill_file(spilled[0], spilled[1])
            if view is not None:
                return None, view
            rereads += 1
            if rereads >= 5:
                raise exc.ObjectLostError(f"object {object_id.hex()} is spilled but its spill "
                                          f"file kept changing while it was read; try again")

    # ------------------------------------------------------------- cancel
    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        task_id = ref._id[:16]
        with self.cond:
            task = self.tasks.get(task_id)
            if task is None:
                return
            task.cancelled = True
            local = not task.submitted
        if local:
            self._fail_task(task_id, exc.TaskCancelledError(
                f"task {task.spec.function_name} was cancelled before it ran"))
        else:
            self.raylet.send(p.CancelTask(task_id, force))

    # ------------------------------------------------------------- I/O thread
    def _io_loop(self) -> None:
        self._io_ident = threading.get_ident()
        poller = zmq.Poller()
        inboxes = (self._inbox, self._inbox_tcp)
        for inbox in inboxes:
            poller.register(inbox, zmq.POLLIN)
        sub = None
        while self._running:
            if self._subscriber is not None and sub is None:
                sub = self._subscriber
                poller.register(sub, zmq.POLLIN)
            try:
                events = dict(poller.poll(50))
            except zmq.ZMQError:
                break
            for inbox in inboxes:
                if inbox not in events:
                    continue
                for _ in range(1000):
                    try:
                        frames = sockets.recv_frames(inbox, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except zmq.ZMQError:
                        return
                    self._handle_inbox(frames)
            if self._wake_pending:
                self._wake_pending = False
                with self.cond:
                    self.cond.notify_all()
            if sub is not None and sub in events:
                self._handle_sub(sub)
            if self.raylet_error is None:
                error = self.raylet_watch.check()
                if error is not None:
                    self._raylet_died(error)
            try:
                if self.gcs.reconnections() != self._gcs_reconnections:   # storage: the
                    self._gcs_reconnections = self.gcs.reconnections()   # GCS restarted
                    self.watch_actors_again()
                self._run_deferred()
                self.drain_releases()
                self.task_events.maybe_flush(time.monotonic())
                self.check_creations(time.monotonic())
            except Exception:
                if self._running:
                    log.exception("core worker background work failed")

    def _handle_inbox(self, frames) -> None:
        if len(frames) < 3:
            log.warning("inbox: dropped a message of %d frames", len(frames))
            return
        try:
            msg = p.decode(frames[2].buffer)
        except p.ProtocolError as err:
            log.warning("inbox: dropped a message: %s", err)
            return
        handler = self._inbox_handlers.get(type(msg))
        if handler is None:
            log.warning("inbox: dropped a %s: not served here", type(msg).__name__)
            return
        try:
            handler(self, msg)
        except Exception:
            log.exception("inbox: %s failed", type(msg).__name__)

    def _on_get_object(self, msg: p.GetObject) -> None:
        with self.cond:
            entry = self.refs.get(msg.object_id)
            if entry is None or not entry.owned:
                blob = serialization.serialize(exc.ObjectLostError(
                    f"object {msg.object_id.hex()} was freed by its owner"),
                    serialization.KIND_ERROR).to_bytes()
                ret = [msg.object_id, p.RET_ERROR, blob]
            elif entry.state == READY:
                ret = entry.ret
            else:
                if entry.remote_waiters is None:
                    entry.remote_waiters = []
                entry.remote_waiters.append(msg.reply_to)
                return
        self.sender.send(self.endpoint_of(msg.reply_to), p.ObjectValue(msg.object_id, ret))

    def _on_object_value(self, msg: p.ObjectValue) -> None:
        with self.cond:
            entry = self.refs.get(msg.object_id)
            if entry is not None and entry.state == PENDING:
                entry.ret = msg.ret
                entry.state = READY
                self._wake()

    def _on_add_borrower(self, msg: p.AddBorrower) -> None:
        with self.cond:
            for object_id in msg.object_ids:
                entry = self.refs.get(object_id)
                if entry is not None and entry.owned:
                    if entry.borrowers is None:
                        entry.borrowers = set()
                    entry.borrowers.add(msg.borrower)

    def _on_remove_borrower(self, msg: p.RemoveBorrower) -> None:
        freed_stored, give_back = [], {}
        with self.cond:
            for object_id in msg.object_ids:
                entry = self.refs.remove_borrower(object_id, msg.borrower)
                if entry is not None:
                    self._forget(object_id, entry, freed_stored, give_back)
        self._send_frees(freed_stored, give_back)

    def _on_task_infeasible(self, msg: p.TaskInfeasible) -> None:
        print(f"zray: warning: {msg.message}", file=sys.stderr)

    def _on_actor_info_msg(self, msg: p.ActorInfo) -> None:
        self._on_actor_info(msg)

    def _on_cancel_running(self, msg: p.CancelRunning) -> None:
        hook = getattr(self, "cancel_hook", None)
        if hook is not None:
            hook(msg.task_id)


    def subscribe_logs(self, handler) -> None:
        """Have the I/O thread pass this job's worker log lines to ``handler``."""
        self.log_handler = handler

    def _handle_sub(self, sub) -> None:
        for topic, event in sockets.recv_events(sub, 1000):
            try:
                if topic == p.TOPIC_NODE:
                    if event["event"] == "removed":
                        node_id = event["node"]["node_id"]
                        self._node_died(node_id)
                        self._owner_died(b"", node_id, f"its node {node_id.hex()[:12]} died")
                elif topic == p.TOPIC_WORKER:
                    self._owner_died(event["worker_id"], event["node_id"], event["message"])
                elif self.log_handler:
                    pid, ip, lines = event
                    self.log_handler(pid, ip, lines)
            except Exception:
                log.exception("bad event on %r", topic)

    def _on_task_placed(self, msg: p.TaskPlaced) -> None:
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
            self.raylet.send(p.SubmitTask(list(resubmit.spec)))

    def _node_died(self, node_id: bytes) -> None:
        """A node died: retry our tasks that ran there, rebuild (or give up
        on) our objects whose only copy was there."""
        lost_tasks, rebuild, lost = [], [], []
        with self.cond:
            self.dead_nodes.add(node_id)
            for task_id, task in self.tasks.items():
                if task.node == node_id:
                    lost_tasks.append(task_id)
            for object_id, entry in self.refs.entries.items():
                if entry.owned and entry.ret is not None and entry.ret[1] == p.RET_STORED \
                        and entry.ret[2][0] == node_id:
                    task = self.lineage.get(object_id[:16])
                    if task is not None and task.retries_left != 0:
                        rebuild.append(task)
                    else:
                        lost.append(object_id)
            for object_id in lost:
                entry = self.refs.get(object_id)
                entry.ret = [object_id, p.RET_ERROR, serialization.serialize(
                    exc.ObjectLostError(f"object {object_id.hex()} was lost with node "
                                        f"{node_id.hex()[:12]} and cannot be rebuilt"),
                    serialization.KIND_ERROR).to_bytes()]
            for task in {id(t): t for t in rebuild}.values():
                task.node = b""
                task.retries_left -= 1
                task.spec = task.spec._replace(attempt=task.spec.attempt + 1)
                self.tasks[task.spec.task_id] = task
                self.lineage.pop(task.spec.task_id, None)
                for object_id in task.return_ids:
                    entry = self.refs.get(object_id)
                    if entry is not None:
                        entry.ret = None
                        entry.state = PENDING
            self.cond.notify_all()
        for task_id in lost_tasks:
            self._on_task_failed(p.TaskFailed(task_id, "WorkerCrashedError",
                                              f"node {node_id.hex()[:12]} died"))
        for task in {id(t): t for t in rebuild}.values():
            log.info("rebuilding the results of %s lost with a node", task.spec.function_name)
            self.raylet.send(p.SubmitTask(list(task.spec)))

    def _owner_died(self, worker_id: bytes, node_id: bytes, message: str) -> None:
        """(I/O thread) A worker or driver died (``worker_id`` b"": every one
        of ``node_id``): the objects we borrow from it that have no value yet
        become OwnerDiedError, now and when asked for later; it no longer
        borrows what we own."""
        why = message or f"worker {worker_id.hex()[:12]} died"
        if worker_id:
            if len(self.dead_owners) > 100_000:
                self.dead_owners.clear()
            self.dead_owners[worker_id] = why
        freed_stored, give_back = [], {}
        with self.cond:
            for object_id, entry in list(self.refs.entries.items()):
                if entry.owned:         # a dead borrower gives nothing back: drop it
                    if worker_id and entry.borrowers and worker_id in entry.borrowers:
                        gone = self.refs.remove_borrower(object_id, worker_id)
                        if gone is not None:
                            self._forget(object_id, gone, freed_stored, give_back)
                    continue
                if entry.state == READY:
                    continue
                owner = entry.owner
                if (owner[1] == worker_id if worker_id else owner[3] == node_id):
                    self._owner_died_error(object_id, entry, why)
            self.cond.notify_all()
        self._send_frees(freed_stored, give_back)

    @staticmethod
    def _owner_died_error(object_id: bytes, entry, why: str) -> None:
        """(lock held) Make a borrowed entry an OwnerDiedError."""
        entry.ret = [object_id, p.RET_ERROR, serialization.serialize(exc.OwnerDiedError(
            f"the owner of object {object_id.hex()} died, so its value cannot be had: {why}"),
            serialization.KIND_ERROR).to_bytes()]
        entry.state = READY

    def check_raylet(self) -> None:
        """Raise NodeDiedError if this node's raylet died."""
        if self.raylet_error is not None:
            raise self.raylet_error

    def _raylet_died(self, error: exc.NodeDiedError) -> None:
        """(I/O thread) The raylet of this node died: fail every pending task
        and actor call, and wake every waiter, which then raises ``error``."""
        log.error("%s", error)
        self.raylet_error = error
        self.raylet.broken = error          # calls under way raise it too
        with self.cond:
            task_ids = list(self.tasks)
        for task_id in task_ids:
            self._fail_task(task_id, error)
        with self.cond:
            self.cond.notify_all()

    # ------------------------------------------------------------- misc
    def _wait_locked(self, timeout) -> None:
        self.cond.wait(1.0 if timeout is None else timeout)

    def stats(self) -> dict:
        with self.cond:
            return {"objects": len(self.refs), "pending_tasks": len(self.tasks)}

    def shutdown(self) -> None:
        """Stop the I/O thread and close every socket and mapping."""
        if not self._running:
            return
        try:
            self.drain_releases()
            self.raylet.send(p.DisconnectClient(self.worker_id))
        except Exception:
            log.debug("could not say goodbye to the raylet", exc_info=True)
        self._running = False
        self._io_thread.join(timeout=2)
        try:
            self.task_events.close()
        except Exception:
            log.exception("could not send the last task events to the GCS")
        self._close_sockets()
        try:
            self.arena.close()
        except Exception:
            log.exception("could not unmap the object store")
        self.raylet_watch.close()
        if self.raylet_error is not None and self.raylet_watch.gone():
            remove_leftovers(self.arena.path, self.raylet.endpoint)

    def _close_sockets(self) -> None:
        for closer in (getattr(self, "sender", None), getattr(self, "raylet", None),
                       getattr(self, "gcs", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.debug("could not close %r", closer, exc_info=True)
        for sock in (self._inbox, self._inbox_tcp, getattr(self, "_subscriber", None)):
            if sock is not None:
                sock.close(linger=0)
        path = self.inbox_endpoint[len("ipc://"):]
        try:
            os.unlink(path)
        except OSError:
            pass


    _inbox_handlers = {
        p.TaskReturned: _on_task_returned,
        p.TaskFailed: _on_task_failed,
        p.GeneratorItem: Streams._on_generator_item,
        p.GetObject: _on_get_object,
        p.ObjectValue: _on_object_value,
        p.AddBorrower: _on_add_borrower,
        p.RemoveBorrower: _on_remove_borrower,
        p.TaskInfeasible: _on_task_infeasible,
        p.CancelRunning: _on_cancel_running,
        p.ActorInfo: _on_actor_info_msg,
        p.TaskPlaced: _on_task_placed,
    }
