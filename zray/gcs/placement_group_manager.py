"""The placement group table: each group's bundles, the node each bundle is
reserved on, and its state (PENDING until every bundle has a node, then
CREATED; REMOVED at the end). Bundles of a dead node go back to PENDING."""
from __future__ import annotations

import time

TABLE = "placement_groups"
PENDING, CREATED, REMOVED = "PENDING", "CREATED", "REMOVED"
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
EPS = 1e-9


def _fits(bundle: dict, free: dict) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in bundle.items())


def _take(bundle: dict, free: dict) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def place(bundles: list[dict], strategy: str, free_by_node: dict) -> list | None:
    """A node id for each bundle, or None if the group cannot be placed now.
    ``free_by_node`` maps node id -> free resources (not modified)."""
    free = {nid: dict(av) for nid, av in free_by_node.items()}
    by_room = sorted(free, key=lambda nid: -free[nid].get("CPU", 0.0))
    if strategy in ("PACK", "STRICT_PACK"):
        for nid in by_room:                   # all on one node if any can hold them
            trial = dict(free[nid])
            if all(_fits(b, trial) and _take(b, trial) is None for b in bundles):
                return [nid] * len(bundles)
        if strategy == "STRICT_PACK":
            return None
    placement: list = []
    used: dict = {}
    for bundle in bundles:
        fit = [nid for nid in by_room if _fits(bundle, free[nid])]
        if not fit:
            return None
        if strategy == "PACK":               # fewest nodes: reuse a node in use
            chosen = next((nid for nid in fit if nid in used), fit[0])
        else:                                # SPREAD: a node not used yet, if any
            fresh = [nid for nid in fit if nid not in used]
            if not fresh and strategy == "STRICT_SPREAD":
                return None
            chosen = fresh[0] if fresh else min(fit, key=lambda nid: used[nid])
        _take(bundle, free[chosen])
        used[chosen] = used.get(chosen, 0) + 1
        placement.append(chosen)
    return placement


class PlacementGroupManager:
    def __init__(self, storage):
        self.storage = storage

    def create(self, msg) -> dict:
        pg = {"pg_id": msg.pg_id, "name": msg.name, "bundles": [dict(b) for b in msg.bundles],
              "strategy": msg.strategy, "job_id": msg.job_id, "detached": msg.detached,
              "state": PENDING, "nodes": [None] * len(msg.bundles),
              "created_at": time.time()}
        self.storage.put(TABLE, msg.pg_id, pg)
        return pg

    def get(self, pg_id: bytes) -> dict | None:
        return self.storage.get(TABLE, pg_id)

    def named(self, name: str) -> dict | None:
        return next((pg for _, pg in self.storage.items(TABLE)
                     if pg["name"] == name and pg["state"] != REMOVED), None)

    def pending(self) -> list[dict]:
        return [pg for _, pg in self.storage.items(TABLE) if pg["state"] == PENDING]

    def all(self) -> list[dict]:
        return [pg for _, pg in self.storage.items(TABLE)]

    def of_job(self, job_id: bytes) -> list[dict]:
        return [pg for _, pg in self.storage.items(TABLE)
                if pg["job_id"] == job_id and not pg["detached"] and pg["state"] != REMOVED]

    def on_node(self, node_id: bytes) -> list[dict]:
        return [pg for _, pg in self.storage.items(TABLE)
                if pg["state"] != REMOVED and node_id in pg["nodes"]]

    @staticmethod
    def public(pg: dict) -> dict:
        return {"placement_group_id": pg["pg_id"].hex(), "name": pg["name"],
                "strategy": pg["strategy"], "state": pg["state"],
                "bundles": {i: b for i, b in enumerate(pg["bundles"])},
                "bundles_to_node_id": {i: (n.hex() if n else None)
                                       for i, n in enumerate(pg["nodes"])}}
