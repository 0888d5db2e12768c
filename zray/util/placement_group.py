"""Placement groups, as ``ray.util.placement_group``: reserve bundles of
resources across nodes, then run tasks and actors inside them."""
from __future__ import annotations

import numbers
import os

import zray

from ..broker import protocol as p
from ..broker.rpc import RemoteError
from ..worker.global_state import require_worker

STRATEGIES = p.PG_STRATEGIES


class PlacementGroup:
    def __init__(self, pg_id: bytes, bundles: list[dict]):
        self.id = pg_id
        self.bundle_specs = bundles
        self._ready_ref = None

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that is ready once every bundle is reserved."""
        if self._ready_ref is None:
            self._ready_ref = _ready_task().options(
                num_cpus=0,
                scheduling_strategy=zray.util.scheduling_strategies
                .PlacementGroupSchedulingStrategy(self)).remote()
        return self._ready_ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True once the group is created, False if ``timeout_seconds`` pass first."""
        ready, _ = zray.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)

    def __reduce__(self):
        return PlacementGroup, (self.id, self.bundle_specs)

    def __repr__(self):
        return f"PlacementGroup({self.id.hex()})"


def _ready():
    return True


_ready_remote = None


def _ready_task():
    """The tiny task ``ready()`` runs inside the group (made on first use)."""
    global _ready_remote
    if _ready_remote is None:
        _ready_remote = zray.remote(max_retries=0)(_ready)
    return _ready_remote


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node=None,
                    **_) -> PlacementGroup:
    """Reserve ``bundles`` (dicts of resource -> amount) on the cluster's
    nodes by ``strategy``; a group that cannot be placed yet stays pending."""
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("bundles must be a non-empty list of resource dicts, "
                         "e.g. [{'CPU': 1}, {'CPU': 1}]")
    for bundle in bundles:
        if not isinstance(bundle, dict) or not bundle:
            raise ValueError(f"each bundle must be a non-empty dict of resources, got {bundle!r}")
        for key, amount in bundle.items():
            if not isinstance(amount, numbers.Number) or amount < 0:
                raise ValueError(f"bundle resource {key!r} must be a number >= 0, "
                                 f"got {amount!r}")
        if all(amount == 0 for amount in bundle.values()):
            raise ValueError(f"bundle {bundle!r} asks for nothing")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    worker = require_worker()
    pg_id = os.urandom(16)
    bundles = [{k: float(v) for k, v in b.items()} for b in bundles]
    try:
        worker.gcs.call(p.CreatePlacementGroup(pg_id, bundles, strategy, name or "",
                                               worker.job_id, lifetime == "detached"))
    except RemoteError as err:
        if err.error_type == "ValueError":
            raise ValueError(err.message) from None
        raise
    return PlacementGroup(pg_id, bundles)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's resources back; tasks still running in it go on."""
    require_worker().gcs.call(p.RemovePlacementGroup(placement_group.id))


def get_placement_group(name: str) -> PlacementGroup:
    found = require_worker().gcs.call(p.GetPlacementGroups(b"", name)).groups
    if not found:
        raise ValueError(f"no placement group named {name!r}")
    return PlacementGroup(found[0].pg_id, found[0].bundles)


def _table_entry(pg: p.PlacementGroupRow) -> dict:
    """A group as Ray's ``placement_group_table()`` shows it."""
    return {"placement_group_id": pg.pg_id.hex(), "name": pg.name,
            "strategy": pg.strategy, "state": pg.state,
            "bundles": dict(enumerate(pg.bundles)),
            "bundles_to_node_id": {i: (n.hex() if n else None) for i, n in enumerate(pg.nodes)}}


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """State of every group (or one): strategy, state, bundles and their nodes."""
    pg_id = placement_group.id if placement_group is not None else b""
    rows = [_table_entry(pg) for pg in
            require_worker().gcs.call(p.GetPlacementGroups(pg_id, "")).groups]
    if placement_group is not None:
        return rows[0] if rows else {}
    return {row["placement_group_id"]: row for row in rows}


def group_resources(request: dict, pg: PlacementGroup, index: int) -> dict:
    """A task's resource request, renamed to draw from the group's bundle(s)."""
    if index >= pg.bundle_count:
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the group "
                         f"has {pg.bundle_count} bundle(s)")
    pg_hex = pg.id.hex()
    suffix = f"{index}_{pg_hex}" if index >= 0 else pg_hex
    out = {f"{name}_group_{suffix}": amount for name, amount in request.items()}
    out[f"bundle_group_{suffix}"] = 0.001
    return out
