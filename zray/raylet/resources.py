"""Resource accounting of one node: totals, what is free, what fits."""
from __future__ import annotations

EPS = 1e-9


class ResourceSet:
    def __init__(self, total: dict):
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)

    def feasible(self, request: dict) -> bool:
        """Could this node ever run it (ignoring current use)?"""
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in request.items())

    def fits(self, request: dict) -> bool:
        avail = self.available
        for k, v in request.items():
            if avail.get(k, 0.0) + EPS < v:
                return False
        return True

    def acquire(self, request: dict) -> None:
        for k, v in request.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def release(self, request: dict) -> None:
        for k, v in request.items():
            self.available[k] = self.available.get(k, 0.0) + v


def shape_of(request: dict) -> tuple:
    """A hashable key for a resource request (tasks are queued by shape)."""
    return tuple(sorted(request.items()))
