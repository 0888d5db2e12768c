"""Actor scheduling (Ray's GcsActorScheduler): choose a live node for an
actor's creation task and send it there; actors no live node can host wait
until a node joins."""
from __future__ import annotations

import logging
import time

from ..broker import protocol as p
from . import rows

log = logging.getLogger(__name__)


def pick_node(spec: p.TaskSpec, alive: list[p.NodeRow], actors_by_node: dict[bytes, int]):
    """The node row to create the actor on; None when no live node has the
    resources it needs, or "affinity" when its hard node affinity names a node
    that cannot host it. Default: the node with the most free CPU; SPREAD: the
    node with the fewest live actors; NODE: the node named (soft: else default)."""
    fits = [n for n in alive if all(n.resources.get(k, 0.0) >= v
                                    for k, v in spec.resources.items())]
    if not fits:
        return None
    options = spec.options
    strategy = options.get("strategy")
    if strategy == "NODE":
        wanted = [n for n in fits if n.node_id == options.get("node_id")]
        if wanted:
            return wanted[0]
        if not options.get("soft"):
            return "affinity"
    elif strategy == "SPREAD":
        return min(fits, key=lambda n: actors_by_node.get(n.node_id, 0))
    return max(fits, key=lambda n: n.available.get("CPU", 0.0))


class GcsActorScheduler:
    """Sends creation tasks to raylets. ``on_changed(actor)`` is called when
    scheduling itself ends an actor (a hard affinity that cannot be met)."""

    def __init__(self, nodes, actors, sender, task_events, on_changed):
        self.nodes = nodes
        self.actors = actors
        self.sender = sender
        self.task_events = task_events
        self.on_changed = on_changed
        self.unscheduled: list[bytes] = []       # actors no live node can host yet

    def schedule(self, actor: p.ActorRow) -> None:
        """Send the actor's creation task to the node ``pick_node`` chooses."""
        spec = p.task_spec(rows.plain(actor.spec))     # the wire check wants plain lists
        spread = spec.options.get("strategy") == "SPREAD"
        node = pick_node(spec, self.nodes.alive(),
                         self.actors.alive_count_by_node() if spread else {})
        if node is None:
            log.warning("actor %s needs %s: no live node has that; it waits",
                        actor.actor_id.hex()[:12], spec.resources)
            if actor.actor_id not in self.unscheduled:
                self.unscheduled.append(actor.actor_id)
            return
        if node == "affinity":
            dead, _ = self.actors.died(actor.actor_id, "its node affinity names a node "
                                       "that is not alive", True)
            if dead is not None:
                self.on_changed(dead)
            return
        spec = spec._replace(attempt=actor.restarts)
        self.task_events.record(spec.task_id, spec.attempt, p.TS_PENDING_NODE_ASSIGNMENT,
                                time.time(), {
                                    "name": f"{spec.function_name}.__init__",
                                    "type": p.TASK_ACTOR_CREATION, "job_id": spec.job_id,
                                    "actor_id": spec.actor_id,
                                    "required_resources": spec.resources})
        self.actors.scheduled(actor.actor_id, node.node_id)
        self.sender.send(node.address, p.SubmitTask(list(spec)))

    def retry_unscheduled(self) -> None:
        """Try again the actors that waited for a node (one that fails never stops the others)."""
        waiting, self.unscheduled = self.unscheduled, []
        for actor_id in waiting:
            actor = self.actors.get(actor_id)
            if actor is not None and actor.state != p.ACTOR_DEAD:
                try:
                    self.schedule(actor)
                except Exception:
                    log.exception("actor %s: cannot schedule it", actor_id.hex()[:12])
