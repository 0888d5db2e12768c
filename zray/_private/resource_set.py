"""Whether a resource request fits what a node has: the one check the GCS
(placing actors and bundles) and the raylets (queueing and spilling tasks)
share, with the same tolerance for float arithmetic."""
from __future__ import annotations

#: amounts within this of each other are equal (0.1 + 0.2 CPU fits in 0.3)
EPS = 1e-9


def fits(request: dict, have: dict) -> bool:
    """True when every amount of ``request`` is at most what ``have`` has of
    that resource (a resource ``have`` lacks counts as 0)."""
    for name, amount in request.items():
        if have.get(name, 0.0) + EPS < amount:
            return False
    return True
