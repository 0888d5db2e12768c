"""The placement group table: each group's bundles, the node each bundle is
reserved on, and its state (``protocol.PG_*``: PENDING until every bundle has
a node, then CREATED; REMOVED at the end). Bundles of a dead node go back to
PENDING. Rows (``protocol.PlacementGroupRow``) are kept in memory by a
``rows.Table`` and stored as dicts through ``storage.put``; callers get the
read-only rows themselves.

The groups not removed are indexed in memory (rebuilt from the table), so
the scans a heartbeat makes never read removed groups; the last
``REMOVED_KEPT`` removed groups stay readable (``placement_group_table``
shows them REMOVED), older ones leave the table."""
from __future__ import annotations

import collections
import time

from ..broker import protocol as p
from . import rows

TABLE = "placement_groups"
PENDING, CREATED, REMOVED = p.PG_PENDING, p.PG_CREATED, p.PG_REMOVED
STRATEGIES = p.PG_STRATEGIES


#: removed groups kept in the table (past it, the oldest leave first)
REMOVED_KEPT = 1000


class PlacementGroupManager:
    def __init__(self, storage):
        self.storage = storage
        self._table = rows.Table(storage, TABLE, p.PlacementGroupRow)
        table = sorted(self._table.rows(), key=lambda pg: pg.created_at)
        #: ids of the groups not removed
        self._live: set[bytes] = {pg.pg_id for pg in table if pg.state != REMOVED}
        #: ids of removed groups still in the table, oldest first
        self._removed = collections.deque(pg.pg_id for pg in table if pg.state == REMOVED)
        self._forget_old_removed()

    def _put(self, pg: p.PlacementGroupRow) -> p.PlacementGroupRow:
        return self._table.put(pg.pg_id, pg)

    def _live_rows(self):
        for pg_id in list(self._live):
            pg = self.get(pg_id)
            if pg is not None:
                yield pg

    def _forget_old_removed(self) -> None:
        while len(self._removed) > REMOVED_KEPT:
            self._table.delete(self._removed.popleft())

    def create(self, msg: p.CreatePlacementGroup) -> p.PlacementGroupRow:
        pg = p.PlacementGroupRow(
            pg_id=msg.pg_id, name=msg.name, bundles=[dict(b) for b in msg.bundles],
            strategy=msg.strategy, job_id=msg.job_id, detached=bool(msg.detached),
            state=PENDING, nodes=[None] * len(msg.bundles), created_at=time.time())
        self._live.add(msg.pg_id)
        return self._put(pg)

    def placed(self, pg_id: bytes,
               nodes_by_index: dict[int, bytes]) -> p.PlacementGroupRow | None:
        """Record bundles reserved on nodes; the group is CREATED when all are."""
        pg = self.get(pg_id)
        if pg is None or pg.state == REMOVED:
            return None
        nodes = list(pg.nodes)
        for i, node_id in nodes_by_index.items():
            nodes[i] = node_id
        state = CREATED if all(n is not None for n in nodes) else pg.state
        return self._put(pg._replace(nodes=nodes, state=state))

    def lose_node(self, pg_id: bytes, node_id: bytes) -> p.PlacementGroupRow | None:
        """The bundles on a dead node have no node now: the group is PENDING again."""
        pg = self.get(pg_id)
        if pg is None or pg.state == REMOVED:
            return None
        return self._put(pg._replace(nodes=[None if n == node_id else n for n in pg.nodes],
                                     state=PENDING))

    def removed(self, pg_id: bytes) -> p.PlacementGroupRow | None:
        """Mark it REMOVED; None if it is unknown or removed already."""
        pg = self.get(pg_id)
        if pg is None or pg.state == REMOVED:
            return None
        stored = self._put(pg._replace(state=REMOVED))
        self._live.discard(pg_id)
        self._removed.append(pg_id)
        self._forget_old_removed()
        return stored

    def get(self, pg_id: bytes) -> p.PlacementGroupRow | None:
        return self._table.get(pg_id)

    def named(self, name: str) -> p.PlacementGroupRow | None:
        return next((pg for pg in self._live_rows() if pg.name == name), None)

    def pending(self) -> list[p.PlacementGroupRow]:
        return [pg for pg in self._live_rows() if pg.state == PENDING]

    def all(self) -> list[p.PlacementGroupRow]:
        return self._table.rows()

    def of_job(self, job_id: bytes) -> list[p.PlacementGroupRow]:
        return [pg for pg in self._live_rows() if pg.job_id == job_id and not pg.detached]

    def on_node(self, node_id: bytes) -> list[p.PlacementGroupRow]:
        return [pg for pg in self._live_rows() if node_id in pg.nodes]
