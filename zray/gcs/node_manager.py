"""The node table: raylets that joined, their resources and their health.

Rows are ``protocol.NodeRow`` records kept in memory by a ``rows.Table``
and stored as dicts through ``storage.put`` on every change; callers get
the read-only rows themselves. Heartbeat deadlines
live in memory only: a GCS that reloads the table gives every node that was
alive a fresh deadline.
"""
from __future__ import annotations

import time

from ..broker import protocol as p
from . import rows

TABLE = "nodes"
#: what a node's "stats" may hold (numbers; see Heartbeat.stats)
STATS = frozenset({"cpu_percent", "mem_used", "mem_total", "disk_used", "disk_total",
                   "store_used", "store_spilled", "store_capacity", "num_workers", "time"})


class NodeManager:
    def __init__(self, storage, node_timeout_s: float):
        self.storage = storage
        self._table = rows.Table(storage, TABLE, p.NodeRow)
        self.node_timeout_s = node_timeout_s
        fresh = time.monotonic() + node_timeout_s      # after a reload: a fresh deadline
        self._deadline: dict[bytes, float] = {
            n.node_id: fresh for n in self.all() if n.alive}

    def _put(self, node: p.NodeRow) -> p.NodeRow:
        return self._table.put(node.node_id, node)

    def register(self, msg: p.RegisterNode) -> p.NodeRow:
        """Record a node joining (or joining again under its id after a GCS restart)."""
        old = self.get(msg.node_id)
        node = p.NodeRow(
            node_id=msg.node_id, address=msg.address, data_address=msg.data_address,
            node_ip=msg.node_ip, hostname=msg.hostname, pid=msg.pid,
            resources=dict(msg.resources), available=dict(msg.resources),
            arena_size=msg.arena_size, store_used=0, alive=True,
            start_time=old.start_time if old and old.alive else time.time(),
            session_dir=msg.session_dir, stats={})
        self._deadline[msg.node_id] = time.monotonic() + self.node_timeout_s
        return self._put(node)

    def heartbeat(self, msg: p.Heartbeat) -> tuple[str, p.NodeRow | None]:
        """Record a report: (HEARTBEAT_OK, the node) or (HEARTBEAT_DEAD /
        HEARTBEAT_UNKNOWN, None) when the node was declared dead / is not known."""
        node = self.get(msg.node_id)
        if node is None:
            return p.HEARTBEAT_UNKNOWN, None
        if not node.alive:
            return p.HEARTBEAT_DEAD, None
        stats = node.stats
        if msg.stats:
            stats = {k: v for k, v in msg.stats.items()
                     if k in STATS and type(v) in (int, float)}
        node = node._replace(available=msg.available, resources=msg.total,   # the table copies
                             store_used=msg.store_used, stats=stats)
        self._deadline[msg.node_id] = time.monotonic() + self.node_timeout_s
        return p.HEARTBEAT_OK, self._put(node)

    def reserve(self, node_id: bytes, resources: dict) -> None:
        """Take ``resources`` off the node's available ones until its next report."""
        node = self.get(node_id)
        if node is None:
            return
        available = dict(node.available)
        for k, v in resources.items():
            available[k] = available.get(k, 0.0) - v
        self._put(node._replace(available=available))

    def mark_dead(self, node_id: bytes) -> p.NodeRow | None:
        """Declare a node dead; None if it is unknown or dead already."""
        self._deadline.pop(node_id, None)
        node = self.get(node_id)
        if node is None or not node.alive:
            return None
        return self._put(node._replace(alive=False, end_time=time.time()))

    def expired(self) -> list[bytes]:
        """Alive nodes that did not report within the timeout."""
        now = time.monotonic()
        return [nid for nid, due in self._deadline.items() if due < now]

    def get(self, node_id: bytes) -> p.NodeRow | None:
        return self._table.get(node_id)

    def alive(self) -> list[p.NodeRow]:
        return [n for n in self._table.rows() if n.alive]

    def all(self) -> list[p.NodeRow]:
        return self._table.rows()
