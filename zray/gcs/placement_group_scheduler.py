"""Placement-group scheduling (Ray's GcsPlacementGroupScheduler): ``place()``
picks a node for each bundle; the scheduler reserves the bundles of pending
groups on the nodes chosen and returns them when a group is removed."""
from __future__ import annotations

import logging

from ..broker import protocol as p

log = logging.getLogger(__name__)

EPS = 1e-9


def _fits(bundle: dict, free: dict) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in bundle.items())


def _take(bundle: dict, free: dict) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def place(bundles: list[dict], strategy: str, free_by_node: dict) -> list | None:
    """A node id for each bundle, or None if the group cannot be placed now.
    ``free_by_node`` maps node id -> free resources (not modified).

    PACK: all on one node if one holds them, else as few nodes as possible;
    STRICT_PACK: all on one node or nothing; SPREAD: a node not used yet when
    one fits, else the least used; STRICT_SPREAD: each on a different node or
    nothing. Nodes with more free CPU are tried first."""
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


class GcsPlacementGroupScheduler:
    """Reserves and returns bundles through the raylets; the table changes
    through ``PlacementGroupManager``, node availability through ``NodeManager``."""

    def __init__(self, nodes, pgs, sender):
        self.nodes = nodes
        self.pgs = pgs
        self.sender = sender

    def place_pending(self) -> None:
        """Reserve bundles for groups still waiting, where the nodes now fit them."""
        for pg in self.pgs.pending():
            alive = {n.node_id: n for n in self.nodes.alive()}
            free = {nid: n.available for nid, n in alive.items()}
            if pg.strategy == "STRICT_SPREAD":       # keep off the nodes of placed peers
                for node_id in pg.nodes:
                    free.pop(node_id, None)
            missing = [i for i, n in enumerate(pg.nodes) if n is None]
            placement = place([pg.bundles[i] for i in missing], pg.strategy, free)
            if placement is None:
                continue
            for i, node_id in zip(missing, placement):
                self.nodes.reserve(node_id, pg.bundles[i])     # until its next report
                self.sender.send(alive[node_id].address,
                                 p.ReserveBundle(pg.pg_id, i, pg.bundles[i]))
            pg = self.pgs.placed(pg.pg_id, dict(zip(missing, placement)))
            log.info("placement group %s placed on %s", pg.pg_id.hex()[:12],
                     [n.hex()[:12] for n in pg.nodes if n])

    def remove(self, pg_id: bytes) -> bool:
        """Return its bundles to their live nodes and mark it REMOVED; False if
        it is unknown or removed already."""
        pg = self.pgs.removed(pg_id)
        if pg is None:
            return False
        for i, node_id in enumerate(pg.nodes):
            node = self.nodes.get(node_id) if node_id else None
            if node is not None and node.alive:
                self.sender.send(node.address, p.ReturnBundle(pg_id, i))
        return True

    def node_lost(self, node_id: bytes) -> None:
        """Bundles on a dead node go back to pending, and are placed again where they fit."""
        for pg in self.pgs.on_node(node_id):
            self.pgs.lose_node(pg.pg_id, node_id)
            log.warning("placement group %s lost bundles with node %s; placing them again",
                        pg.pg_id.hex()[:12], node_id.hex()[:12])
        self.place_pending()
