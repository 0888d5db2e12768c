"""The actor task submitter (a part of the core worker): calling actors,
the caller's side. Each actor's calls queue here and go straight to the
actor's worker in submission order; the GCS tells us (WatchActor) where the
actor is and when it restarts or dies.

It owns: what this process knows of each actor it calls or created
(``ActorState``: state, address, queued and in-flight calls), the actors it
created that are not up yet (to warn when no node can host them), and how
many live non-detached actors it owns. A caller may rely on: calls from this
process run in submission order; a call in flight when its actor restarts is
resent while it has retries, else fails with ActorDiedError; when the last
handle to an actor this process created is gone here and in every borrower,
and no call through one is pending, the GCS is told it is out of scope; a
call submitted while an earlier one to the same actor has not returned may
wait in the actor's outbox to go with the next ones (one ExecuteCalls
message), at most until a reply comes, a get/wait, a full batch or the I/O
thread's next tick (``TICK_S``).
Guarded by the core worker's lock (``cond``); ``*_locked`` methods expect it
held.
"""
from __future__ import annotations

import collections
import itertools
import logging
import sys
import threading
import time

from .. import exceptions as exc
from ..broker import protocol as p
from ..object_ref import ObjectRef, ObjectRefGenerator
from . import serialization
from .pending_task import PendingTask
from .reference_table import actor_handle_id

_NONE = serialization.serialize(None).to_bytes()
#: an actor this process created that no node can host is reported after this long
UNPLACED_WARNING_S = 10.0
#: calls submitted while an earlier one to the same actor is on its way wait in the
#: actor's outbox and go together, in one ExecuteCalls message, at most this many
MAX_BATCH_CALLS = 64
#: ... and at most about this many bytes of arguments
MAX_BATCH_BYTES = 256 * 1024

log = logging.getLogger(__name__)


class ActorState:
    """What a caller knows of one actor: where it is and the calls it owes."""
    __slots__ = ("actor_id", "state", "address", "incarnation", "queue", "inflight",
                 "death_message", "death_blob", "keep", "endpoint", "outbox", "outbox_bytes")

    def __init__(self, actor_id: bytes):
        self.actor_id = actor_id
        self.state = p.ACTOR_PENDING
        self.address: list = []
        self.incarnation = 0
        self.queue: collections.deque = collections.deque()
        self.inflight: dict[bytes, PendingTask] = {}
        self.death_message = ""
        self.death_blob = b""
        self.keep = None        # refs in its constructor's arguments, until it is up
        self.endpoint = None    # where its calls go (from address), once known
        self.outbox: list = []  # calls taken to send (in inflight too), not sent yet
        self.outbox_bytes = 0

    def death_error(self, in_flight: bool = False):
        cause = None
        if self.death_blob:
            try:
                cause = serialization.deserialize(self.death_blob)[1]
            except Exception:
                log.warning("the error that killed actor %s cannot be read", self.actor_id.hex(),
                            exc_info=True)
                cause = None
        if cause is not None:
            text = f"The actor died because of an error raised in its constructor: {cause}"
        elif in_flight and self.state != p.ACTOR_DEAD:
            text = "The actor died while running this call, and the call has no retries left"
        else:
            text = f"The actor died: {self.death_message or 'it is no longer running'}"
        return exc.ActorDiedError(text, cause)


