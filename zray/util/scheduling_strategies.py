"""Scheduling strategies, as ``ray.util.scheduling_strategies``."""
from __future__ import annotations


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex); if it is gone, fail — or with
    ``soft=True`` run wherever the default policy picks."""

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        self.node_id = node_id
        self.soft = soft


class PlacementGroupSchedulingStrategy:
    """Run in a bundle of ``placement_group`` (any bundle with index -1)."""

    def __init__(self, placement_group, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None):
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


def placed_resources(request: dict, strategy) -> dict:
    """The resources to ask for under ``strategy`` (renamed into a placement
    group's bundle for PlacementGroupSchedulingStrategy)."""
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        from .placement_group import group_resources
        return group_resources(request, strategy.placement_group,
                               strategy.placement_group_bundle_index)
    return request


def strategy_options(strategy) -> dict:
    """How a strategy travels in a task spec's options."""
    if strategy is None or strategy == "DEFAULT":
        return {}
    if strategy == "SPREAD":
        return {"strategy": "SPREAD"}
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        try:
            node_id = bytes.fromhex(strategy.node_id)
        except (TypeError, ValueError):
            raise ValueError(f"NodeAffinitySchedulingStrategy needs a node id in hex, "
                             f"got {strategy.node_id!r}") from None
        return {"strategy": "NODE", "node_id": node_id, "soft": bool(strategy.soft)}
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return {}          # expressed through the bundle's resources
    raise ValueError(f"unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD', "
                     f"NodeAffinitySchedulingStrategy or PlacementGroupSchedulingStrategy")
