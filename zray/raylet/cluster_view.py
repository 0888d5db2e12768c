"""The other nodes, as the GCS event stream describes them: where they are,
what they have and what is free. A raylet uses it to send work it cannot run
(spillback), to spread tasks, and to find the node an object lives on."""
from __future__ import annotations

import itertools

from .._private.resource_set import fits
from ..broker import protocol as p


class NodeView:
    __slots__ = ("node_id", "address", "data_address", "total", "available", "alive")

    def __init__(self, node_id: bytes, address: str, data_address: str, total: dict,
                 available: dict, alive: bool):
        self.node_id = node_id
        self.address = address
        self.data_address = data_address
        self.total = dict(total)
        self.available = dict(available)
        self.alive = alive


class ClusterView:
    def __init__(self, my_node_id: bytes):
        self.me = my_node_id
        self.nodes: dict[bytes, NodeView] = {}
        self._spread = itertools.count()

    def load(self, nodes: list[p.NodeRow]) -> None:
        for n in nodes:
            self.nodes[n.node_id] = NodeView(n.node_id, n.address, n.data_address,
                                             n.resources, n.available, n.alive)

    def on_node_event(self, event: p.NodeEvent) -> bytes | None:
        """Apply an added/removed event; returns the id of a node that died."""
        n = event.node
        if event.event == p.NODE_ADDED:
            self.nodes[n.node_id] = NodeView(n.node_id, n.address, n.data_address,
                                             n.resources, n.available, True)
            return None
        view = self.nodes.get(n.node_id)
        if view is not None:
            view.alive = False
        return n.node_id

    def on_resources(self, event: p.ResourcesEvent) -> None:
        view = self.nodes.get(event.node_id)
        if view is not None and view.alive:
            view.available = dict(event.available)
            view.total = dict(event.total)

    def alive(self, node_id: bytes) -> bool:
        view = self.nodes.get(node_id)
        return view is not None and view.alive

    def address(self, node_id: bytes) -> str | None:
        view = self.nodes.get(node_id)
        return view.address if view is not None and view.alive else None

    def data_address(self, node_id: bytes) -> str | None:
        view = self.nodes.get(node_id)
        return view.data_address if view is not None and view.alive else None

    def _others(self):
        return [v for v in self.nodes.values() if v.alive and v.node_id != self.me]

    def with_room(self, request: dict) -> NodeView | None:
        """A remote node that can run ``request`` now (most free CPU first);
        its free resources are reduced here until its next report."""
        best = None
        for view in self._others():
            if fits(request, view.available) and (
                    best is None or view.available.get("CPU", 0) > best.available.get("CPU", 0)):
                best = view
        if best is not None:
            for k, v in request.items():
                best.available[k] = best.available.get(k, 0.0) - v
        return best

    def has_room(self, request: dict) -> bool:
        """Whether a remote node can run ``request`` now (as last reported)."""
        return any(fits(request, view.available) for view in self._others())

    def feasible(self, request: dict) -> NodeView | None:
        """A remote node that could ever run ``request``."""
        return next((v for v in self._others() if fits(request, v.total)), None)

    def spread(self, request: dict, my_total: dict) -> bytes:
        """The next node, round robin over those that could run ``request``."""
        ids = sorted(v.node_id for v in self.nodes.values()
                     if v.alive and fits(request, my_total if v.node_id == self.me else v.total))
        if not ids:
            return self.me
        return ids[next(self._spread) % len(ids)]
