"""The raylet's local task manager: tasks queued by resource shape, handed
to idle workers of their job, spilled to other nodes, parked while no node
can fit them, and waiting for their stored arguments to be pulled here.

It owns its queues; the raylet gives it the node's parts (resources, worker
pool, cluster view, store service, object transfer) and four callbacks:
``send(endpoint, message)`` (one-way, to another raylet or a core worker),
``endpoint_of(address)`` (where a core worker is reached from here),
``send_to_worker(identity, message) -> bool`` and ``worker_lost(worker)`` (a
worker that could not be sent its task).
"""
from __future__ import annotations

import collections
import itertools
import logging
import time

from ..broker import protocol as p
from ..config import config
from ..store.object_table import ObjectStoreFullError
from .resources import shape_of
from .starvation import Starvation
from .worker_pool import BUSY

log = logging.getLogger(__name__)

#: cap on workers per CPU (workers blocked in get() do not count)
WORKERS_PER_CPU = 4


class _WaitingTask:
    """A task whose stored arguments are being brought here."""
    __slots__ = ("spec", "missing", "ok", "full_error")

    def __init__(self, spec, missing: int):
        self.spec, self.missing, self.ok, self.full_error = spec, missing, True, ""


class LocalTaskManager:
    """Scheduling on one node. ``node_id`` is the node's current id (the
    raylet changes it when it rejoins the cluster)."""

    def __init__(self, node_id: bytes, resources, num_cpus: int, pool, view, store, transfer,
                 send, endpoint_of, send_to_worker, worker_lost):
        self.node_id = node_id
        self.resources, self.num_cpus = resources, num_cpus
        self.pool, self.view, self.store, self.transfer = pool, view, store, transfer
        self._send, self._endpoint_of = send, endpoint_of
        self._send_to_worker = send_to_worker
        self._worker_lost = worker_lost
        self.queues: dict[tuple, collections.deque] = {}
        self.infeasible: list = []
        self.waiting_args: dict[bytes, _WaitingTask] = {}     # task id -> its wait
        self._later: list = []                          # [(due, fn)]: one-shot timers
        self.warned_infeasible: set[bytes] = set()
        self.starved = Starvation(node_id.hex()[:12])   # lifetimes: no silent hangs

    def _tell_owner(self, owner, message) -> None:
        self._send(self._endpoint_of(owner), message)

    def has_work(self) -> bool:
        """Whether tasks are queued here (waiting for a worker or resources)."""
        return any(self.queues.values())

    def cancel_queued(self, task_id: bytes) -> bool:
        """Drop a task that has not started (its owner is told); False if
        it is not queued here."""
        for queue in [*self.queues.values(), self.infeasible]:
            for spec in queue:
                if spec.task_id == task_id:
                    queue.remove(spec)
                    self._tell_owner(spec.owner, p.TaskFailed(
                        spec.task_id, "TaskCancelledError",
                        f"task {spec.function_name} was cancelled before it ran"))
                    return True
        return False

    def warn_starved(self) -> None:
        """Warn the owners of queued work that waits for what nothing frees."""
        if not any(self.queues.values()):
            return
        cap, room = self.worker_room()
        for spec, text in self.starved.check(self.queues, self.resources,
                                             list(self.pool.workers.values()),
                                             cap if room <= 0 else None):
            log.warning("%s", text)
            self._tell_owner(spec.owner, p.TaskInfeasible(spec.task_id, text))

    def drop_tasks_of(self, owner_id: bytes) -> None:
        """Forget the queued tasks of an owner that is gone."""
        for shape, queue in self.queues.items():
            keep = [s for s in queue if s.owner_address.worker_id != owner_id]
            if len(keep) != len(queue):
                self.queues[shape] = collections.deque(keep)
        self.infeasible = [s for s in self.infeasible
                           if s.owner_address.worker_id != owner_id]

    def has_actor(self, actor_id: bytes) -> bool:
        """Whether this node hosts the actor, or has its creation queued."""
        for worker in self.pool.workers.values():
            spec = worker.task
            if spec is not None and spec.kind == p.TASK_ACTOR_CREATION \
                    and spec.actor_id == actor_id:
                return True
        waiting = (w.spec for w in self.waiting_args.values())
        for spec in itertools.chain(*self.queues.values(), self.infeasible, waiting):
            if spec.kind == p.TASK_ACTOR_CREATION and spec.actor_id == actor_id:
                return True
        return False

    def submit(self, spec) -> None:
        """Run a task here, forward it, or park it as infeasible."""
        if spec.kind == p.TASK_LEASE:
            self._lease(spec)
            return
        target = self._placement(spec)
        if target is None:
            return                          # failed, or parked as infeasible
        if target != self.node_id:
            self._forward(spec, target)
            return
        self._admit(spec)

    def _placement(self, spec) -> bytes | None:
        """The node a newly arrived task should run on (this one, or another)."""
        options = spec.options
        first_hop = not options.get("spilled")
        strategy = options.get("strategy")
        if first_hop and strategy == "SPREAD":
            return self.view.spread(spec.resources, self.resources.total)
        if first_hop and strategy == "NODE":
            node_id = options["node_id"]
            if node_id == self.node_id or self.view.alive(node_id):
                return node_id
            if not options.get("soft"):
                self._tell_owner(spec.owner, p.TaskFailed(
                    spec.task_id, "TaskUnschedulableError",
                    f"task {spec.function_name} must run on node {node_id.hex()}, which is "
                    f"not alive (use soft=True to allow another node)"))
                return None
        if self.resources.feasible(spec.resources):
            return self.node_id
        other = self.view.feasible(spec.resources)
        if other is not None:
            return other.node_id
        self.infeasible.append(spec)
        if spec.task_id not in self.warned_infeasible and not any(
                "_group_" in name for name in spec.resources):   # a placement group pending
            self.warned_infeasible.add(spec.task_id)
            text = (f"task {spec.function_name} needs {spec.resources} but no node of the "
                    f"cluster has that now; it waits until one does")
            log.warning(text)
            self._tell_owner(spec.owner, p.TaskInfeasible(spec.task_id, text))
        return None

    def _lease(self, spec) -> None:
        """A worker lease for a local owner: queued like a task (it holds its
        resources from when a worker takes it until the worker is idle again),
        never forwarded, and only while the node fits it now: refused at once
        if this node can never fit it; if not now, answered LEASE_BUSY when
        another node can (the owner then sends its queued tasks here, to be
        spread), else LEASE_FULL (the owner asks again later)."""
        if not self.resources.feasible(spec.resources):
            self._tell_owner(spec.owner, p.TaskFailed(
                spec.task_id, p.LEASE_REFUSED,
                f"node {self.node_id.hex()[:12]} cannot fit {spec.resources}"))
            return
        if not self.resources.fits(spec.resources):
            self._lease_unfit(spec)
            return
        self._enqueue(spec)

    def _lease_unfit(self, spec) -> None:
        """Tell the owner its lease does not fit now: LEASE_BUSY when another
        node has room, else LEASE_FULL (leases never wait in a queue here)."""
        busy = self.view.has_room(spec.resources)
        self._tell_owner(spec.owner, p.TaskFailed(
            spec.task_id, p.LEASE_BUSY if busy else p.LEASE_FULL,
            f"node {self.node_id.hex()[:12]} is full"
            + (" and another node has room" if busy else "")))

    def _forward(self, spec, node_id: bytes) -> None:
        """Spill a task to another raylet; tell its owner where it went."""
        options = dict(spec.options)
        options["spilled"] = options.get("spilled", 0) + 1
        spec = spec._replace(options=options)
        address = self.view.address(node_id)
        if address is None:
            self._admit(spec)
            return
        self._send(address, p.SubmitTask(list(spec)))
        self._tell_owner(spec.owner, p.TaskPlaced(spec.task_id, node_id))

    def _admit(self, spec) -> None:
        """Queue a task that runs here, once its stored arguments are local."""
        stored = [arg for arg in map(p.task_arg, spec.args) if arg.kind == p.ARG_STORED]
        missing = [arg for arg in stored if not self.store.contains(arg.object_id)]
        if not missing:
            self._enqueue(spec)
            return
        self.waiting_args[spec.task_id] = _WaitingTask(spec, len(missing))
        for arg in missing:
            object_id = arg.object_id
            done = (lambda ok, task_id=spec.task_id: self._arg_pulled(task_id, ok))
            if arg.node_id != self.node_id:
                self._pull_arg(spec.task_id, object_id, arg.node_id, arg.size)
            elif self.store.is_being_created(object_id):
                # Written here, its seal not seen yet (seals are one-way and
                # may arrive after the task): never pull from ourselves.
                self.store.when_sealed(object_id, done)
            else:
                done(False)

    def _pull_arg(self, task_id: bytes, object_id: bytes, source: bytes, size: int,
                  started: float | None = None, delay: float = 0.0) -> None:
        """Pull a task's argument here. A pull that fails while this store
        has no room for it (full of pinned or half-written objects) is tried
        again with backoff for up to ``object_store_full_timeout_s``; only
        then does the task fail, with ObjectStoreFullError."""
        if task_id not in self.waiting_args:
            return                          # it failed or was dropped meanwhile
        started = time.monotonic() if started is None else started

        def done(ok: bool) -> None:
            if ok or task_id not in self.waiting_args or self.store.has_room(size) \
                    or not self.view.alive(source):
                return self._arg_pulled(task_id, ok)
            waited = time.monotonic() - started
            if waited >= config.object_store_full_timeout_s:
                return self._arg_pulled(task_id, False, (
                    f"{size / 2**20:.1f} MiB do not fit after waiting {waited:.1f}s "
                    f"(object_store_full_timeout_s): {self.store.busy_report()}. Drop the "
                    f"ObjectRefs and arrays that pin them, or raise object_store_memory"))
            wait = min(max(delay * 2, config.object_store_full_delay_ms / 1000), 1.0)
            self._later.append((time.monotonic() + wait, lambda: self._pull_arg(
                task_id, object_id, source, size, started, wait)))

        self.transfer.pull(object_id, source, done)

    def run_later(self) -> None:
        """Run the one-shot timers that are due."""
        if not self._later:
            return
        now = time.monotonic()
        due = [fn for when, fn in self._later if when <= now]
        self._later = [(when, fn) for when, fn in self._later if when > now]
        for fn in due:
            try:
                fn()
            except Exception:
                log.exception("a delayed retry failed")

    def _arg_pulled(self, task_id: bytes, ok: bool, full_error: str = "") -> None:
        waiting = self.waiting_args.get(task_id)
        if waiting is None:
            return
        waiting.missing -= 1
        waiting.ok = waiting.ok and ok
        waiting.full_error = waiting.full_error or full_error
        if waiting.missing > 0:
            return
        del self.waiting_args[task_id]
        spec = waiting.spec
        if waiting.ok:
            self._enqueue(spec)
        elif waiting.full_error:
            self._tell_owner(spec.owner, p.TaskFailed(
                spec.task_id, "ObjectStoreFullError",
                f"no room on node {self.node_id.hex()[:12]} to fetch an argument of "
                f"{spec.function_name}: {waiting.full_error}"))
        else:
            self._tell_owner(spec.owner, p.TaskFailed(
                spec.task_id, "ObjectLostError",
                f"an argument of {spec.function_name} could not be fetched from its node"))

    def _enqueue(self, spec) -> None:
        shape = shape_of(spec.resources)
        queue = self.queues.get(shape)
        if queue is None:
            queue = self.queues[shape] = collections.deque()
        queue.append(spec)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand queued tasks to idle workers while resources fit."""
        wanted = for_actors = 0
        for shape, queue in self.queues.items():
            if not queue:
                continue
            # a lease that fit when it came but lost its CPU to work ahead of it
            while queue and queue[0].kind == p.TASK_LEASE \
                    and not self.resources.fits(queue[0].resources):
                self._lease_unfit(queue.popleft())
            if not queue:
                continue
            request = queue[0].resources
            while queue and self.resources.fits(request):
                spec = queue[0]
                worker = self.pool.pop_idle(spec.job_id)
                if worker is None:
                    n = min(len(queue), self.resources.slots(request))
                    wanted += n
                    for_actors += sum(1 for s in itertools.islice(queue, n)
                                      if s.kind == p.TASK_ACTOR_CREATION)
                    break
                queue.popleft()
                self._assign(worker, spec)
            while queue and not self.resources.fits(request) and self._may_spill(queue[0]):
                other = self.view.with_room(request)
                if other is None:
                    break
                self._forward(queue.popleft(), other.node_id)
        if wanted:
            self._grow(wanted, for_actors)

    @staticmethod
    def _may_spill(spec) -> bool:
        """Tasks move at most twice, and never actor creations, leases or pinned tasks."""
        return (spec.kind not in (p.TASK_ACTOR_CREATION, p.TASK_LEASE)
                and spec.options.get("spilled", 0) < 2
                and spec.options.get("strategy") != "NODE")

    def _assign(self, worker, spec) -> None:
        worker.state = BUSY
        spec = self._pin_stored_args(spec, worker)
        worker.task = spec
        worker.held = _held_resources(spec)
        worker.cancelled = False
        self.resources.acquire(worker.held)
        if not self._send_to_worker(worker.task_identity, p.ExecuteTask(list(spec))):
            self._worker_lost(worker)
        elif spec.kind == p.TASK_ACTOR_CREATION \
                and self.pool.live_task_workers() < max(self.num_cpus, 1):
            self.pool.start_worker()    # it stays an actor: keep the task pool warm

    def _pin_stored_args(self, spec, worker):
        """Pin the task's arguments in the store for the worker and tell it
        where they are, which saves it a request per argument."""
        if worker.rpc_identity is None:
            return spec
        args = spec.args
        for i, values in enumerate(args):
            arg = p.task_arg(values)
            if arg.kind == p.ARG_STORED and arg.offset < 0:
                try:
                    loc = self.store.pin(arg.object_id, worker.rpc_identity)
                except ObjectStoreFullError:
                    loc = None      # the worker asks itself (and may read the spill file)
                if loc is not None:
                    args[i] = list(arg._replace(offset=loc.offset))
        return spec

    def worker_room(self) -> tuple[int, int]:
        """The task-worker cap (workers blocked in get() raise it) and how
        many more task workers it allows; actor workers are not capped."""
        blocked = sum(1 for w in self.pool.workers.values() if w.blocked and not w.hosts_actor())
        cap = max(self.num_cpus, 1) * WORKERS_PER_CPU + blocked
        return cap, cap - self.pool.live_task_workers()

    def _grow(self, wanted: int, for_actors: int = 0) -> None:
        """Start workers for ``wanted`` queued tasks, within the task-worker
        cap except for the ``for_actors`` of them that create actors."""
        starting = self.pool.starting()
        cap, room = self.worker_room()
        need = max(min(wanted - starting, room), for_actors - starting)
        if need <= 0 and room <= 0 and starting == 0:
            # full of idle workers bound to other jobs: retire one
            spec_job = next((q[0].job_id for q in self.queues.values() if q), None)
            other = self.pool.idle_of_other_jobs(spec_job)
            if other is not None:
                self.pool.kill(other)
        for _ in range(max(0, need)):
            self.pool.start_worker()

    def retry_infeasible(self) -> None:
        """Parked tasks may fit now (a node joined, a bundle was reserved)."""
        parked, self.infeasible = self.infeasible, []
        for spec in parked:
            self.submit(spec)


def _held_resources(spec) -> dict:
    """What a task holds while it runs: its request, except for an actor
    placed with Ray's default (1 CPU to place it, ``held_resources`` after)."""
    held = spec.options.get("held_resources") if spec.kind == p.TASK_ACTOR_CREATION else None
    return dict(spec.resources if held is None else held)
