"""The core worker: what a driver or a worker uses to submit tasks, own
objects, and get values — a small facade over its parts, as in Ray:

* ``references`` — the reference counter (reference_counter.py): the
  reference table, borrowing, freeing;
* ``task_manager`` — pending tasks, retries, lineage (task_manager.py);
* ``actor_calls`` — the actor task submitter (actor_task_submitter.py);
* ``getter`` — get/wait, views of stored objects, fetching (object_getter.py);
* ``streams`` — generator streams, the owner's side (streams.py);
* ``inbox`` — the inbox dispatcher, the I/O thread (inbox.py).

Sockets and threads:

* ``raylet`` — an RpcClient (DEALER) to the node's raylet: task submission,
  store requests. Any thread may use it.
* ``gcs`` — an RpcClient to the GCS: functions, jobs, KV.
* ``sender`` — DEALERs to other core workers' inboxes (one-way messages).
* the inboxes — ROUTERs other processes send to (task results, object
  requests, borrower notices). Only the thread holding the inbox's baton
  reads them: the I/O thread, or in a driver a thread waiting in
  ``get``/``wait`` (it handles its own reply, see inbox.py).

The parts' tables are guarded by one lock (``cond``), which also wakes the
threads waiting in ``get``/``wait``. The worker process (executor.py) uses
only the public methods below.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from .. import exceptions as exc
from ..broker import protocol as p
from ..broker import sockets
from ..broker.rpc import RpcClient, Sender
from ..config import config
from ..object_ref import ObjectRef, ObjectRefGenerator
from .._private.session import actor_ipc, inbox_ipc, route
from ..store.arena import Arena
from . import serialization
from .actor_task_submitter import ActorTaskSubmitter
from .function_manager import FunctionManager
from .inbox import InboxDispatcher
from .object_getter import ObjectGetter
from .store_writer import StoreWriter
from .pending_task import return_id
from .raylet_link import RayletWatch, remove_leftovers
from .reference_counter import ReferenceCounter
from .reference_table import actor_of_handle_id
from .streams import GEN_DONE_INDEX, Streams
from .task_manager import TaskManager
from .task_events import TaskEventReporter

log = logging.getLogger(__name__)

__all__ = ["CoreWorker", "GEN_DONE_INDEX"]


class CoreWorker:
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
        self._subscriber = None
        self.inbox = None
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
        self._routes: dict = {}             # address (as a tuple) -> inbox endpoint
        self._actor_routes: dict = {}       # address (as a tuple) -> actor endpoint
        self.functions = FunctionManager(self.gcs)
        self.task_events = TaskEventReporter(self.gcs.endpoint, self.worker_id, self.node_id,
                                             self.pid)
        self.namespace = ""
        self.actor_id = None                # set in an actor's worker
        self.actor_reconstructed = False    # an actor's worker started by a restart
        self.current = threading.local()    # the task this thread runs (workers)
        self.log_handler = None             # set by the driver: print worker logs
        self._cancel_hook = None            # set by the worker: interrupt a task

        # the parts
        self.cond = threading.Condition(threading.Lock())
        self.references = ReferenceCounter(self.cond, self, self.send_to, self.raylet,
                                           self._on_freed_locked)
        self.getter = ObjectGetter(self.cond, self, self.references, self.raylet, self.arena,
                                   self.send_to, lambda: self.raylet_error)
        self.store_writer = StoreWriter(self.raylet, self.arena, self._let_go_of_views)
        self.streams = Streams(self.cond, self, self.references)
        self.task_manager = TaskManager(
            self.cond, self, self.references, self.getter, self.streams, self.raylet,
            self.task_events, lambda actor_id: self.actor_calls.pump(actor_id),
            lambda task, failed: self.actor_calls.call_ended_locked(task, failed))
        self.task_manager.wake_locked = self._wake_locked
        self.task_events.waiting_events = self.task_manager.waiting_events
        self.getter.wait_locked = self.wait_locked
        self.actor_calls = ActorTaskSubmitter(self.cond, self, self.references,
                                              self.task_manager, self.getter, self.gcs,
                                              self.raylet, self.sender, self)
        # what ObjectRef and ObjectRefGenerator append to when collected
        self.released_refs = self.references.released
        self.released_generators = self.streams.released

        topics = [p.TOPIC_NODE, p.TOPIC_WORKER] + (
            [p.log_topic(job_id)] if mode == "driver" else [])
        self.pub_address = reply.pub_address        # the GCS event stream
        self._subscriber = sockets.subscriber(reply.pub_address, topics)
        self._wake_pending = False
        self.inbox = InboxDispatcher(self, (self._inbox, self._inbox_tcp), self._subscriber,
                                     self._after_burst, self._on_event, self._tick,
                                     cond=self.cond, self_read=mode == "driver")
        self._running = True
        self.inbox.start()

    # ------------------------------------------------------------ the parts' tables
    @property
    def refs(self):
        """The reference table (read it holding ``cond``)."""
        return self.references.refs

    @property
    def actors(self) -> dict:
        """What this process knows of the actors it calls (hold ``cond``)."""
        return self.actor_calls.actors

    # ------------------------------------------------------------------ ids, routes
    def new_task_id(self) -> bytes:
        return self.task_manager.new_task_id()

    @staticmethod
    def return_id(task_id: bytes, index: int) -> bytes:
        """The object id of return ``index`` (1-based) of ``task_id``."""
        return return_id(task_id, index)

    def endpoint_of(self, address) -> str:
        """Where to send to the core worker at ``address`` from here."""
        key = tuple(address)
        endpoint = self._routes.get(key)
        if endpoint is None:
            endpoint = self._routes[key] = route(p.Address(*address), self.node_id,
                                                 self.session_dir)
        return endpoint

    def actor_endpoint(self, address) -> str:
        """Where to send calls to the actor served at ``address``."""
        key = tuple(address)
        endpoint = self._actor_routes.get(key)
        if endpoint is None:
            endpoint = self._actor_routes[key] = route(p.Address(*address), self.node_id,
                                                       self.session_dir, actor_ipc)
        return endpoint

    def forget_actor_route(self, address) -> None:
        """Close our socket to an actor process that is gone."""
        self.sender.forget(self.actor_endpoint(address))
        self._actor_routes.pop(tuple(address), None)

    def send_to(self, address, message) -> None:
        """A one-way message to the core worker at ``address`` (never blocks)."""
        self.sender.send(self.endpoint_of(address), message)

    def owns(self, ref: ObjectRef) -> bool:
        return self.references.owns(ref)

    # ------------------------------------------------------------- the worker process
    def register_executor_hooks(self, blocked, cancel) -> None:
        """(the worker process) ``blocked(flag)``: a get/wait starts or stops
        blocking this worker; ``cancel(task_id)`` (I/O thread): interrupt the
        task if it runs here."""
        self.getter.set_blocked_hook(blocked)
        self._cancel_hook = cancel

    def cancel_running(self, task_id: bytes) -> None:
        hook = self._cancel_hook
        if hook is not None:
            hook(task_id)

    def enter_task(self, spec) -> None:
        """This thread now runs ``spec`` (for nested submits and the context)."""
        self.current.task_id = spec.task_id
        self.current.spec = spec

    def leave_task(self) -> None:
        self.current.task_id = None
        self.current.spec = None

    def current_task_id(self) -> bytes | None:
        return getattr(self.current, "task_id", None)

    def current_spec(self):
        return getattr(self.current, "spec", None)

    def become_actor(self, spec) -> None:
        """This process hosts the actor ``spec`` creates; a restart of it
        (attempt > 0) is what ``was_current_actor_reconstructed`` reports."""
        self.actor_id = spec.actor_id
        self.actor_reconstructed = spec.attempt > 0

    def bind_job(self, job_id: bytes, namespace: str | None) -> None:
        """The job (and its namespace, if known) of the task about to run."""
        self.job_id = job_id
        if namespace is not None:
            self.namespace = namespace

    def return_of(self, object_id: bytes, ser, owner_id: bytes | None = None) -> p.Return:
        """How ``ser`` travels to its owner: inline in messages, or written
        to this node's store (``owner_id`` owns it there)."""
        if ser.size <= config.inline_threshold:
            return p.Return(object_id, p.RET_INLINE if ser.kind == 0 else p.RET_ERROR,
                            ser.to_bytes())
        self.store_put(object_id, ser, owner_id or self.worker_id)
        return p.Return(object_id, p.RET_STORED, p.StoredAt(self.node_id, ser.size))

    def stored_view(self, object_id: bytes, pinned_at=None, source: bytes = b""):
        """A read-only view of a stored object (see ObjectGetter.view)."""
        return self.getter.view(object_id, pinned_at, source=source)

    # ------------------------------------------------------------- refs
    def deserialized_ref(self, object_id: bytes, owner) -> ObjectRef:
        return self.references.deserialized_ref(object_id, owner)

    def lend(self, refs, borrower_id: bytes) -> None:
        self.references.lend(refs, borrower_id)

    def drain_releases(self) -> None:
        """Apply the refs, views and streams that were garbage collected."""
        self.streams.drain()
        self.references.drain()
        self.getter.drain()

    def _on_freed_locked(self, object_id: bytes, entry):
        """(lock held) An entry lost its last hold (see ReferenceCounter)."""
        self.getter.forget_locked(object_id)    # objects: its view is no longer kept
        if entry.owned:
            self.task_manager.forget_lineage_locked(object_id, entry.ret)
        actor_id = actor_of_handle_id(object_id)
        if actor_id is not None:            # our last handle to it and its calls are done
            return self.actor_calls.handle_released_locked(actor_id, entry.owned)
        return None

    # ------------------------------------------------------------- put
    def put(self, value) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("zray.put() of an ObjectRef is not allowed: pass the ref itself")
        self.check_raylet()
        self.drain_releases()
        return self.put_serialized(serialization.serialize(value))

    def put_serialized(self, ser) -> ObjectRef:
        object_id = self.new_task_id() + b"\0\0\0\0"
        ret = self.return_of(object_id, ser)
        return self.references.new_owned_ref(object_id, ret, ser.contained_refs)

    def store_put(self, object_id: bytes, ser, owner_id: bytes) -> None:
        """Write ``ser`` into this node's store and seal it (see StoreWriter.put)."""
        self.store_writer.put(object_id, ser, owner_id)

    def _let_go_of_views(self) -> None:
        """The store is full: stop keeping views, release the unused ones."""
        self.getter.let_go()
        self.drain_releases()

    def let_go_of_store(self) -> None:
        """(the raylet asked: the store needs room) Give back kept views and
        reserved blocks."""
        self.store_writer.release_all()
        self._let_go_of_views()

    # ------------------------------------------------------------- submit
    def submit_task(self, function_hash: bytes, function_name: str, args, kwargs,
                    num_returns: int, resources: dict, max_retries: int,
                    retry_exceptions, kind: int = p.TASK_NORMAL, actor_id: bytes = b"",
                    method_name: str = "", options: dict | None = None):
        """Submit a task; returns its ObjectRef(s), or an ObjectRefGenerator.
        Raises NodeDiedError once the raylet of this node died."""
        self.check_raylet()
        self.drain_releases()
        tasks = self.task_manager
        task_id = tasks.new_task_id()
        arg_entries, held, deps = tasks.prepare_args(args, kwargs)
        spec = p.TaskSpec(task_id, self.job_id, kind, function_hash, function_name,
                          arg_entries, list(kwargs), num_returns, resources,
                          max_retries, bool(retry_exceptions), list(self.address), 0,
                          actor_id, method_name, options or {})
        task, refs = tasks.new_task(spec, retry_exceptions, held, deps)
        ready = not task.deps
        if not ready and self.task_events.enabled:     # (new_task stamped a ready one)
            self.task_events.record(task_id, 0, p.TS_PENDING_ARGS_AVAIL,
                                    tasks.event_info(spec, tasks.parent_task_id()))
        if ready:
            tasks.dispatch(task, first=True)
        if num_returns == p.STREAMING:
            return ObjectRefGenerator(task_id, self, refs[0])
        return refs[0] if num_returns == 1 else refs

    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        self.task_manager.cancel(ref, force)

    # -- actors (see ActorTaskSubmitter) --------------------------------------
    def submit_actor_task(self, actor_id: bytes, method_name: str, args, kwargs,
                          num_returns: int, max_task_retries: int, handle_ref=None):
        """Call an actor method (see ActorTaskSubmitter.submit_actor_task).
        Raises NodeDiedError once the raylet of this node died."""
        self.check_raylet()
        self.drain_releases()
        return self.actor_calls.submit_actor_task(actor_id, method_name, args, kwargs,
                                                  num_returns, max_task_retries, handle_ref)

    def actor_creation_spec(self, *args, **kwargs):
        return self.actor_calls.actor_creation_spec(*args, **kwargs)

    def own_actor_handle(self, actor_id: bytes) -> ObjectRef:
        return self.actor_calls.own_actor_handle(actor_id)

    def borrow_actor_handle(self, actor_id: bytes, owner) -> ObjectRef | None:
        return self.actor_calls.borrow_actor_handle(actor_id, owner)

    def watch_creation(self, actor_id: bytes, class_name: str, resources: dict,
                       keep=()) -> None:
        self.actor_calls.watch_creation(actor_id, class_name, resources, keep)

    def actor_killed(self, actor_id: bytes) -> None:
        self.actor_calls.actor_killed(actor_id)

    # ------------------------------------------------------------- get / wait
    def get(self, refs, timeout=None):
        self.actor_calls.flush()        # actor calls: what waits in an outbox goes now
        self.drain_releases()
        return self.getter.get(refs, timeout)

    def wait(self, refs, num_returns: int = 1, timeout=None, fetch_local: bool = True):
        self.actor_calls.flush()
        self.drain_releases()
        return self.getter.wait(refs, num_returns, timeout, fetch_local)

    def next_generator_item(self, task_id: bytes, index: int):
        """The ref of item ``index`` of a stream, or None past its end."""
        self.actor_calls.flush()        # actor calls: the stream's own call may wait there
        return self.streams.next_item(task_id, index)

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

    # ------------------------------------------------------------- I/O thread
    def _wake_locked(self) -> None:
        """(lock held) Wake the threads waiting for objects. The thread that
        reads the inboxes wakes them once per burst of messages instead (see
        _after_burst); a waiting thread that reads them is interrupted."""
        inbox = self.inbox
        reader = inbox.reader
        if reader == threading.get_ident():
            self._wake_pending = True
            return
        self.cond.notify_all()
        if reader is not None and reader != inbox.ident:
            inbox.interrupt()

    def wait_locked(self, timeout: float) -> None:
        """(lock held) Wait at most ``timeout`` for the tables to change
        (a waiting thread of the driver reads the inboxes itself, see
        InboxDispatcher.read_locked); the caller re-checks what it waits for."""
        self.inbox.read_locked(timeout)

    def wake(self) -> None:
        """Wake the threads waiting for objects."""
        with self.cond:
            self._wake_locked()

    def generator_item(self, msg: p.GeneratorItem) -> None:
        """(I/O thread) An item of a stream we own arrived."""
        if self.streams.item_arrived(msg, self.task_manager.is_pending):
            self.wake()
        else:
            self.task_manager.free_orphan(msg.returned)

    def _flush_wakes(self) -> None:
        """(I/O thread) Wake the waiters once for what it recorded."""
        if self._wake_pending:
            self._wake_pending = False
            with self.cond:
                self.cond.notify_all()

    def _after_burst(self) -> None:
        """(I/O thread) After a burst of inbox messages: wake the waiters
        once, send the tasks whose dependencies arrived."""
        self._flush_wakes()
        try:
            self.task_manager.run_deferred()
        except Exception:
            log.exception("could not send the tasks whose arguments arrived")
        self.actor_calls.flush()        # actor calls: replies came, the next calls go
        self._flush_wakes()

    def _tick(self) -> None:
        """(I/O thread, every TICK_S) The background work."""
        if not self._running:
            return
        if self.raylet_error is None:
            error = self.raylet_watch.check()
            if error is not None:
                self._raylet_died(error)
        if self.gcs.reconnections() != self._gcs_reconnections:   # storage: the
            self._gcs_reconnections = self.gcs.reconnections()   # GCS restarted
            self.actor_calls.watch_actors_again()
        self.task_manager.run_deferred()
        self.drain_releases()
        now = time.monotonic()
        self.store_writer.tick(now)
        leases = self.task_manager.leases
        if leases.by_id or leases.shapes:           # task path: idle leases go back
            with self.cond:
                to_raylet, flushed = leases.return_idle_locked(now)
            for message in to_raylet:
                leases.ask(message)
            self.task_manager.submit_to_raylet(flushed)
        self.task_events.maybe_flush(now)
        self.actor_calls.check_creations(now)
        self.actor_calls.flush()        # actor calls: none waits longer than a tick
        self._flush_wakes()

    def subscribe_logs(self, handler) -> None:
        """Have the I/O thread pass this job's worker log lines to ``handler``."""
        self.log_handler = handler

    def _on_event(self, topic, event) -> None:
        """(I/O thread) An event of the GCS stream."""
        if topic == p.TOPIC_NODE:
            if event.event == p.NODE_REMOVED:
                node_id = event.node.node_id
                self.task_manager.node_died(node_id)
                self._owner_died(b"", node_id, f"its node {node_id.hex()[:12]} died")
        elif topic == p.TOPIC_WORKER:
            self._owner_died(event.worker_id, event.node_id, event.message)
        elif self.log_handler:
            self.log_handler(event.pid, event.node_ip, event.lines)
        self._flush_wakes()

    def _owner_died(self, worker_id: bytes, node_id: bytes, message: str) -> None:
        """(I/O thread) A worker or driver died (``worker_id`` b"": every one
        of ``node_id``): the objects we borrow from it that have no value yet
        become OwnerDiedError; it no longer borrows what we own."""
        why = message or f"worker {worker_id.hex()[:12]} died"
        after = []
        with self.cond:
            if not worker_id:
                self.getter.dead_nodes.add(node_id)
            self.getter.owner_died_locked(worker_id, node_id, why)
            if worker_id:
                self.references.drop_dead_borrower_locked(worker_id, after)
            self.cond.notify_all()
        self.references.run_after(after)

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
        self.task_manager.fail_all(error)
        with self.cond:
            self.cond.notify_all()

    # ------------------------------------------------------------- misc
    def stats(self) -> dict:
        with self.cond:
            return {"objects": len(self.references), "pending_tasks": len(self.task_manager)}

    def shutdown(self) -> None:
        """Stop the I/O thread and close every socket and mapping."""
        if not self._running:
            return
        try:
            self.actor_calls.flush()                # actor calls: the last ones go too
            self.drain_releases()
            with self.cond:                         # task path: leased workers go back
                self.task_manager.leases.return_all_locked()
            self.raylet.send(p.DisconnectClient(self.worker_id))
        except Exception:
            log.debug("could not say goodbye to the raylet", exc_info=True)
        self._running = False
        self.inbox.stop()
        self.inbox.join(timeout=2)
        if threading.current_thread() is threading.main_thread():
            self.inbox.restore_signal_handler()
        with self.cond:                     # a thread in get may be reading the inboxes
            readers_gone = self.inbox.wait_idle_locked(timeout=2)
        if not readers_gone:
            log.warning("a thread still reads the inboxes at shutdown: they are left open")
        try:
            self.task_events.close()
        except Exception:
            log.exception("could not send the last task events to the GCS")
        self._close_sockets(inboxes=readers_gone)
        try:
            self.arena.close()
        except Exception:
            log.exception("could not unmap the object store")
        self.raylet_watch.close()
        if self.raylet_error is not None and self.raylet_watch.gone():
            remove_leftovers(self.arena.path, self.raylet.endpoint)

    def _close_sockets(self, inboxes: bool = True) -> None:
        """Close every socket; the inboxes and the GCS subscriber only if
        ``inboxes`` (not while another thread may still poll them)."""
        for closer in (getattr(self, "sender", None), getattr(self, "raylet", None),
                       getattr(self, "gcs", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.debug("could not close %r", closer, exc_info=True)
        if inboxes:
            for sock in (self._inbox, self._inbox_tcp, self._subscriber):
                if sock is not None:
                    sock.close(linger=0)
            if self.inbox is not None:
                self.inbox.close()
        path = self.inbox_endpoint[len("ipc://"):]
        try:
            os.unlink(path)
        except OSError as err:
            log.debug("could not remove the inbox socket file %s: %s", path, err)
