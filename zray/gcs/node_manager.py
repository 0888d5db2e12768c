"""The node table: raylets that joined, their resources and their health.

Rows are plain msgpack-able dicts written through ``storage.put`` on every
change; callers get copies. Heartbeat deadlines live in memory only: a GCS
that reloads the table gives every node that was alive a fresh deadline.
"""
from __future__ import annotations

import time

from ..broker import protocol as p
from .rows import copy_row

TABLE = "nodes"
#: what a node's "stats" may hold (numbers; see Heartbeat.stats)
STATS = frozenset({"cpu_percent", "mem_used", "mem_total", "disk_used", "disk_total",
                   "store_used", "store_spilled", "store_capacity", "num_workers", "time"})


class NodeManager:
    def __init__(self, storage, node_timeout_s: float):
        self.storage = storage
        self.node_timeout_s = node_timeout_s
        fresh = time.monotonic() + node_timeout_s      # after a reload: a fresh deadline
        self._deadline: dict[bytes, float] = {
            nid: fresh for nid, n in storage.items(TABLE) if n["alive"]}

    def register(self, msg: p.RegisterNode) -> dict:
        """Record a node joining (or joining again under its id after a GCS restart)."""
        old = self.storage.get(TABLE, msg.node_id)
        node = {
            "node_id": msg.node_id, "address": msg.address, "data_address": msg.data_address,
            "node_ip": msg.node_ip,
            "hostname": msg.hostname, "pid": msg.pid, "resources": dict(msg.resources),
            "available": dict(msg.resources), "arena_size": msg.arena_size,
            "store_used": 0, "alive": True,
            "start_time": old["start_time"] if old and old["alive"] else time.time(),
            "session_dir": msg.session_dir,
            "stats": {},        # usage the raylet samples (see Heartbeat.stats)
        }
        self.storage.put(TABLE, msg.node_id, node)
        self._deadline[msg.node_id] = time.monotonic() + self.node_timeout_s
        return copy_row(node)

    def heartbeat(self, msg: p.Heartbeat) -> tuple[str, dict | None]:
        """Record a report: (HEARTBEAT_OK, the node) or (HEARTBEAT_DEAD /
        HEARTBEAT_UNKNOWN, None) when the node was declared dead / is not known."""
        node = self.storage.get(TABLE, msg.node_id)
        if node is None:
            return p.HEARTBEAT_UNKNOWN, None
        if not node["alive"]:
            return p.HEARTBEAT_DEAD, None
        node["available"] = dict(msg.available)
        node["resources"] = dict(msg.total)
        node["store_used"] = msg.store_used
        if msg.stats:
            node["stats"] = {k: v for k, v in msg.stats.items()
                             if k in STATS and type(v) in (int, float)}
        self.storage.put(TABLE, msg.node_id, node)
        self._deadline[msg.node_id] = time.monotonic() + self.node_timeout_s
        return p.HEARTBEAT_OK, copy_row(node)

    def reserve(self, node_id: bytes, resources: dict) -> None:
        """Take ``resources`` off the node's available ones until its next report."""
        node = self.storage.get(TABLE, node_id)
        if node is None:
            return
        for k, v in resources.items():
            node["available"][k] = node["available"].get(k, 0.0) - v
        self.storage.put(TABLE, node_id, node)

    def mark_dead(self, node_id: bytes) -> dict | None:
        """Declare a node dead; None if it is unknown or dead already."""
        self._deadline.pop(node_id, None)
        node = self.storage.get(TABLE, node_id)
        if node is None or not node["alive"]:
            return None
        node["alive"] = False
        node["end_time"] = time.time()
        self.storage.put(TABLE, node_id, node)
        return copy_row(node)

    def expired(self) -> list[bytes]:
        """Alive nodes that did not report within the timeout."""
        now = time.monotonic()
        return [nid for nid, due in self._deadline.items() if due < now]

    def get(self, node_id: bytes) -> dict | None:
        return copy_row(self.storage.get(TABLE, node_id))

    def alive(self) -> list[dict]:
        return [copy_row(n) for _, n in self.storage.items(TABLE) if n["alive"]]

    def all(self) -> list[dict]:
        return [self.public(n) for _, n in self.storage.items(TABLE)]

    @staticmethod
    def public(node: dict) -> dict:
        """The row as ``zray.nodes()`` and the dashboard read it (a copy)."""
        return copy_row(node)
