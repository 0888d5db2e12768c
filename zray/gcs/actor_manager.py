"""The actor table: every actor's state, where it lives, its owner, its
restarts, and who watches it. States (``protocol.ACTOR_*``):
PENDING_CREATION -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD.

Rows are ``protocol.ActorRow`` records, stored as dicts through
``storage.put`` on every change; callers get copies. Watchers (endpoints
told of every change) live in memory only: after a GCS restart whoever
watches must watch again.
"""
from __future__ import annotations

import time

from ..broker import protocol as p
from . import rows

TABLE = "actors"
PENDING, ALIVE, RESTARTING, DEAD = p.ACTOR_STATES

#: death messages a user sees in ``list_actors`` and ActorDiedError
OUT_OF_SCOPE = "all references to the actor were removed"
OWNER_DIED = "its owner died"


def should_restart(actor: p.ActorRow, intentional: bool) -> bool:
    """The restart policy: not after an intentional exit or a kill without
    restart; else while restarts < max_restarts (-1: always)."""
    limit = actor.max_restarts
    return (not intentional and not actor.no_restart
            and (limit == -1 or actor.restarts < limit))


class ActorManager:
    def __init__(self, storage):
        self.storage = storage
        self.watchers: dict[bytes, set[str]] = {}
        self._names: dict[tuple, bytes] = {}    # (namespace, name) -> id of the live actor
        for actor in self._rows(lambda a: a.name and a.state != DEAD):
            self._names[(actor.namespace, actor.name)] = actor.actor_id

    def _rows(self, keep=None) -> list[p.ActorRow]:
        return rows.select(self.storage, TABLE, p.ActorRow, keep)

    def _put(self, actor: p.ActorRow) -> p.ActorRow:
        self.storage.put(TABLE, actor.actor_id, rows.stored(actor))
        key = (actor.namespace, actor.name)
        if actor.name and actor.state == DEAD and self._names.get(key) == actor.actor_id:
            del self._names[key]
        return actor

    def register(self, msg: p.RegisterActor, spec: p.TaskSpec) -> p.ActorRow:
        owner = p.Address(*spec.owner)
        actor = p.ActorRow(
            actor_id=msg.actor_id, spec=list(msg.spec), name=msg.name,
            namespace=msg.namespace, detached=bool(msg.detached),
            max_restarts=msg.max_restarts, restarts=0, class_name=msg.class_name,
            handle_meta=msg.handle_meta, job_id=spec.job_id, state=PENDING,
            address="", node_id=b"", pid=0, worker_id=b"", incarnation=0,
            owner_worker_id=owner.worker_id, owner_node_id=owner.node_id,
            death_message="", death_error=b"", no_restart=False,
            start_time=time.time(), end_time=None)
        if msg.name:
            self._names[(msg.namespace, msg.name)] = msg.actor_id
        return self._put(actor)

    def get(self, actor_id: bytes) -> p.ActorRow | None:
        return rows.load(p.ActorRow, self.storage.get(TABLE, actor_id))

    def named(self, name: str, namespace: str) -> p.ActorRow | None:
        """The live (not DEAD) actor of that name, or None."""
        actor_id = self._names.get((namespace, name))
        return None if actor_id is None else self.get(actor_id)

    def started(self, msg: p.ActorStarted) -> p.ActorRow | None:
        """Record a finished constructor; None if the actor is unknown or dead
        (killed while it was being created: its worker must go)."""
        actor = self.get(msg.actor_id)
        if actor is None or actor.state == DEAD:
            return None
        if msg.error:
            actor = actor._replace(state=DEAD, death_message="the actor's constructor raised",
                                   death_error=msg.error, end_time=time.time())
        else:
            actor = actor._replace(state=ALIVE, address=msg.address, node_id=msg.node_id,
                                   pid=msg.pid, worker_id=msg.worker_id,
                                   incarnation=actor.incarnation + 1)
        return self._put(actor)

    def died(self, actor_id: bytes, message: str,
             intentional: bool) -> tuple[p.ActorRow | None, bool]:
        """Record a death; returns (actor, whether to restart it), (None, False)
        if it is unknown or dead already."""
        actor = self.get(actor_id)
        if actor is None or actor.state == DEAD:
            return None, False
        restart = should_restart(actor, intentional)
        if restart:
            actor = actor._replace(restarts=actor.restarts + 1, state=RESTARTING, address="")
        else:
            actor = actor._replace(state=DEAD, address="", death_message=message,
                                   end_time=time.time())
        return self._put(actor), restart

    def scheduled(self, actor_id: bytes, node_id: bytes) -> None:
        """Its creation task went to ``node_id`` (its ``node_id`` until it starts)."""
        actor = self.get(actor_id)
        if actor is not None and actor.state in (PENDING, RESTARTING):
            self._put(actor._replace(node_id=node_id))

    def forbid_restart(self, actor_id: bytes) -> None:
        """Its next death is final (a kill without restart is under way)."""
        actor = self.get(actor_id)
        if actor is not None and not actor.no_restart:
            self._put(actor._replace(no_restart=True))

    def of_job(self, job_id: bytes) -> list[p.ActorRow]:
        """The job's live non-detached actors."""
        return self._rows(lambda a: a.job_id == job_id and not a.detached and a.state != DEAD)

    def of_owner(self, worker_id: bytes, node_id: bytes) -> list[p.ActorRow]:
        """Live non-detached actors owned by that worker (worker_id b"": by any
        owner on ``node_id``)."""
        return self._rows(lambda a: not a.detached and a.state != DEAD
                          and (a.owner_worker_id == worker_id if worker_id
                               else a.owner_node_id == node_id))

    def alive_on(self, node_id: bytes) -> list[p.ActorRow]:
        return self._rows(lambda a: a.state == ALIVE and a.node_id == node_id)

    def being_created_on(self, node_id: bytes) -> list[p.ActorRow]:
        """Actors whose creation task went to ``node_id`` and has not started yet."""
        return self._rows(lambda a: a.state in (PENDING, RESTARTING) and a.node_id == node_id)

    def alive_count_by_node(self) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for a in self._rows(lambda a: a.state == ALIVE):
            counts[a.node_id] = counts.get(a.node_id, 0) + 1
        return counts

    def unfinished(self) -> list[p.ActorRow]:
        """Actors waiting for a worker (PENDING_CREATION or RESTARTING)."""
        return self._rows(lambda a: a.state in (PENDING, RESTARTING))

    def all(self) -> list[p.ActorRow]:
        return self._rows()

    @staticmethod
    def info(actor: p.ActorRow) -> p.ActorInfo:
        address = ([actor.address, actor.worker_id, actor.pid, actor.node_id]
                   if actor.state == ALIVE else [])
        return p.ActorInfo(actor.actor_id, actor.state, address, actor.incarnation,
                           actor.death_message, actor.death_error)

    @staticmethod
    def summary(actor: p.ActorRow) -> p.ActorSummary:
        """The row as ``list_actors`` and the dashboard read it."""
        return p.ActorSummary(*[getattr(actor, f) for f in p.ActorSummary._fields])
