"""Utilities on top of the core API, as in ``ray.util``."""
from .actor_pool import ActorPool
from .placement_group import (PlacementGroup, get_placement_group, placement_group,
                              placement_group_table, remove_placement_group)
from . import scheduling_strategies

__all__ = ["ActorPool", "PlacementGroup", "get_placement_group", "placement_group",
           "placement_group_table", "remove_placement_group", "scheduling_strategies"]
