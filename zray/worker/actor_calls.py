"""Calling actors, the caller's side (a part of CoreWorker): each actor's
calls queue here and go straight to the actor's worker in submission order;
the GCS tells us (WatchActor) where the actor is and when it restarts or dies.
"""
from __future__ import annotations

import collections
import itertools

from .. import exceptions as exc
from ..broker import protocol as p
from ..object_ref import ObjectRef, ObjectRefGenerator
from . import serialization
from .pending_task import PendingTask
from .streams import GEN_DONE_INDEX


class ActorState:
    """What a caller knows of one actor: where it is and the calls it owes."""
    __slots__ = ("actor_id", "state", "address", "incarnation", "queue", "inflight",
                 "death_message", "death_blob")

    def __init__(self, actor_id: bytes):
        self.actor_id = actor_id
        self.state = "PENDING_CREATION"
        self.address: list = []
        self.incarnation = 0
        self.queue: collections.deque = collections.deque()
        self.inflight: dict[bytes, PendingTask] = {}
        self.death_message = ""
        self.death_blob = b""

    def death_error(self, in_flight: bool = False):
        cause = None
        if self.death_blob:
            try:
                cause = serialization.deserialize(self.death_blob)[1]
            except Exception:
                cause = None
        if cause is not None:
            text = f"The actor died because of an error raised in its constructor: {cause}"
        elif in_flight and self.state != "DEAD":
            text = "The actor died while running this call, and the call has no retries left"
        else:
            text = f"The actor died: {self.death_message or 'it is no longer running'}"
        return exc.ActorDiedError(text, cause)


class ActorCalls:
    """Methods of CoreWorker for actor creation specs and actor calls; they
    use its lock (``cond``), task table and sender."""

    def actor_creation_spec(self, actor_id: bytes, class_hash: bytes, class_name: str,
                            args, kwargs, resources: dict, options: dict) -> p.TaskSpec:
        """The task that runs an actor's constructor. Its arguments travel by
        value (refs resolved now), so the GCS can rerun it on a restart."""
        entries = []
        for index, value in enumerate(itertools.chain(args, kwargs.values())):
            if isinstance(value, ObjectRef):
                value = self.get(value)
            try:
                entries.append([p.ARG_VALUE, serialization.serialize(value).to_bytes()])
            except TypeError as err:
                name = (f"argument {index}" if index < len(args) else
                        f"keyword argument {list(kwargs)[index - len(args)]!r}")
                raise TypeError(f"{name} of {class_name}(): {err}") from None
        return p.TaskSpec(self.new_task_id(), self.job_id, p.TASK_ACTOR_CREATION, class_hash,
                          class_name, entries, list(kwargs), 0, resources, 0, False,
                          list(self.address), 0, actor_id, "__init__", options)

    def submit_actor_task(self, actor_id: bytes, method_name: str, args, kwargs,
                          num_returns: int, max_task_retries: int):
        """Call an actor method: queued per actor, sent in submission order.
        Raises NodeDiedError once the raylet of this node died."""
        self.check_raylet()
        self.drain_releases()
        task_id = self.new_task_id()
        arg_entries, held, deps = self._prepare_args(args, kwargs)
        spec = p.TaskSpec(task_id, self.job_id, p.TASK_ACTOR_METHOD, b"", method_name,
                          arg_entries, list(kwargs), num_returns, {}, max_task_retries,
                          False, list(self.address), 0, actor_id, method_name, {})
        streaming = num_returns == p.STREAMING
        if streaming:
            return_ids = [self.return_id(task_id, GEN_DONE_INDEX)]
        else:
            return_ids = [self.return_id(task_id, i + 1) for i in range(num_returns)]
        task = PendingTask(spec, return_ids, held, False)
        if self.task_events.enabled:
            self.task_events.submitted(task_id, 0, p.TS_PENDING_ARGS_AVAIL, self._event_info(
                method_name, p.TASK_ACTOR_METHOD, actor_id, None))
        watch = False
        with self.cond:
            refs = self._register(task, deps)
            actor = self.actors.get(actor_id)
            if actor is None:
                actor = self.actors[actor_id] = ActorState(actor_id)
                watch = True
            actor.queue.append(task)
        if watch:
            self.gcs.send(p.WatchActor(actor_id, self.address.endpoint))
        else:
            self._pump_actor(actor_id)
        if streaming:
            return ObjectRefGenerator(task_id, self, refs[0])
        return refs[0] if num_returns == 1 else refs

    def _pump_actor(self, actor_id: bytes) -> None:
        """Send the actor's queued calls, in order, while it is alive and the
        call at the head has its arguments ready."""
        sends, fails = [], []
        with self.cond:
            actor = self.actors.get(actor_id)
            if actor is None:
                return
            if actor.state == "DEAD":
                fails = [(t, actor.death_error()) for t in actor.queue]
                actor.queue.clear()
            elif actor.state == "ALIVE":
                queue = actor.queue
                while queue and not queue[0].deps:
                    task = queue.popleft()
                    if task.cancelled:
                        continue
                    error = self._resolve_owned_args(task)
                    if error is not None:
                        fails.append((task, error))
                        continue
                    task.submitted = True
                    actor.inflight[task.spec.task_id] = task
                    sends.append(p.encode(p.ExecuteTask(list(task.spec))))
            address = actor.address
        if sends:
            self.sender.send_many(self.actor_endpoint(address), sends)
        for task, error in fails:
            self._fail_task(task.spec.task_id, error)

    def _on_actor_info(self, msg: p.ActorInfo) -> None:
        fails, retry = [], False
        with self.cond:
            actor = self.actors.get(msg.actor_id)
            if actor is None:
                if msg.state != "DEAD":
                    return
                actor = self.actors[msg.actor_id] = ActorState(msg.actor_id)
            if actor.state == "DEAD":
                return                  # dead is final
            new_incarnation = msg.state == "ALIVE" and msg.incarnation != actor.incarnation
            lost = msg.state in ("RESTARTING", "DEAD") or (new_incarnation and actor.incarnation)
            actor.state = msg.state
            actor.address = msg.address
            actor.death_message = msg.death_message
            actor.death_blob = msg.death_error
            if msg.state == "ALIVE":
                actor.incarnation = msg.incarnation
            if lost and actor.inflight:
                again = []
                for task in actor.inflight.values():
                    if msg.state != "DEAD" and task.retries_left != 0:
                        task.retries_left -= 1
                        again.append(task)
                    else:
                        fails.append((task, actor.death_error(in_flight=True)))
                actor.inflight.clear()
                actor.queue.extendleft(reversed(again))
                retry = bool(again)
        for task, error in fails:
            self._fail_task(task.spec.task_id, error)
        if msg.state in ("ALIVE", "DEAD") or retry:
            self._pump_actor(msg.actor_id)

    def actor_killed(self, actor_id: bytes) -> None:
        """We killed this actor: fail its calls now, whatever the GCS says later."""
        self._on_actor_info(p.ActorInfo(actor_id, "DEAD", [], 0, "killed by zray.kill()", b""))
