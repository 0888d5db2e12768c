"""Resource accounting of one node: totals, what is free, what fits."""
from __future__ import annotations

from .._private.resource_set import EPS, fits


class ResourceSet:
    def __init__(self, total: dict):
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)

    def feasible(self, request: dict) -> bool:
        """Could this node ever run it (ignoring current use)?"""
        return fits(request, self.total)

    def fits(self, request: dict) -> bool:
        """Does it fit in what is free now?"""
        return fits(request, self.available)

    def slots(self, request: dict) -> int:
        """How many tasks asking ``request`` fit in what is free now."""
        counts = [int((self.available.get(k, 0.0) + EPS) // v) for k, v in request.items() if v]
        return min(counts) if counts else 1 << 30

    def acquire(self, request: dict) -> None:
        for k, v in request.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def release(self, request: dict) -> None:
        for k, v in request.items():
            self.available[k] = self.available.get(k, 0.0) + v


    def add(self, resources: dict) -> None:
        """New resources on this node (a placement group bundle's)."""
        for k, v in resources.items():
            self.total[k] = self.total.get(k, 0.0) + v
            self.available[k] = self.available.get(k, 0.0) + v

    def remove(self, resources: dict) -> None:
        for k, v in resources.items():
            for table in (self.total, self.available):
                left = table.get(k, 0.0) - v
                if left > EPS:
                    table[k] = left
                else:
                    table.pop(k, None)


def bundle_resources(pg_hex: str, index: int, bundle: dict) -> dict:
    """The names a reserved bundle's resources go by (as in Ray): per bundle
    ``CPU_group_<i>_<pg>``, for the group ``CPU_group_<pg>``, and a marker
    ``bundle_group_...`` that tasks with no other need ask a little of."""
    out = {}
    for name, amount in bundle.items():
        out[f"{name}_group_{index}_{pg_hex}"] = amount
        out[f"{name}_group_{pg_hex}"] = amount
    out[f"bundle_group_{index}_{pg_hex}"] = 1000.0
    out[f"bundle_group_{pg_hex}"] = 1000.0
    return out


def shape_of(request: dict) -> tuple:
    """A hashable key for a resource request (tasks are queued by shape)."""
    return tuple(sorted(request.items()))