class ActorTaskSubmitter:
    def __init__(self, cond, worker, references, tasks, getter, gcs, raylet, sender, routes):
        """``tasks``: the TaskManager; ``routes``: the core worker's routing
        (``actor_endpoint(address)``, ``forget_actor_route(address)``)."""
        self.cond = cond
        self._worker = worker
        self.address = worker.address
        self.references = references
        self.refs = references.refs
        self.tasks = tasks
        self.getter = getter
        self._gcs = gcs
        self._raylet = raylet
        self._sender = sender
        self._routes = routes
        self.actors: dict[bytes, ActorState] = {}
        self.creating: dict = {}        # actor id -> (since, class, resources): not up yet
        self.owned_actors = 0           # live non-detached actors we created
        self._owns_lock = threading.Lock()
        self._told_owns = False
        self._next_creation_check = 0.0
        self._out_of_scope: collections.deque = collections.deque()   # to report
        self._held: set = set()         # actors whose outbox holds calls (guarded by cond)

    # -- creation ----------------------------------------------------------
    def actor_creation_spec(self, actor_id: bytes, class_hash: bytes, class_name: str,
                            args, kwargs, resources: dict, options: dict):
        """The task that runs an actor's constructor, and the refs (and actor
        handles) inside its arguments, which the caller keeps alive until the
        actor is up (see watch_creation). Its arguments travel by value (refs
        resolved now), so the GCS can rerun it on a restart."""
        entries, contained = [], []
        for index, value in enumerate(itertools.chain(args, kwargs.values())):
            if isinstance(value, ObjectRef):
                value = self._worker.get(value)
            try:
                ser = serialization.serialize(value)
                contained.extend(ser.contained_refs)
                entries.append(p.ValueArg(p.ARG_VALUE, ser.to_bytes()))
            except TypeError as err:
                name = (f"argument {index}" if index < len(args) else
                        f"keyword argument {list(kwargs)[index - len(args)]!r}")
                raise TypeError(f"{name} of {class_name}(): {err}") from None
        worker = self._worker
        return p.TaskSpec(self.tasks.new_task_id(), worker.job_id, p.TASK_ACTOR_CREATION,
                          class_hash, class_name, entries, list(kwargs), 0, resources, 0,
                          False, list(self.address), 0, actor_id, "__init__",
                          options), contained

    # -- lifetimes: an actor's handles are counted like ObjectRefs ---------
    def own_actor_handle(self, actor_id: bytes) -> ObjectRef:
        """The counted reference behind the first handle of an actor this
        process created. When no reference to it is left, here or in any
        borrower, and no call through one is pending, the GCS is told the
        actor is out of scope (ReportActorOutOfScope) and ends it."""
        object_id = actor_handle_id(actor_id)
        ref = self.references.new_owned_ref(object_id,
                                            p.Return(object_id, p.RET_INLINE, _NONE))
        with self.cond:
            self.owned_actors += 1
        self.tell_owns()
        return ref

    def handle_released_locked(self, actor_id: bytes, owned: bool):
        """(lock held) The last reference to an actor's handles here is gone;
        returns what to do once the lock is released."""
        if owned:
            self._out_of_scope.append(actor_id)
            self.owned_actors -= 1
        self.forget_actor_locked(actor_id)
        return self._report_out_of_scope if owned else None

    def _report_out_of_scope(self) -> None:
        while self._out_of_scope:
            try:
                actor_id = self._out_of_scope.popleft()
            except IndexError:
                break
            self._gcs.send(p.ReportActorOutOfScope(actor_id))
            self.tell_owns()

    def tell_owns(self) -> None:
        """(a pooled worker) Tell the raylet when we start or stop owning
        actors: it does not stop an idle worker whose actors would die with it."""
        if self._worker.mode != "worker":
            return
        with self._owns_lock:
            owns = self.owned_actors > 0
            if owns != self._told_owns:
                self._told_owns = owns
                self._raylet.send(p.WorkerOwns(self._worker.worker_id, owns))

    def borrow_actor_handle(self, actor_id: bytes, owner) -> ObjectRef | None:
        """A counted reference to another process's actor handle (its owner
        learns of us, as of any borrower); None for a detached actor."""
        if not owner:
            return None
        return self.references.deserialized_ref(actor_handle_id(actor_id), owner)

    def watch_creation(self, actor_id: bytes, class_name: str, resources: dict,
                       keep=()) -> None:
        """Follow an actor this process created (the GCS tells us when it is
        up), holding ``keep`` (the refs in its arguments) until then: if it is
        still not placed after UNPLACED_WARNING_S because no node has what it
        asks for, print a warning naming what is missing."""
        with self.cond:
            actor = self.actors.get(actor_id)
            if actor is None:
                actor = self.actors[actor_id] = ActorState(actor_id)
            actor.keep = list(keep) or None
            self.creating[actor_id] = (time.monotonic(), class_name, dict(resources))
        self._gcs.send(p.WatchActor(actor_id, self.address.endpoint))

    def check_creations(self, now: float) -> None:
        """(I/O thread, cheap) Warn of the actors created here that wait too long."""
        if not self.creating or now < self._next_creation_check:
            return
        self._next_creation_check = now + 1.0
        due = []
        with self.cond:
            for actor_id, (since, name, resources) in list(self.creating.items()):
                actor = self.actors.get(actor_id)
                if actor is None or actor.state != p.ACTOR_PENDING:
                    del self.creating[actor_id]
                elif now - since >= UNPLACED_WARNING_S:
                    del self.creating[actor_id]
                    if not any("_group_" in k for k in resources):   # not a pending group's
                        due.append((actor_id, name, resources, now - since))
        if due:     # asks the GCS: not on the I/O thread
            threading.Thread(target=self._warn_unplaced, args=(due,), daemon=True,
                             name="zray-unplaced").start()

    def _warn_unplaced(self, due) -> None:
        try:
            nodes = [n for n in self._gcs.call(p.GetNodes()).nodes if n.alive]
        except Exception as err:    # noqa: BLE001 — a warning must not fail anything
            log.warning("could not ask the GCS why actors wait to be placed: %s", err)
            return
        for actor_id, name, resources, waited in due:
            if any(all(n.resources.get(k, 0.0) + 1e-9 >= v for k, v in resources.items())
                   for n in nodes):
                continue            # a node can host it: its raylet warns if it starves
            missing = sorted({k for k, v in resources.items()
                              if not any(n.resources.get(k, 0.0) + 1e-9 >= v
                                         for n in nodes)})
            text = (f"actor {name} ({actor_id.hex()[:12]}) cannot be scheduled: it requires "
                    f"{resources}, and the cluster does not have the resources {missing} "
                    f"on any of its {len(nodes)} live node(s) (waited {waited:.0f}s). It "
                    f"waits until a node that has them joins; ask for less, or add such "
                    f"a node")
            log.warning("%s", text)
            print(f"zray: warning: {text}", file=sys.stderr)

    # -- calls -------------------------------------------------------------
    def submit_actor_task(self, actor_id: bytes, method_name: str, args, kwargs,
                          num_returns: int, max_task_retries: int, handle_ref=None):
        """Call an actor method: queued per actor, sent in submission order.
        The call holds ``handle_ref`` (the handle's counted reference) until
        its result is in, so the actor outlives its pending calls."""
        tasks = self.tasks
        task_id = tasks.new_task_id()
        arg_entries, held, deps = tasks.prepare_args(args, kwargs)
        hold_handle = handle_ref is not None and handle_ref._worker is self._worker
        spec = p.TaskSpec(task_id, self._worker.job_id, p.TASK_ACTOR_METHOD, b"", method_name,
                          arg_entries, list(kwargs), num_returns, {}, max_task_retries,
                          False, list(self.address), 0, actor_id, method_name, {})
        watch, ready = [], []

        def enqueue_locked(task):
            # one hold of the lock per call: count the handle, queue the call
            # and, when it is the only one and the actor is up, take it to send
            if hold_handle:
                entry = self.refs.get(handle_ref._id)
                if entry is not None:
                    entry.submitted += 1
                    task.held.append(handle_ref._id)
            actor = self.actors.get(actor_id)
            if actor is None:
                actor = self.actors[actor_id] = ActorState(actor_id)
                watch.append(actor_id)
            actor.queue.append(task)
            if actor.state == p.ACTOR_ALIVE and len(actor.queue) == 1 and not task.deps:
                ready.append(self._take_sendable_locked(actor))
        task, refs = tasks.new_task(spec, False, held, deps, enqueue_locked)
        if watch:       # the GCS answers with where it is, then each change
            self._gcs.send(p.WatchActor(actor_id, self.address.endpoint))
        elif ready:
            self._fail_taken(ready[0])
        else:
            self.pump(actor_id)
        if num_returns == p.STREAMING:
            return ObjectRefGenerator(task_id, self._worker, refs[0])
        return refs[0] if num_returns == 1 else refs

    def pump(self, actor_id: bytes) -> None:
        """Send the actor's queued calls, in order, while it is alive and the
        call at the head has its arguments ready."""
        fails = []
        with self.cond:
            actor = self.actors.get(actor_id)
            if actor is None:
                return
            if actor.state == p.ACTOR_DEAD:
                fails = [(t, actor.death_error()) for t in actor.queue]
                actor.queue.clear()
            elif actor.state == p.ACTOR_ALIVE:
                fails = self._take_sendable_locked(actor)
            else:
                return
        self._fail_taken(fails)

    def _take_sendable_locked(self, actor: ActorState) -> list:
        """(lock held, the actor alive) Take its queued calls from the head
        while their arguments are ready into its outbox, and send the outbox
        now unless a call sent earlier has not returned yet (then the calls
        wait for ``flush``: the next reply, get/wait, a full batch or the
        I/O thread's tick). Returns ``[(task, error)]`` to fail once the lock
        is released."""
        fails = []
        queue, outbox = actor.queue, actor.outbox
        while queue and not queue[0].deps:
            task = queue.popleft()
            if task.cancelled:
                continue
            error = self.tasks.resolve_owned_args_locked(task)
            if error is not None:
                fails.append((task, error))
                continue
            task.submitted = True
            actor.inflight[task.spec.task_id] = task
            outbox.append(task)
            for arg in task.spec.args:
                if arg[0] == p.ARG_VALUE:
                    actor.outbox_bytes += len(arg[1])
        if outbox:
            if (len(actor.inflight) == len(outbox) or len(outbox) >= MAX_BATCH_CALLS
                    or actor.outbox_bytes >= MAX_BATCH_BYTES):
                self._send_outbox_locked(actor)
            else:
                self._held.add(actor)
        return fails

    def _send_outbox_locked(self, actor: ActorState) -> None:
        """(lock held: calls leave in the order they were taken) Send the
        actor's outbox: one call as ExecuteTask, several as one ExecuteCalls."""
        outbox = actor.outbox
        actor.outbox, actor.outbox_bytes = [], 0
        self._held.discard(actor)
        endpoint = actor.endpoint
        if endpoint is None:
            endpoint = actor.endpoint = self._routes.actor_endpoint(actor.address)
        if len(outbox) == 1:
            payload = p.encode(p.ExecuteTask(list(outbox[0].spec)))
        else:
            payload = p.encode(p.ExecuteCalls([list(task.spec) for task in outbox]))
        self._sender.send_many(endpoint, [payload])

    def flush(self) -> None:
        """Send every call waiting in an outbox (cheap when none waits):
        before a get/wait, after each burst of replies, on every tick."""
        if not self._held:
            return
        with self.cond:
            for actor in list(self._held):
                if actor.outbox:
                    self._send_outbox_locked(actor)
            self._held.clear()

    def _fail_taken(self, fails) -> None:
        for task, error in fails:
            self.tasks.fail_task(task.spec.task_id, error)

    def call_ended_locked(self, task, failed: bool) -> None:
        """(lock held) A call returned, or ``failed`` (perhaps before it was
        sent): it is no longer in flight, nor queued."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            actor.inflight.pop(task.spec.task_id, None)
            if failed and task in actor.queue:
                actor.queue.remove(task)

    def forget_actor_locked(self, actor_id: bytes) -> None:
        """(lock held) No handle to this actor is left here and none of its
        calls is pending: drop what we knew of it and our socket to it."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.queue or actor.inflight:
            return
        del self.actors[actor_id]
        if actor.address:
            self._routes.forget_actor_route(actor.address)

    def handle_actor_info(self, msg: p.ActorInfo, known_only: bool = True) -> None:
        """What the GCS says of an actor we call (``known_only``: ignore
        actors we no longer follow)."""
        fails, retry, gone = [], False, None
        with self.cond:
            actor = self.actors.get(msg.actor_id)
            if actor is None:
                if msg.state != p.ACTOR_DEAD or known_only:
                    return
                actor = self.actors[msg.actor_id] = ActorState(msg.actor_id)
            if actor.state == p.ACTOR_DEAD:
                return                  # dead is final
            new_incarnation = msg.state == p.ACTOR_ALIVE and msg.incarnation != actor.incarnation
            lost = msg.state in (p.ACTOR_RESTARTING, p.ACTOR_DEAD) or (
                new_incarnation and actor.incarnation)
            if lost and actor.address:
                gone = actor.address        # close our socket to its old process
            unsent = []
            if lost and actor.outbox:       # never sent: queued again, no retry spent
                unsent = actor.outbox
                actor.outbox, actor.outbox_bytes = [], 0
                self._held.discard(actor)
                for task in unsent:
                    actor.inflight.pop(task.spec.task_id, None)
                    task.submitted = False
                actor.queue.extendleft(reversed(unsent))    # after the retried, below
            actor.state = msg.state
            if msg.state in (p.ACTOR_ALIVE, p.ACTOR_DEAD):
                actor.keep = None   # its constructor has borrowed what it needs
            if actor.address != msg.address:
                actor.endpoint = None
            actor.address = msg.address
            actor.death_message = msg.death_message
            actor.death_blob = msg.death_error
            if msg.state == p.ACTOR_ALIVE:
                actor.incarnation = msg.incarnation
            if lost and actor.inflight:
                again = []
                for task in actor.inflight.values():
                    if msg.state != p.ACTOR_DEAD and task.take_retry(new_attempt=False):
                        again.append(task)
                    else:
                        fails.append((task, actor.death_error(in_flight=True)))
                actor.inflight.clear()
                actor.queue.extendleft(reversed(again))
                retry = bool(again)
            retry = retry or bool(unsent)
        if gone is not None:
            self._routes.forget_actor_route(gone)
        for task, error in fails:
            self.tasks.fail_task(task.spec.task_id, error)
        if msg.state in (p.ACTOR_ALIVE, p.ACTOR_DEAD) or retry:
            self.pump(msg.actor_id)

    def watch_actors_again(self) -> None:
        """(storage) The GCS restarted and forgot its watchers: watch again
        every actor this process calls that is not dead."""
        with self.cond:
            live = [a for a, state in self.actors.items() if state.state != p.ACTOR_DEAD]
        for actor_id in live:
            self._gcs.send(p.WatchActor(actor_id, self.address.endpoint))

    def actor_killed(self, actor_id: bytes) -> None:
        """We killed this actor: fail its calls now, whatever the GCS says later."""
        self.handle_actor_info(p.ActorInfo(actor_id, p.ACTOR_DEAD, [], 0,
                                           "killed by zray.kill()", b""), known_only=False)
