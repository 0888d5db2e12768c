"""The placement group table: each group's bundles, the node each bundle is
reserved on, and its state (``protocol.PG_*``: PENDING until every bundle has
a node, then CREATED; REMOVED at the end). Bundles of a dead node go back to
PENDING. Rows are written through ``storage.put``; callers get copies."""
from __future__ import annotations

import time

from ..broker import protocol as p
from .rows import copy_row

TABLE = "placement_groups"
PENDING, CREATED, REMOVED = p.PG_PENDING, p.PG_CREATED, p.PG_REMOVED
STRATEGIES = p.PG_STRATEGIES


class PlacementGroupManager:
    def __init__(self, storage):
        self.storage = storage

    def _put(self, pg: dict) -> dict:
        self.storage.put(TABLE, pg["pg_id"], pg)
        return copy_row(pg)

    def create(self, msg: p.CreatePlacementGroup) -> dict:
        pg = {"pg_id": msg.pg_id, "name": msg.name, "bundles": [dict(b) for b in msg.bundles],
              "strategy": msg.strategy, "job_id": msg.job_id, "detached": bool(msg.detached),
              "state": PENDING, "nodes": [None] * len(msg.bundles),
              "created_at": time.time()}
        return self._put(pg)

    def placed(self, pg_id: bytes, nodes_by_index: dict[int, bytes]) -> dict | None:
        """Record bundles reserved on nodes; the group is CREATED when all are."""
        pg = self.storage.get(TABLE, pg_id)
        if pg is None or pg["state"] == REMOVED:
            return None
        for i, node_id in nodes_by_index.items():
            pg["nodes"][i] = node_id
        if all(n is not None for n in pg["nodes"]):
            pg["state"] = CREATED
        return self._put(pg)

    def lose_node(self, pg_id: bytes, node_id: bytes) -> dict | None:
        """The bundles on a dead node have no node now: the group is PENDING again."""
        pg = self.storage.get(TABLE, pg_id)
        if pg is None or pg["state"] == REMOVED:
            return None
        pg["nodes"] = [None if n == node_id else n for n in pg["nodes"]]
        pg["state"] = PENDING
        return self._put(pg)

    def removed(self, pg_id: bytes) -> dict | None:
        """Mark it REMOVED; None if it is unknown or removed already."""
        pg = self.storage.get(TABLE, pg_id)
        if pg is None or pg["state"] == REMOVED:
            return None
        pg["state"] = REMOVED
        return self._put(pg)

    def get(self, pg_id: bytes) -> dict | None:
        return copy_row(self.storage.get(TABLE, pg_id))

    def named(self, name: str) -> dict | None:
        return next((copy_row(pg) for _, pg in self.storage.items(TABLE)
                     if pg["name"] == name and pg["state"] != REMOVED), None)

    def pending(self) -> list[dict]:
        return [copy_row(pg) for _, pg in self.storage.items(TABLE)
                if pg["state"] == PENDING]

    def all(self) -> list[dict]:
        return [copy_row(pg) for _, pg in self.storage.items(TABLE)]

    def of_job(self, job_id: bytes) -> list[dict]:
        return [copy_row(pg) for _, pg in self.storage.items(TABLE)
                if pg["job_id"] == job_id and not pg["detached"] and pg["state"] != REMOVED]

    def on_node(self, node_id: bytes) -> list[dict]:
        return [copy_row(pg) for _, pg in self.storage.items(TABLE)
                if pg["state"] != REMOVED and node_id in pg["nodes"]]

    @staticmethod
    def public(pg: dict) -> dict:
        """The row as ``placement_group_table()`` reads it."""
        return {"placement_group_id": pg["pg_id"].hex(), "name": pg["name"],
                "strategy": pg["strategy"], "state": pg["state"],
                "bundles": {i: b for i, b in enumerate(pg["bundles"])},
                "bundles_to_node_id": {i: (n.hex() if n else None)
                                       for i, n in enumerate(pg["nodes"])}}
