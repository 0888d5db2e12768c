"""The raylet process: one ROUTER for the node's drivers and workers.

It queues tasks by resource shape, hands each to an idle worker of its job
(workers pull: an idle worker says ``WorkerReady``), serves the node's object
store, reports to the GCS, and cleans up after processes that die.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import socket
import time

import psutil
import zmq


from ..broker import protocol as p
from ..broker import sockets
from ..broker.rpc import RpcClient, Sender
from ..broker.service import Service
from ..config import config
from .._private.session import (actor_ipc, inbox_ipc, log_path, raylet_ipc, route, session_name,
                       spill_dir)
from ..store import Arena, ObjectStore, arena_path
from ..store.object_table import ObjectExistsError, ObjectStoreFullError
from .._private.pids import pid_alive
from .cluster_view import ClusterView
from .gcs_health import GcsHealth
from .stale_arenas import remove_stale_arenas
from .starvation import Starvation
from .object_transfer import ObjectTransfer
from .resources import ResourceSet, bundle_resources, shape_of
from .worker_pool import BUSY, IDLE, WorkerPool, start_zygote

log = logging.getLogger(__name__)

#: interval between heartbeats while the GCS does not answer
UNREACHABLE_BEAT_S = 5.0
#: cap on workers per CPU (workers blocked in get() do not count)
WORKERS_PER_CPU = 4


class Client:
    """A driver or worker connected to this raylet."""
    __slots__ = ("kind", "worker_id", "pid", "job_id", "inbox", "identity")

    def __init__(self, kind, worker_id, pid, job_id, inbox, identity):
        self.kind, self.worker_id, self.pid = kind, worker_id, pid
        self.job_id, self.inbox, self.identity = job_id, inbox, identity


class Raylet(Service):
    name = "raylet"

    def __init__(self, gcs_address: str, session_dir: str, node_id: bytes, resources: dict,
                 object_store_memory: int, node_ip: str = "127.0.0.1", zygote=None):
        super().__init__()
        self.node_id = node_id
        self.node_ip = node_ip
        self.session_dir = session_dir
        self.gcs_address = gcs_address
        self.endpoint = raylet_ipc(session_dir, node_id)
        if zygote is None:
            zygote = start_zygote(self.endpoint, session_dir, node_id.hex(),
                                  log_path(session_dir, f"zygote_{node_id.hex()[:12]}.err"))
        self.pool = WorkerPool(zygote)
        remove_stale_arenas(os.path.dirname(session_dir.rstrip("/")))   # of killed raylets
        self.arena = Arena.create(arena_path(session_name(session_dir), node_id.hex()),
                                  object_store_memory)
        self.store = ObjectStore(self.arena, spill_dir(session_dir, node_id.hex()),
                                 describe_client=self._describe_client)
        self._last_full_log = 0.0
        self.resources = ResourceSet(resources)
        self.num_cpus = int(resources.get("CPU", 0))
        self.queues: dict[tuple, collections.deque] = {}
        self.infeasible: list = []
        self.clients: dict[bytes, Client] = {}          # rpc identity -> client
        self.by_worker_id: dict[bytes, Client] = {}
        self.object_owner: dict[bytes, bytes] = {}      # object id -> owner worker id
        self.owned_objects: dict[bytes, set] = {}       # owner worker id -> object ids
        self.pins_waiting_seal: dict[bytes, list] = {}  # object id -> [(req, PinObjects)]
        self.unsealed: dict[bytes, set] = {}            # writer identity -> object ids
        self.seal_waiters: dict[bytes, list] = {}       # object id -> [callback(ok)]
        self.sender = Sender()
        router, _ = sockets.server_router(self.endpoint)
        self.serve(router)                      # local drivers and workers (IPC)
        self.peer_router, self.tcp_endpoint = sockets.server_router(f"tcp://{node_ip}:0")
        self.serve(self.peer_router)            # the GCS and other raylets (TCP)
        self.watch(self.pool.fd, lambda fd: self._on_zygote())
        self.gcs = RpcClient(sockets.tcp_endpoint(gcs_address), config.rpc_timeout_s, "GCS")
        self.view = ClusterView(node_id)
        self.transfer = ObjectTransfer(self, node_ip)
        self.waiting_args: dict[bytes, list] = {}      # task id -> [spec, missing count,
                                                       #   all ok, store-full error]
        self._later: list = []                          # [(due, fn)]: one-shot timers
        self.bundles: dict[tuple, dict] = {}           # (pg id, index) -> bundle
        self.warned_infeasible: set[bytes] = set()
        self.events = None
        self._heartbeat = None
        self._last_report = None
        self.every(0.1, self.report)
        self.every(1.0, self.check_clients)
        self.starved = Starvation(node_id.hex()[:12])   # lifetimes: no silent hangs
        self.every(1.0, self._warn_starved)
        self.every(0.05, self._run_later)
        self.gcs_health = GcsHealth(gcs_address)        # logs when the GCS goes silent
        self.every(1.0, self.gcs_health.check)
        self._gcs_reconnections = 0                     # storage: GCS restarts seen
        self.every(0.2, self._catch_up_with_gcs)

    # ---------------------------------------------------------------- start
    def start(self) -> None:
        reply = self.gcs.call(p.RegisterNode(
            self.node_id, self.tcp_endpoint, self.transfer.endpoint, self.node_ip,
            socket.gethostname(), os.getpid(), self.resources.total, self.arena.size,
            self.session_dir), timeout=config.connect_timeout_s)
        self.pub_address = reply.pub_address
        self.events = sockets.subscriber(self.pub_address, [p.TOPIC_NODE, p.TOPIC_RESOURCES])
        self.watch(self.events, self._on_events)
        self._heartbeat = sockets.dealer(sockets.tcp_endpoint(self.gcs_address))
        self.watch(self._heartbeat, self._on_heartbeat_reply)
        self.view.load(self.gcs.call(p.GetNodes()).value)
        for _ in range(max(self.num_cpus, 1)):
            self.pool.start_worker()
        log.info("raylet %s serving at %s with %s", self.node_id.hex()[:12], self.endpoint,
                 self.resources.total)

    # -------------------------------------------------------------- clients
    def endpoint_of(self, address) -> str:
        """Where to reach the core worker at ``address`` from this node."""
        return route(address, self.node_id, self.session_dir)

    def handle_register_client(self, req, msg: p.RegisterClient):
        client = Client(msg.kind, msg.worker_id, msg.pid, msg.job_id, msg.inbox, req.identity)
        self.clients[req.identity] = client
        self.by_worker_id[msg.worker_id] = client
        worker = self.pool.workers.get(msg.worker_id)
        if worker is not None:
            worker.rpc_identity = req.identity
            worker.inbox = msg.inbox
        self.reply(req, p.RegisterClientReply(
            self.node_id, self.arena.path, self.arena.size, self.gcs_address,
            self.session_dir, self.node_ip, self.pub_address, os.getpid()))

    def handle_disconnect_client(self, req, msg: p.DisconnectClient):
        client = self.by_worker_id.get(msg.worker_id)
        if client is not None:
            self._client_gone(client, "disconnected")

    def check_clients(self) -> None:
        """Drivers are not our children: notice their death by pid. Stop
        workers idle for long beyond the node's CPU count."""
        for client in list(self.clients.values()):
            if client.kind == "driver" and not pid_alive(client.pid):
                self._client_gone(client, "died")
        idle = sorted((w for w in self.pool.workers.values() if w.state == IDLE and not w.owns),
                      key=lambda w: w.idle_since)
        surplus = len(idle) - max(self.num_cpus, 1)
        limit = time.monotonic() - config.idle_worker_timeout_s
        for worker in idle[:max(0, surplus)]:
            if worker.idle_since < limit:
                self.pool.kill(worker)

    def _remove_sockets_of(self, worker_id: bytes) -> None:
        """Socket files of a process that cannot remove them itself (killed)."""
        for path in (inbox_ipc(self.session_dir, worker_id),
                     actor_ipc(self.session_dir, worker_id)):
            try:
                os.unlink(path[len("ipc://"):])
            except OSError:
                pass

    def _client_gone(self, client: Client, how: str) -> None:
        if how == "died":
            self._remove_sockets_of(client.worker_id)
        self.clients.pop(client.identity, None)
        self.by_worker_id.pop(client.worker_id, None)
        self.store.release_client(client.identity)
        for object_id in self.unsealed.pop(client.identity, ()):
            self.store.abort(object_id)       # its writer died mid-write
            for req, msg in self.pins_waiting_seal.pop(object_id, ()):
                self.handle_pin_objects(req, msg)
            for done in self.seal_waiters.pop(object_id, ()):
                done(False)
        self._free_owned_by(client.worker_id)
        self._report_worker_died(client, how)
        if client.kind == "driver":
            log.info("driver pid %d %s: ending job %s", client.pid, how, client.job_id.hex())
            self._drop_tasks_of(client.worker_id)
            for worker in list(self.pool.workers.values()):
                if worker.job_id == client.job_id and not _hosts_detached_actor(worker):
                    self.pool.kill(worker)
            try:
                self.gcs.send(p.FinishJob(client.job_id))
            except Exception:
                log.exception("could not tell the GCS job %s finished", client.job_id.hex())

    def _report_worker_died(self, client: Client, how: str) -> None:
        """Tell the GCS a worker or driver of this node is gone: it ends the
        actors it owned and tells every node that waits on its objects."""
        what = "driver" if client.kind == "driver" else "worker"
        try:
            self.gcs.send(p.ReportWorkerDied(
                client.worker_id, self.node_id,
                f"the {what} (pid {client.pid}) on node {self.node_id.hex()[:12]} {how}"))
        except Exception:
            log.exception("could not tell the GCS %s pid %d %s", what, client.pid, how)

    def _warn_starved(self) -> None:
        """Warn the owners of queued work that waits for what nothing frees."""
        if not any(self.queues.values()):
            return
        cap, room = self._worker_room()
        for spec, text in self.starved.check(self.queues, self.resources,
                                             list(self.pool.workers.values()),
                                             cap if room <= 0 else None):
            log.warning("%s", text)
            self.sender.send(self.endpoint_of(spec.owner), p.TaskInfeasible(spec.task_id, text))

    def _drop_tasks_of(self, owner_id: bytes) -> None:
        for shape, queue in self.queues.items():
            keep = [s for s in queue if s.owner[1] != owner_id]
            if len(keep) != len(queue):
                self.queues[shape] = collections.deque(keep)
        self.infeasible = [s for s in self.infeasible if s.owner[1] != owner_id]

    # ---------------------------------------------------------------- tasks
    def handle_submit_task(self, req, msg: p.SubmitTask):
        spec = p.task_spec(msg.spec)
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
                self.sender.send(self.endpoint_of(spec.owner), p.TaskFailed(
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
            self.sender.send(self.endpoint_of(spec.owner), p.TaskInfeasible(spec.task_id, text))
        return None

    def _forward(self, spec, node_id: bytes) -> None:
        """Spill a task to another raylet; tell its owner where it went."""
        options = dict(spec.options)
        options["spilled"] = options.get("spilled", 0) + 1
        spec = spec._replace(options=options)
        address = self.view.address(node_id)
        if address is None:
            self._admit(spec)
            return
        self.sender.send(address, p.SubmitTask(list(spec)))
        self.sender.send(self.endpoint_of(spec.owner), p.TaskPlaced(spec.task_id, node_id))

    def _admit(self, spec) -> None:
        """Queue a task that runs here, once its stored arguments are local."""
        missing = [(arg[1], arg[3]) for arg in spec.args
                   if arg[0] == p.ARG_STORED and not self.store.contains(arg[1])]
        if not missing:
            self._enqueue(spec)
            return
        self.waiting_args[spec.task_id] = [spec, len(missing), True, ""]
        sizes = {arg[1]: arg[2] for arg in spec.args if arg[0] == p.ARG_STORED}
        for object_id, source in missing:
            done = (lambda ok, task_id=spec.task_id: self._arg_pulled(task_id, ok))
            if source != self.node_id:
                self._pull_arg(spec.task_id, object_id, source, sizes[object_id])
            elif self.store.is_being_created(object_id):
                # Written here, its seal not seen yet (seals are one-way and
                # may arrive after the task): never pull from ourselves.
                self.seal_waiters.setdefault(object_id, []).append(done)
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

    def _run_later(self) -> None:
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
        waiting[1] -= 1
        waiting[2] = waiting[2] and ok
        waiting[3] = waiting[3] or full_error
        if waiting[1] > 0:
            return
        del self.waiting_args[task_id]
        spec = waiting[0]
        if waiting[2]:
            self._enqueue(spec)
        elif waiting[3]:
            self.sender.send(self.endpoint_of(spec.owner), p.TaskFailed(
                spec.task_id, "ObjectStoreFullError",
                f"no room on node {self.node_id.hex()[:12]} to fetch an argument of "
                f"{spec.function_name}: {waiting[3]}"))
        else:
            self.sender.send(self.endpoint_of(spec.owner), p.TaskFailed(
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
        """Tasks move at most twice, and never actor creations or pinned tasks."""
        return (spec.kind != p.TASK_ACTOR_CREATION and spec.options.get("spilled", 0) < 2
                and spec.options.get("strategy") != "NODE")

    def _assign(self, worker, spec) -> None:
        worker.state = BUSY
        spec = self._pin_stored_args(spec, worker)
        worker.task = spec
        worker.held = _held_resources(spec)
        worker.cancelled = False
        self.resources.acquire(worker.held)
        if not self.send_to(worker.task_identity, p.ExecuteTask(list(spec))):
            self._worker_died(worker, -1)
        elif spec.kind == p.TASK_ACTOR_CREATION \
                and self.pool.live_task_workers() < max(self.num_cpus, 1):
            self.pool.start_worker()    # it stays an actor: keep the task pool warm

    def _pin_stored_args(self, spec, worker):
        """Pin the task's arguments in the store for the worker and tell it
        where they are, which saves it a request per argument."""
        if worker.rpc_identity is None:
            return spec
        args = spec.args
        for i, arg in enumerate(args):
            if arg[0] == p.ARG_STORED and len(arg) == 4:
                try:
                    loc = self.store.pin(arg[1], worker.rpc_identity)
                except ObjectStoreFullError:
                    loc = None      # the worker asks itself (and may read the spill file)
                if loc is not None:
                    args[i] = [*arg, loc[0]]
        return spec

    def _worker_room(self) -> tuple[int, int]:
        """The task-worker cap (workers blocked in get() raise it) and how
        many more task workers it allows; actor workers are not capped."""
        blocked = sum(1 for w in self.pool.workers.values() if w.blocked and not w.hosts_actor())
        cap = max(self.num_cpus, 1) * WORKERS_PER_CPU + blocked
        return cap, cap - self.pool.live_task_workers()

    def _grow(self, wanted: int, for_actors: int = 0) -> None:
        """Start workers for ``wanted`` queued tasks, within the task-worker
        cap except for the ``for_actors`` of them that create actors."""
        starting = self.pool.starting()
        cap, room = self._worker_room()
        need = max(min(wanted - starting, room), for_actors - starting)
        if need <= 0 and room <= 0 and starting == 0:
            # full of idle workers bound to other jobs: retire one
            spec_job = next((q[0].job_id for q in self.queues.values() if q), None)
            other = self.pool.idle_of_other_jobs(spec_job)
            if other is not None:
                self.pool.kill(other)
        for _ in range(max(0, need)):
            self.pool.start_worker()

    def handle_worker_ready(self, req, msg: p.WorkerReady):
        worker = self.pool.workers.get(msg.worker_id)
        if worker is None:
            return
        worker.task_identity = req.identity
        if worker.task is not None:
            self.resources.release(worker.held)
            worker.held = {}
            worker.blocked = False
        self.pool.mark_idle(worker)
        self.dispatch()

    def handle_worker_blocked(self, req, msg: p.WorkerBlocked):
        worker = self.pool.workers.get(msg.worker_id)
        if worker is None or worker.task is None or worker.blocked == msg.blocked:
            return
        worker.blocked = msg.blocked
        if msg.blocked:     # give back the CPU it holds (an actor's may be 0)
            cpu = {k: v for k, v in worker.held.items() if k == "CPU"}
            worker.lent = cpu
            self.resources.release(cpu)
            for k in cpu:
                worker.held.pop(k, None)
            self.dispatch()
        else:
            cpu, worker.lent = worker.lent, {}
            self.resources.acquire(cpu)
            worker.held.update(cpu)

    def handle_worker_owns(self, req, msg: p.WorkerOwns):
        """A worker owns actors (or no longer does): idle, it is kept."""
        worker = self.pool.workers.get(msg.worker_id)
        if worker is not None:
            worker.owns = msg.owns

    def handle_reserve_bundle(self, req, msg: p.ReserveBundle):
        """Set a bundle's resources aside; they become the group's resources."""
        key = (msg.pg_id, msg.index)
        if key in self.bundles:
            return
        self.bundles[key] = dict(msg.resources)
        self.resources.acquire(msg.resources)
        self.resources.add(bundle_resources(msg.pg_id.hex(), msg.index, msg.resources))
        log.info("reserved bundle %d of placement group %s: %s", msg.index,
                 msg.pg_id.hex()[:12], msg.resources)
        self.report()
        self._retry_infeasible()
        self.dispatch()

    def handle_return_bundle(self, req, msg: p.ReturnBundle):
        bundle = self.bundles.pop((msg.pg_id, msg.index), None)
        if bundle is None:
            return
        self.resources.remove(bundle_resources(msg.pg_id.hex(), msg.index, bundle))
        self.resources.release(bundle)
        self.report()
        self.dispatch()

    def _retry_infeasible(self) -> None:
        """Parked tasks may fit now (a node joined, a bundle was reserved)."""
        parked, self.infeasible = self.infeasible, []
        for spec in parked:
            self.handle_submit_task(None, p.SubmitTask(list(spec)))

    def handle_kill_actor_worker(self, req, msg: p.KillActorWorker):
        for worker in self.pool.workers.values():
            if worker.task is not None and worker.task.kind == p.TASK_ACTOR_CREATION \
                    and worker.task.actor_id == msg.actor_id:
                self.pool.kill(worker)

    def handle_cancel_task(self, req, msg: p.CancelTask):
        for queue in [*self.queues.values(), self.infeasible]:
            for spec in queue:
                if spec.task_id == msg.task_id:
                    queue.remove(spec)
                    self.sender.send(self.endpoint_of(spec.owner), p.TaskFailed(
                        spec.task_id, "TaskCancelledError",
                        f"task {spec.function_name} was cancelled before it ran"))
                    return
        for worker in self.pool.workers.values():
            if worker.task is not None and worker.task.task_id == msg.task_id:
                if msg.force:
                    worker.cancelled = True
                    self.pool.kill(worker)
                elif worker.inbox:
                    self.sender.send(worker.inbox, p.CancelRunning(msg.task_id))
                return

    # -------------------------------------------------------------- workers
    def _on_zygote(self) -> None:
        for event in self.pool.read_events():
            if event[0] == "exited":
                worker = self.pool.by_pid.get(event[1])
                if worker is not None:
                    self._worker_died(worker, event[2])
            elif event[0] == "zygote-exited":
                log.error("the zygote exited, so no worker can start on this node any more; "
                          "stopping the raylet (see the zygote's .err log)")
                self.unwatch(self.pool.fd)
                self.stop()

    def _worker_died(self, worker, code: int) -> None:
        spec = worker.task
        self.resources.release(worker.held)
        worker.held = {}
        self.pool.remove(worker)
        self._remove_sockets_of(worker.worker_id)
        client = self.by_worker_id.get(worker.worker_id)
        if client is not None:
            self._client_gone(client, "died")
        if spec is not None and spec.kind == p.TASK_ACTOR_CREATION:
            text = (f"the actor's worker (pid {worker.pid}) died ({_describe_exit(code)})"
                    if code != 0 else "the actor exited")
            log.info("actor %s: %s", spec.actor_id.hex()[:12], text)
            self.gcs.send(p.ReportActorDied(spec.actor_id, text, code == 0))
        elif spec is not None:
            if worker.cancelled:
                error, text = "TaskCancelledError", f"task {spec.function_name} was cancelled"
            else:
                error = "WorkerCrashedError"
                text = (f"the worker (pid {worker.pid}) running {spec.function_name} died "
                        f"({_describe_exit(code)})")
            log.warning(text)
            self.sender.send(self.endpoint_of(spec.owner), p.TaskFailed(spec.task_id, error, text))
        self.dispatch()
        if self.pool.live_task_workers() < self.num_cpus and not any(self.queues.values()):
            self.pool.start_worker()       # keep the pool warm

    # ---------------------------------------------------------------- store
    def _describe_client(self, identity) -> str:
        """Who a store client is, for full-store messages: a local driver or
        worker, an object transfer to another node, or a pull from one."""
        client = self.clients.get(identity)
        if client is None:
            transfer = getattr(self, "transfer", None)
            named = transfer.describe_client(identity) if transfer is not None else None
            if named is not None:
                return named
            if identity is None:
                return "no known client"
            return f"a peer raylet or unknown client {bytes(identity).hex()[:12]}"
        worker = self.pool.workers.get(client.worker_id)
        task = worker.task if worker is not None else None
        doing = f" running {task.function_name}" if task is not None else ""
        return f"{client.kind} pid {client.pid}{doing}"

    def _store_full(self, what: str, err: ObjectStoreFullError) -> None:
        """Log a full store at most every 10 s (callers wait and retry)."""
        now = time.monotonic()
        if now - self._last_full_log > 10.0:
            self._last_full_log = now
            log.info("%s waits for room: %s", what, err)

    def handle_create_object(self, req, msg: p.CreateObject):
        """Room for an object the caller writes then seals. A store full of
        pinned or half-written objects answers CREATE_FULL at once and the
        caller retries with backoff (the raylet never waits on a client)."""
        try:
            offset = self.store.create(msg.object_id, msg.size, owner=msg.owner_id,
                                       writer=req.identity)
        except ObjectStoreFullError as err:
            if not err.never_fits:
                self._store_full(f"creating {msg.object_id.hex()[:16]}", err)
            code = p.CREATE_NEVER_FITS if err.never_fits else p.CREATE_FULL
            self.reply(req, p.CreateObjectReply(code, str(err)))
            return
        except ObjectExistsError:
            self.reply(req, p.CreateObjectReply(p.CREATE_EXISTS, "exists"))
            return
        self.unsealed.setdefault(req.identity, set()).add(msg.object_id)
        self.object_owner[msg.object_id] = msg.owner_id
        self.owned_objects.setdefault(msg.owner_id, set()).add(msg.object_id)
        self.reply(req, p.CreateObjectReply(offset, ""))

    def handle_seal_object(self, req, msg: p.SealObject):
        """One-way: the object is written. Pins that waited for it are answered."""
        writing = self.unsealed.get(req.identity)
        if writing:
            writing.discard(msg.object_id)
        self.seal(msg.object_id)

    def seal(self, object_id: bytes) -> None:
        """An object is complete (written by a client, or pulled): seal it and
        answer the pins that waited for it."""
        try:
            self.store.seal(object_id)
        except KeyError:
            log.warning("seal of unknown object %s dropped", object_id.hex())
        for req, msg in self.pins_waiting_seal.pop(object_id, ()):
            self.handle_pin_objects(req, msg)
        for done in self.seal_waiters.pop(object_id, ()):
            done(self.store.contains(object_id))

    def handle_pin_objects(self, req, msg: p.PinObjects):
        """Pin objects for the caller; a pin of an object still being written
        waits for its seal (seals are one-way, so they can arrive later), and
        one of an object on another node waits until it is pulled here."""
        for object_id, source in zip(msg.object_ids, msg.sources):
            if self.store.is_being_created(object_id):
                self.pins_waiting_seal.setdefault(object_id, []).append((req, msg))
                return
            if source and source != self.node_id and not self.store.contains(object_id):
                self.transfer.pull(object_id, source,
                                   lambda ok: self._pin_after_pull(req, msg, object_id, ok))
                return
        locations, spilled = [], []
        for object_id in msg.object_ids:
            copy = None
            try:
                loc = self.store.pin(object_id, req.identity)
            except ObjectStoreFullError as err:
                # No room to restore it now: the caller reads the spill file.
                self._store_full(f"restoring {object_id.hex()[:16]}", err)
                loc, copy = None, self.store.spilled_copy(object_id)
            locations.append(list(loc) if loc else None)
            spilled.append(list(copy) if copy else None)
        self.reply(req, p.PinObjectsReply(locations, spilled, [""] * len(locations)))

    def _pin_after_pull(self, req, msg, object_id, ok) -> None:
        if ok:
            self.handle_pin_objects(req, msg)
            return
        i = msg.object_ids.index(object_id)
        source = msg.sources[i]
        size = msg.sizes[i] if i < len(msg.sizes) else 0
        size = size if isinstance(size, int) and size > 0 else 0
        if size and self.view.alive(source) and not self.store.has_room(size):
            # No room here now: the caller asks again later (it backs off).
            n = len(msg.object_ids)
            why = (f"no room on node {self.node_id.hex()[:12]} to bring "
                   f"{size / 2**20:.1f} MiB of object {object_id.hex()} from node "
                   f"{source.hex()[:12]}: {self.store.busy_report()}")
            self.reply(req, p.PinObjectsReply([None] * n, [None] * n,
                                              [why if j == i else "" for j in range(n)]))
            return
        # answer without pulling again: the source is gone
        sources = [b"" if oid == object_id else src
                   for oid, src in zip(msg.object_ids, msg.sources)]
        self.handle_pin_objects(req, p.PinObjects(msg.object_ids, sources, msg.sizes))

    def handle_release_objects(self, req, msg: p.ReleaseObjects):
        for object_id in msg.object_ids:
            self.store.release(object_id, req.identity)

    def handle_free_objects(self, req, msg: p.FreeObjects):
        for object_id in msg.object_ids:
            self.store.free(object_id)
            owner = self.object_owner.pop(object_id, None)
            if owner is not None:
                owned = self.owned_objects.get(owner)
                if owned:
                    owned.discard(object_id)

    def _free_owned_by(self, owner_id: bytes) -> None:
        for object_id in self.owned_objects.pop(owner_id, ()):
            self.store.free(object_id)
            self.object_owner.pop(object_id, None)

    def handle_get_store_stats(self, req, msg):
        self.reply(req, p.Ack(self.store.stats()))

    def handle_list_store_objects(self, req, msg: p.ListStoreObjects):
        """What the store holds (``ray memory``), holders named as in
        full-store messages, and this node's clients (to name owners)."""
        records, total = self.store.list_objects(min(msg.limit, 100_000))
        objects = []
        for r in records:
            holders = ([[self._describe_client(r["writer"]), 1]] if r["state"] == "BEING_WRITTEN"
                       else [[self._describe_client(c), n] for c, n in r["pins"].items()])
            objects.append({"object_id": r["object_id"], "size": r["size"],
                            "owner_id": r["owner"] or b"", "state": r["state"],
                            "pinned_by": holders, "primary": r["primary"],
                            "freed": r["freed"]})
        clients = [[c.worker_id, c.pid, c.kind] for c in self.clients.values()]
        self.reply(req, p.StoreObjectsReply(objects, total, clients))

    # ---------------------------------------------------------------- misc
    def handle_log_lines(self, req, msg: p.LogLines):
        self.gcs.send(p.PublishLogs(msg.job_id, msg.pid, self.node_ip, msg.lines))

    def handle_ping(self, req, msg):
        self.reply(req, p.Ack("pong"))

    def _on_events(self, sock) -> None:
        for topic, event in sockets.recv_events(sock, 256):
            if topic == p.TOPIC_RESOURCES:
                view = self.view.nodes.get(event["node_id"])
                grew = view is not None and any(
                    k not in view.total for k in event["total"])
                self.view.on_resources(event)
                if grew and self.infeasible:
                    self._retry_infeasible()
                if any(self.queues.values()):
                    self.dispatch()          # work queued here may fit there now
            elif topic == p.TOPIC_NODE:
                self._on_node_event(event)

    def _on_node_event(self, event: dict) -> None:
        dead = self.view.on_node_event(event)
        if dead is not None:
            self.transfer.node_died(dead)
        elif self.infeasible:           # a new node may fit parked tasks
            self._retry_infeasible()
        self.dispatch()

    def _on_heartbeat_reply(self, sock) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                status = p.decode(frames[1]).status
            except (p.ProtocolError, IndexError, AttributeError):
                continue
            self.gcs_health.answered()
            if status == p.HEARTBEAT_DEAD:
                self._rejoin()
            elif status == p.HEARTBEAT_UNKNOWN:
                self._register_again()

    # -- storage: a GCS that restarted without this node's row ------------------
    #: at most one re-registration per this many seconds (queued beats all say so)
    REGISTER_AGAIN_S = 1.0

    def _register_again(self) -> None:
        """The GCS does not know this node (it restarted without its tables):
        register again under the same id, with the resources it has now; the
        next heartbeat tells what is free. Its workers and objects stay."""
        now = time.monotonic()
        if now - getattr(self, "_registered_again", -self.REGISTER_AGAIN_S) \
                < self.REGISTER_AGAIN_S:
            return
        self._registered_again = now
        log.warning("the GCS at %s does not know node %s (it restarted without its tables); "
                    "registering again", self.gcs_address, self.node_id.hex()[:12])
        try:        # bounded: the GCS has just answered; local work waits meanwhile
            reply = self.gcs.call(p.RegisterNode(
                self.node_id, self.tcp_endpoint, self.transfer.endpoint, self.node_ip,
                socket.gethostname(), os.getpid(), self.resources.total, self.arena.size,
                self.session_dir), timeout=min(2.0, config.connect_timeout_s))
        except TimeoutError as err:     # the next heartbeat reply says so again
            log.error("could not register node %s again: %s", self.node_id.hex()[:12], err)
            return
        self._last_report = None        # report what is free at once
        if reply.pub_address != self.pub_address:
            self._subscribe(reply.pub_address)

    def _catch_up_with_gcs(self) -> None:
        """(timer) After a GCS restart: learn from its tables what its event
        stream said meanwhile (nodes that died or joined), and follow its event
        stream if it moved."""
        count = self.gcs.reconnections()
        if count == self._gcs_reconnections:
            return
        try:        # bounded: the GCS has just come back
            info = self.gcs.call(p.GetClusterInfo(), timeout=min(2.0, config.connect_timeout_s))
        except TimeoutError as err:     # the next check tries again
            log.warning("could not read the cluster from the GCS after it restarted: %s", err)
            return
        self._gcs_reconnections = count
        log.info("the GCS at %s restarted (its connection came back); reading the cluster "
                 "from its tables", self.gcs_address)
        for node in info.value["nodes"]:
            known = self.view.nodes.get(node["node_id"])
            if not node["alive"] and known is not None and known.alive:
                self._on_node_event({"event": "removed", "node": node})
            elif node["alive"] and (known is None or not known.alive):
                self._on_node_event({"event": "added", "node": node})
        pub_address = info.value.get("pub_address")
        if pub_address and pub_address != self.pub_address:
            self._subscribe(pub_address)

    def _subscribe(self, pub_address: str) -> None:
        """Take the GCS events from ``pub_address`` (a GCS that restarted on
        another port); ZeroMQ reconnects a SUB to the same address by itself."""
        log.info("GCS events now at %s (were at %s)", pub_address, self.pub_address)
        if self.events is not None:
            self.unwatch(self.events)
            self.events.close(linger=0)
        self.pub_address = pub_address
        self.events = sockets.subscriber(pub_address, [p.TOPIC_NODE, p.TOPIC_RESOURCES])
        self.watch(self.events, self._on_events)

    def _rejoin(self) -> None:
        """The GCS declared this node dead (it missed heartbeats): its work
        was moved elsewhere. Start over as a new node."""
        old = self.node_id
        self.node_id = os.urandom(16)
        self.view.me = self.node_id
        log.warning("the GCS declared node %s dead; rejoining as node %s", old.hex()[:12],
                    self.node_id.hex()[:12])
        for worker in list(self.pool.workers.values()):
            self.pool.kill(worker)
        try:        # bounded: local drivers wait on this loop meanwhile
            self.gcs.call(p.RegisterNode(
                self.node_id, self.tcp_endpoint, self.transfer.endpoint, self.node_ip,
                socket.gethostname(), os.getpid(), self.resources.total, self.arena.size,
                self.session_dir), timeout=config.connect_timeout_s)
        except TimeoutError as err:     # the next heartbeat reply says so again
            log.error("could not rejoin the cluster as node %s: %s", self.node_id.hex()[:12],
                      err)

    #: how often node_stats samples the machine (psutil), for the dashboard
    STATS_INTERVAL_S = 2.0

    def node_stats(self, now: float) -> dict:
        """This node's usage (Heartbeat.stats), sampled at most every
        STATS_INTERVAL_S; CPU percent is over the time since the last sample."""
        cached = getattr(self, "_stats", None)
        if cached is not None and now - cached[0] < self.STATS_INTERVAL_S:
            return cached[1]
        mem = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(self.session_dir)
            disk_used, disk_total = disk.used, disk.total
        except OSError:
            disk_used = disk_total = 0
        store = self.store.stats()
        stats = {"cpu_percent": psutil.cpu_percent(interval=None),
                 "mem_used": mem.total - mem.available, "mem_total": mem.total,
                 "disk_used": disk_used, "disk_total": disk_total,
                 "store_used": store["used"], "store_spilled": store["spilled_bytes"],
                 "store_capacity": self.arena.size, "num_workers": len(self.pool.workers),
                 "time": time.time()}
        self._stats = (now, stats)
        return stats

    def report(self) -> None:
        """Heartbeat to the GCS: at once when usage changed, else every interval."""
        now = time.monotonic()
        state = (tuple(sorted(self.resources.available.items())), self.store.stats()["used"])
        if self._last_report and state == self._last_report[1] \
                and now - self._last_report[0] < config.heartbeat_interval_s:
            return
        if self._last_report and not self.gcs_health.reachable \
                and now - self._last_report[0] < UNREACHABLE_BEAT_S:
            return      # beats queue while the GCS is away: a few tell when it is back
        self._last_report = (now, state)
        beat = p.Heartbeat(self.node_id, self.resources.available, state[1],
                           self.resources.total, self.node_stats(now))
        if self._heartbeat is not None:
            self._heartbeat.send_multipart([b"hb" + bytes(6), p.encode(beat)])

    def close(self) -> None:
        try:
            self.gcs.call(p.UnregisterNode(self.node_id), timeout=0.5)
        except Exception as err:    # noqa: BLE001 — the GCS times the node out instead
            log.info("could not unregister from the GCS at close: %s", err)
        self.pool.shutdown()
        for worker_id in [*self.pool.workers, *(c.worker_id for c in self.clients.values())]:
            self._remove_sockets_of(worker_id)    # killed workers, dead drivers
        self.store.close()
        self.arena.close()
        self.arena.unlink()
        self.transfer.close()
        for sock in (self.events, self._heartbeat):
            if sock is not None:
                sock.close(linger=0)
        self.sender.close()
        self.gcs.close()
        self.router.close(linger=0)
        self.peer_router.close(linger=0)
        try:
            os.unlink(self.endpoint[len("ipc://"):])
        except OSError:
            pass
        super().close()


# -- lifetimes: what an actor holds while it lives -----------------------------
def _held_resources(spec) -> dict:
    """What a task holds while it runs: its request, except for an actor
    placed with Ray's default (1 CPU to place it, ``held_resources`` after)."""
    held = spec.options.get("held_resources") if spec.kind == p.TASK_ACTOR_CREATION else None
    return dict(spec.resources if held is None else held)


def _hosts_detached_actor(worker) -> bool:
    spec = worker.task
    return bool(spec is not None and spec.kind == p.TASK_ACTOR_CREATION
                and spec.options.get("detached"))



def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"



