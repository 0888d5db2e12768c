"""Placement-group bundles reserved on this node: a bundle's resources are
set aside from the node's and offered again as the group's own
(``CPU_group_<index>_<pg id>``, ...)."""
from __future__ import annotations

import logging

from .resources import ResourceSet, bundle_resources

log = logging.getLogger(__name__)


class BundleManager:
    """Reserve and return bundles against the node's ``ResourceSet``; each
    call says whether it changed anything (a repeated reserve or an unknown
    return does not)."""

    def __init__(self, resources: ResourceSet):
        self.resources = resources
        self._bundles: dict[tuple, dict] = {}           # (pg id, index) -> resources

    def reserve(self, pg_id: bytes, index: int, resources: dict) -> bool:
        key = (pg_id, index)
        if key in self._bundles:
            return False
        self._bundles[key] = dict(resources)
        self.resources.acquire(resources)
        self.resources.add(bundle_resources(pg_id.hex(), index, resources))
        log.info("reserved bundle %d of placement group %s: %s", index, pg_id.hex()[:12],
                 resources)
        return True

    def give_back(self, pg_id: bytes, index: int) -> bool:
        bundle = self._bundles.pop((pg_id, index), None)
        if bundle is None:
            return False
        self.resources.remove(bundle_resources(pg_id.hex(), index, bundle))
        self.resources.release(bundle)
        return True

    def reserved(self) -> dict[tuple, dict]:
        """``(pg id, index) -> resources`` of the bundles held here (a copy)."""
        return {key: dict(value) for key, value in self._bundles.items()}
