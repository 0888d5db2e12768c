"""The actor table: every actor's state, where it lives, its owner, its
restarts, and who watches it. States (``protocol.ACTOR_*``):
PENDING_CREATION -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD.

Rows are plain msgpack-able dicts written through ``storage.put`` on every
change; callers get copies. Watchers (endpoints told of every change) live in
memory only: after a GCS restart whoever watches must watch again.
"""
from __future__ import annotations

import time

from ..broker import protocol as p
from .rows import copy_row

TABLE = "actors"
PENDING, ALIVE, RESTARTING, DEAD = p.ACTOR_STATES

#: death messages a user sees in ``list_actors`` and ActorDiedError
OUT_OF_SCOPE = "all references to the actor were removed"
OWNER_DIED = "its owner died"


def should_restart(actor: dict, intentional: bool) -> bool:
    """The restart policy: not after an intentional exit or a kill without
    restart; else while restarts < max_restarts (-1: always)."""
    limit = actor["max_restarts"]
    return (not intentional and not actor["no_restart"]
            and (limit == -1 or actor["restarts"] < limit))


class ActorManager:
    def __init__(self, storage):
        self.storage = storage
        self.watchers: dict[bytes, set[str]] = {}
        self._names: dict[tuple, bytes] = {}    # (namespace, name) -> id of the live actor
        for actor_id, actor in storage.items(TABLE):
            if actor["name"] and actor["state"] != DEAD:
                self._names[(actor["namespace"], actor["name"])] = actor_id

    def _put(self, actor: dict) -> dict:
        self.storage.put(TABLE, actor["actor_id"], actor)
        key = (actor["namespace"], actor["name"])
        if actor["name"] and actor["state"] == DEAD and self._names.get(key) == actor["actor_id"]:
            del self._names[key]
        return copy_row(actor)

    def register(self, msg: p.RegisterActor, spec: p.TaskSpec) -> dict:
        owner = p.Address(*spec.owner)
        actor = {
            "actor_id": msg.actor_id, "spec": list(msg.spec), "name": msg.name,
            "namespace": msg.namespace, "detached": bool(msg.detached),
            "max_restarts": msg.max_restarts, "restarts": 0, "class_name": msg.class_name,
            "handle_meta": msg.handle_meta, "job_id": spec.job_id, "state": PENDING,
            "address": "", "node_id": b"", "pid": 0, "worker_id": b"", "incarnation": 0,
            "owner_worker_id": owner.worker_id, "owner_node_id": owner.node_id,
            "death_message": "", "death_error": b"", "no_restart": False,
            "start_time": time.time(), "end_time": None,
        }
        if msg.name:
            self._names[(msg.namespace, msg.name)] = msg.actor_id
        return self._put(actor)

    def get(self, actor_id: bytes) -> dict | None:
        return copy_row(self.storage.get(TABLE, actor_id))

    def named(self, name: str, namespace: str) -> dict | None:
        """The live (not DEAD) actor of that name, or None."""
        actor_id = self._names.get((namespace, name))
        return None if actor_id is None else self.get(actor_id)

    def started(self, msg: p.ActorStarted) -> dict | None:
        """Record a finished constructor; None if the actor is unknown or dead
        (killed while it was being created: its worker must go)."""
        actor = self.storage.get(TABLE, msg.actor_id)
        if actor is None or actor["state"] == DEAD:
            return None
        if msg.error:
            actor.update(state=DEAD, death_message="the actor's constructor raised",
                         death_error=msg.error, end_time=time.time())
        else:
            actor.update(state=ALIVE, address=msg.address, node_id=msg.node_id, pid=msg.pid,
                         worker_id=msg.worker_id, incarnation=actor["incarnation"] + 1)
        return self._put(actor)

    def died(self, actor_id: bytes, message: str, intentional: bool) -> tuple[dict | None, bool]:
        """Record a death; returns (actor, whether to restart it), (None, False)
        if it is unknown or dead already."""
        actor = self.storage.get(TABLE, actor_id)
        if actor is None or actor["state"] == DEAD:
            return None, False
        restart = should_restart(actor, intentional)
        if restart:
            actor["restarts"] += 1
            actor.update(state=RESTARTING, address="")
        else:
            actor.update(state=DEAD, address="", death_message=message, end_time=time.time())
        return self._put(actor), restart

    def scheduled(self, actor_id: bytes, node_id: bytes) -> None:
        """Its creation task went to ``node_id`` (its ``node_id`` until it starts)."""
        actor = self.storage.get(TABLE, actor_id)
        if actor is not None and actor["state"] in (PENDING, RESTARTING):
            actor["node_id"] = node_id
            self.storage.put(TABLE, actor_id, actor)

    def forbid_restart(self, actor_id: bytes) -> None:
        """Its next death is final (a kill without restart is under way)."""
        actor = self.storage.get(TABLE, actor_id)
        if actor is not None and not actor["no_restart"]:
            actor["no_restart"] = True
            self._put(actor)

    def of_job(self, job_id: bytes) -> list[dict]:
        """The job's live non-detached actors."""
        return [copy_row(a) for _, a in self.storage.items(TABLE)
                if a["job_id"] == job_id and not a["detached"] and a["state"] != DEAD]

    def of_owner(self, worker_id: bytes, node_id: bytes) -> list[dict]:
        """Live non-detached actors owned by that worker (worker_id b"": by any
        owner on ``node_id``)."""
        return [copy_row(a) for _, a in self.storage.items(TABLE)
                if not a["detached"] and a["state"] != DEAD
                and (a["owner_worker_id"] == worker_id if worker_id
                     else a["owner_node_id"] == node_id)]

    def alive_on(self, node_id: bytes) -> list[dict]:
        return [copy_row(a) for _, a in self.storage.items(TABLE)
                if a["state"] == ALIVE and a["node_id"] == node_id]

    def being_created_on(self, node_id: bytes) -> list[dict]:
        """Actors whose creation task went to ``node_id`` and has not started yet."""
        return [copy_row(a) for _, a in self.storage.items(TABLE)
                if a["state"] in (PENDING, RESTARTING) and a["node_id"] == node_id]

    def alive_count_by_node(self) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for _, a in self.storage.items(TABLE):
            if a["state"] == ALIVE:
                counts[a["node_id"]] = counts.get(a["node_id"], 0) + 1
        return counts

    def unfinished(self) -> list[dict]:
        """Actors waiting for a worker (PENDING_CREATION or RESTARTING)."""
        return [copy_row(a) for _, a in self.storage.items(TABLE)
                if a["state"] in (PENDING, RESTARTING)]

    def all(self) -> list[dict]:
        return [copy_row(a) for _, a in self.storage.items(TABLE)]

    @staticmethod
    def info(actor: dict) -> p.ActorInfo:
        address = ([actor["address"], actor["worker_id"], actor["pid"], actor["node_id"]]
                   if actor["state"] == ALIVE else [])
        return p.ActorInfo(actor["actor_id"], actor["state"], address,
                           actor["incarnation"], actor["death_message"], actor["death_error"])

    @staticmethod
    def public(actor: dict) -> dict:
        """The row as ``list_actors`` and the dashboard read it."""
        return {k: actor[k] for k in ("actor_id", "name", "namespace", "class_name", "state",
                                      "node_id", "pid", "restarts", "detached", "job_id",
                                      "death_message", "start_time", "end_time")}
