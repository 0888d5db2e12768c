"""The actor table: every actor's state, where it lives, its owner, its
restarts, and who watches it. States (``protocol.ACTOR_*``):
PENDING_CREATION -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD.

Rows are ``protocol.ActorRow`` records kept in memory by a ``rows.Table``
and stored as dicts through ``storage.put`` on every change; callers get the
read-only rows themselves. The actors not DEAD are indexed by owner and by
node (rebuilt from the table), so the scans a death makes never read dead
actors. Watchers (endpoints told of every change) live in memory only:
after a GCS restart whoever watches must watch again.
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


def _unindex(index: dict, key: bytes, actor_id: bytes) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.pop(actor_id, None)
        if not ids:
            del index[key]


def should_restart(actor: p.ActorRow, intentional: bool) -> bool:
    """The restart policy: not after an intentional exit or a kill without
    restart; else while restarts < max_restarts (-1: always)."""
    limit = actor.max_restarts
    return (not intentional and not actor.no_restart
            and (limit == -1 or actor.restarts < limit))


class ActorManager:
    def __init__(self, storage):
        self.storage = storage
        self._table = rows.Table(storage, TABLE, p.ActorRow)
        self.watchers: dict[bytes, set[str]] = {}
        self._names: dict[tuple, bytes] = {}    # (namespace, name) -> id of the live actor
        # indexes of the actors not DEAD (dicts as ordered sets: ids in table order)
        self._live: dict[bytes, None] = {}
        self._by_owner_worker: dict[bytes, dict[bytes, None]] = {}
        self._by_owner_node: dict[bytes, dict[bytes, None]] = {}
        self._by_node: dict[bytes, dict[bytes, None]] = {}
        for actor in self._table.rows():
            self._index(None, actor)

    def _index(self, old: p.ActorRow | None, new: p.ActorRow) -> None:
        """Move ``new.actor_id`` in the indexes from where ``old`` had it."""
        actor_id = new.actor_id
        was_live = old is not None and old.state != DEAD
        live = new.state != DEAD
        if was_live and (not live or old.node_id != new.node_id):
            _unindex(self._by_node, old.node_id, actor_id)
        if was_live and not live:
            del self._live[actor_id]
            _unindex(self._by_owner_worker, old.owner_worker_id, actor_id)
            _unindex(self._by_owner_node, old.owner_node_id, actor_id)
            key = (old.namespace, old.name)
            if old.name and self._names.get(key) == actor_id:
                del self._names[key]
        if live and not was_live:
            self._live[actor_id] = None
            self._by_owner_worker.setdefault(new.owner_worker_id, {})[actor_id] = None
            self._by_owner_node.setdefault(new.owner_node_id, {})[actor_id] = None
            if new.name:
                self._names[(new.namespace, new.name)] = actor_id
        if live and (not was_live or old.node_id != new.node_id):
            self._by_node.setdefault(new.node_id, {})[actor_id] = None

    def _live_rows(self, ids) -> list[p.ActorRow]:
        get = self._table.get
        return [get(actor_id) for actor_id in ids]

    def _put(self, actor: p.ActorRow) -> p.ActorRow:
        old = self._table.get(actor.actor_id)
        actor = self._table.put(actor.actor_id, actor)
        self._index(old, actor)
        return actor

    def register(self, msg: p.RegisterActor, spec: p.TaskSpec) -> p.ActorRow:
        owner = spec.owner_address
        actor = p.ActorRow(
            actor_id=msg.actor_id, spec=list(msg.spec), name=msg.name,
            namespace=msg.namespace, detached=bool(msg.detached),
            max_restarts=msg.max_restarts, restarts=0, class_name=msg.class_name,
            handle_meta=msg.handle_meta, job_id=spec.job_id, state=PENDING,
            address="", node_id=b"", pid=0, worker_id=b"", incarnation=0,
            owner_worker_id=owner.worker_id, owner_node_id=owner.node_id,
            death_message="", death_error=b"", no_restart=False,
            start_time=time.time(), end_time=None)
        return self._put(actor)

    def get(self, actor_id: bytes) -> p.ActorRow | None:
        return self._table.get(actor_id)

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
        return [a for a in self._live_rows(self._live) if a.job_id == job_id and not a.detached]

    def of_owner(self, worker_id: bytes, node_id: bytes) -> list[p.ActorRow]:
        """Live non-detached actors owned by that worker (worker_id b"": by any
        owner on ``node_id``)."""
        ids = (self._by_owner_worker.get(worker_id, ()) if worker_id
               else self._by_owner_node.get(node_id, ()))
        return [a for a in self._live_rows(list(ids)) if not a.detached]

    def alive_on(self, node_id: bytes) -> list[p.ActorRow]:
        return [a for a in self._live_rows(list(self._by_node.get(node_id, ())))
                if a.state == ALIVE]

    def being_created_on(self, node_id: bytes) -> list[p.ActorRow]:
        """Actors whose creation task went to ``node_id`` and has not started yet."""
        return [a for a in self._live_rows(list(self._by_node.get(node_id, ())))
                if a.state in (PENDING, RESTARTING)]

    def alive_count_by_node(self) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for a in self._live_rows(self._live):
            if a.state == ALIVE:
                counts[a.node_id] = counts.get(a.node_id, 0) + 1
        return counts

    def unfinished(self) -> list[p.ActorRow]:
        """Actors waiting for a worker (PENDING_CREATION or RESTARTING)."""
        return [a for a in self._live_rows(self._live) if a.state in (PENDING, RESTARTING)]

    def all(self) -> list[p.ActorRow]:
        return self._table.rows()

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
