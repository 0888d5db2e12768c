"""The actor table: every actor's state, where it lives, its restarts, and
who watches it. States: PENDING_CREATION -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD.
"""
from __future__ import annotations

import time

TABLE = "actors"
PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"


class ActorManager:
    def __init__(self, storage):
        self.storage = storage
        self.watchers: dict[bytes, set[str]] = {}

    def register(self, msg, job_id: bytes) -> dict:
        actor = {
            "actor_id": msg.actor_id, "spec": msg.spec, "name": msg.name,
            "namespace": msg.namespace, "detached": msg.detached,
            "max_restarts": msg.max_restarts, "restarts": 0, "class_name": msg.class_name,
            "handle_meta": msg.handle_meta, "job_id": job_id, "state": PENDING,
            "address": "", "node_id": b"", "pid": 0, "worker_id": b"", "incarnation": 0,
            "death_message": "", "death_error": b"", "no_restart": False,
            "start_time": time.time(), "end_time": None,
        }
        self.storage.put(TABLE, msg.actor_id, actor)
        return actor

    def get(self, actor_id: bytes) -> dict | None:
        return self.storage.get(TABLE, actor_id)

    def named(self, name: str, namespace: str) -> dict | None:
        for _, actor in self.storage.items(TABLE):
            if actor["name"] == name and actor["namespace"] == namespace \
                    and actor["state"] != DEAD:
                return actor
        return None

    def started(self, msg) -> dict | None:
        actor = self.get(msg.actor_id)
        if actor is None or actor["state"] == DEAD:
            return None
        if msg.error:
            actor.update(state=DEAD, death_message="the actor's constructor raised",
                         death_error=msg.error, end_time=time.time())
        else:
            actor.update(state=ALIVE, address=msg.address, node_id=msg.node_id, pid=msg.pid,
                         worker_id=msg.worker_id, incarnation=actor["incarnation"] + 1)
        return actor

    def died(self, actor_id: bytes, message: str, intentional: bool) -> tuple[dict | None, bool]:
        """Record a death; returns (actor, whether to restart it)."""
        actor = self.get(actor_id)
        if actor is None or actor["state"] == DEAD:
            return None, False
        limit = actor["max_restarts"]
        restart = (not intentional and not actor["no_restart"]
                   and (limit == -1 or actor["restarts"] < limit))
        if restart:
            actor["restarts"] += 1
            actor.update(state=RESTARTING, address="")
        else:
            actor.update(state=DEAD, address="", death_message=message, end_time=time.time())
        return actor, restart

    def of_job(self, job_id: bytes) -> list[dict]:
        return [a for _, a in self.storage.items(TABLE)
                if a["job_id"] == job_id and not a["detached"] and a["state"] != DEAD]

    def all(self) -> list[dict]:
        return [a for _, a in self.storage.items(TABLE)]

    @staticmethod
    def info(actor: dict):
        from ..broker.protocol import ActorInfo
        address = ([actor["address"], actor["worker_id"], actor["pid"], actor["node_id"]]
                   if actor["state"] == ALIVE else [])
        return ActorInfo(actor["actor_id"], actor["state"], address,
                         actor["incarnation"], actor["death_message"], actor["death_error"])

    @staticmethod
    def public(actor: dict) -> dict:
        return {k: actor[k] for k in ("actor_id", "name", "namespace", "class_name", "state",
                                      "node_id", "pid", "restarts", "detached", "job_id",
                                      "death_message", "start_time", "end_time")}
