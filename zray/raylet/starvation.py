"""No silent hangs: queued work that has waited ``STARVED_AFTER_S`` for
resources nothing will free (they are all held by actors) or for a worker
process (the node's task-worker cap) is reported once to its owner, which
prints it. Work that waits for running tasks to finish is ordinary queueing
and is not reported."""
from __future__ import annotations

import time

from ..broker import protocol as p

#: how long a queued task may wait before its owner is warned (Ray: ~10 s)
STARVED_AFTER_S = 10.0


class Starvation:
    """Watches the heads of the raylet's queues; ``check`` returns the
    ``(spec, text)`` warnings that are due. Not thread-safe (raylet loop)."""

    def __init__(self, node_label: str, after_s: float = STARVED_AFTER_S):
        self.node_label = node_label
        self.after_s = after_s
        self.first_seen: dict[bytes, float] = {}    # task id at a queue's head -> since
        self.warned: set[bytes] = set()

    def check(self, queues: dict, resources, workers, full_at: int | None) -> list[tuple]:
        """``full_at``: the task-worker cap when it is reached now, else None."""
        now = time.monotonic()
        heads = {q[0].task_id: q[0] for q in queues.values() if q}
        self.first_seen = {t: self.first_seen.get(t, now) for t in heads}
        self.warned &= set(heads)
        due = []
        tasks_hold = {}                 # what running tasks (not actors) hold
        actors, actors_hold = 0, {}
        for worker in workers:
            if worker.task is None:
                continue
            target = actors_hold if worker.hosts_actor() else tasks_hold
            actors += worker.hosts_actor()
            for k, v in worker.held.items():
                target[k] = target.get(k, 0.0) + v
        for task_id, spec in heads.items():
            if task_id in self.warned or now - self.first_seen[task_id] < self.after_s:
                continue
            text = self._why(spec, resources, tasks_hold, actors, actors_hold, now, full_at)
            if text:
                self.warned.add(task_id)
                due.append((spec, text))
        return due

    def _why(self, spec, resources, tasks_hold, actors, actors_hold, now, full_at) -> str:
        what = (f"actor {spec.function_name}" if spec.kind == p.TASK_ACTOR_CREATION
                else f"task {spec.function_name}")
        waited = now - self.first_seen[spec.task_id]
        if resources.fits(spec.resources):
            if full_at is not None:
                return (f"{what} has waited {waited:.0f}s for a worker process on node "
                        f"{self.node_label}: the node runs its cap of {full_at} task "
                        f"workers (WORKERS_PER_CPU x CPUs), all busy. It runs when one is "
                        f"free; give the node more CPUs, or run fewer long tasks with "
                        f"num_cpus=0 at once")
            return ""
        short = {k: v - resources.available.get(k, 0.0) for k, v in spec.resources.items()
                 if resources.available.get(k, 0.0) + 1e-9 < v}
        if any(tasks_hold.get(k, 0.0) > 1e-9 for k in short):
            return ""                   # running tasks will give them back
        return (f"the following resource request cannot be scheduled right now: "
                f"{spec.resources} ({what}, waited {waited:.0f}s); the cluster does not "
                f"have the resources {sorted(short)} free and no running task will free "
                f"them: {actors} actor(s) on node {self.node_label} hold {actors_hold} "
                f"(placement groups may reserve the rest). "
                f"Create fewer actors, give actors num_cpus=0 (the default places them "
                f"with 1 CPU and holds none), kill actors you no longer need, or add "
                f"nodes")
