"""The node table: raylets that joined, their resources and their health."""
from __future__ import annotations

import time

TABLE = "nodes"
#: what a node's "stats" may hold (numbers; see Heartbeat.stats)
STATS = frozenset({"cpu_percent", "mem_used", "mem_total", "disk_used", "disk_total",
                   "store_used", "store_spilled", "store_capacity", "num_workers", "time"})


class NodeManager:
    def __init__(self, storage, node_timeout_s: float):
        self.storage = storage
        self.node_timeout_s = node_timeout_s

    def register(self, msg) -> dict:
        node = {
            "node_id": msg.node_id, "address": msg.address, "data_address": msg.data_address,
            "node_ip": msg.node_ip,
            "hostname": msg.hostname, "pid": msg.pid, "resources": dict(msg.resources),
            "available": dict(msg.resources), "arena_size": msg.arena_size,
            "store_used": 0, "alive": True, "start_time": time.time(),
            "last_heartbeat": time.monotonic(), "session_dir": msg.session_dir,
            "stats": {},        # usage the raylet samples (see Heartbeat.stats)
        }
        self.storage.put(TABLE, msg.node_id, node)
        return node

    def heartbeat(self, msg) -> dict | None:
        """Record a report; None if the node is unknown or was declared dead."""
        node = self.storage.get(TABLE, msg.node_id)
        if node is None or not node["alive"]:
            return None
        node["available"] = dict(msg.available)
        node["resources"] = dict(msg.total)
        node["store_used"] = msg.store_used
        if msg.stats:
            node["stats"] = {k: v for k, v in msg.stats.items()
                             if k in STATS and type(v) in (int, float)}
        node["last_heartbeat"] = time.monotonic()
        return node

    def mark_dead(self, node_id: bytes) -> dict | None:
        node = self.storage.get(TABLE, node_id)
        if node is None or not node["alive"]:
            return None
        node["alive"] = False
        node["end_time"] = time.time()
        return node

    def expired(self) -> list[bytes]:
        """Alive nodes whose last report is older than the timeout."""
        limit = time.monotonic() - self.node_timeout_s
        return [nid for nid, n in self.storage.items(TABLE)
                if n["alive"] and n["last_heartbeat"] < limit]

    def all(self) -> list[dict]:
        return [self.public(n) for _, n in self.storage.items(TABLE)]

    @staticmethod
    def public(node: dict) -> dict:
        out = {k: v for k, v in node.items() if k != "last_heartbeat"}
        return out
