"""The raylet process: one ROUTER for the node's drivers and workers.

``Raylet`` is the loop and its handlers; the work is done by its parts, each
owning its state:

* ``LocalTaskManager`` (task_manager.py): queues by resource shape, dispatch
  to idle workers (workers pull: an idle worker says ``WorkerReady``),
  spillback, infeasible and starved work reported to owners;
* ``ClientRegistry`` (client_registry.py): the connected drivers and workers;
* ``StoreService`` (store_service.py): create/seal/pin/release/free and seal
  waiters over the node's object store, used by ``ObjectTransfer`` too;
* ``BundleManager`` (bundle_manager.py): placement-group bundles;
* ``GcsLink`` (gcs_link.py): heartbeats, reports and asynchronous requests to
  the GCS, its event stream, re-registering after a GCS restart;
* ``WorkerPool`` and ``ObjectTransfer`` (worker_pool.py, object_transfer.py).

The loop never waits on the GCS: only ``start()`` (before it runs) and
``close()`` (after it) make synchronous calls.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time

import psutil


from ..broker import protocol as p
from ..broker import sockets
from ..broker.rpc import RpcClient, Sender
from ..broker.service import Service
from ..config import config
from .._private.session import actor_ipc, log_path, raylet_ipc, route, session_name, spill_dir
from ..store import Arena, ObjectStore, arena_path
from ..store.object_table import ObjectExistsError, ObjectStoreFullError
from .store_service import StoreService
from .cluster_view import ClusterView
from .bundle_manager import BundleManager
from .client_registry import Client, ClientRegistry
from .gcs_link import GcsLink
from .stale_arenas import remove_stale_arenas
from .object_transfer import ObjectTransfer
from .resources import ResourceSet
from .task_manager import LocalTaskManager
from .worker_pool import IDLE, WorkerPool, start_zygote

log = logging.getLogger(__name__)

#: interval between heartbeats while the GCS does not answer
UNREACHABLE_BEAT_S = 5.0


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
        arena = Arena.create(arena_path(session_name(session_dir), node_id.hex()),
                             object_store_memory)
        self.store = StoreService(arena, ObjectStore(
            arena, spill_dir(session_dir, node_id.hex()), describe_client=self._describe_client),
            ask_to_let_go=self._ask_to_let_go)
        self.resources = ResourceSet(resources)
        self.num_cpus = int(resources.get("CPU", 0))
        self.clients = ClientRegistry(session_dir)
        self.sender = Sender()
        router, _ = sockets.server_router(self.endpoint)
        self.serve(router)                      # local drivers and workers (IPC)
        self.peer_router, self.tcp_endpoint = sockets.server_router(f"tcp://{node_ip}:0")
        self.serve(self.peer_router)            # the GCS and other raylets (TCP)
        self.watch(self.pool.fd, lambda fd: self._on_zygote())
        self.gcs = RpcClient(sockets.tcp_endpoint(gcs_address), config.rpc_timeout_s, "GCS")
        self.view = ClusterView(node_id)
        self.transfer = ObjectTransfer(self.store, self.view, self._watch_or_not, node_ip)
        self.tasks = LocalTaskManager(
            node_id, self.resources, self.num_cpus, self.pool, self.view, self.store,
            self.transfer, self.sender.send, self.endpoint_of, self.send_to,
            lambda worker: self._worker_died(worker, -1))
        self.bundles = BundleManager(self.resources)
        self._last_report = None
        self.every(0.1, self.report)
        self.every(1.0, self.check_clients)
        self.every(1.0, self.tasks.warn_starved)
        self.every(0.05, self.tasks.run_later)
        self.gcs_link = GcsLink(gcs_address, self._watch_or_not, self.gcs.reconnections,
                                self._registration, self._on_gcs_event, self._rejoin,
                                self._registered_again, self._on_gcs_cluster)
        self.every(0.2, self.gcs_link.check)

    # ---------------------------------------------------------------- start
    def start(self) -> None:
        """Register with the GCS and start the first workers (before ``run()``:
        these synchronous calls hold up nothing else)."""
        reply = self.gcs.call(self._registration(), timeout=config.connect_timeout_s)
        self.gcs_link.subscribe(reply.pub_address)
        self.view.load(self.gcs.call(p.GetNodes()).nodes)
        for _ in range(max(self.num_cpus, 1)):
            self.pool.start_worker()
        log.info("raylet %s serving at %s with %s", self.node_id.hex()[:12], self.endpoint,
                 self.resources.total)

    def _watch_or_not(self, sock, handler) -> None:
        """Watch ``sock`` on the loop (handler None: stop watching it)."""
        if handler is None:
            self.unwatch(sock)
        else:
            self.watch(sock, handler)

    # -------------------------------------------------------------- clients
    def endpoint_of(self, address) -> str:
        """Where to reach the core worker at ``address`` from this node."""
        return route(address, self.node_id, self.session_dir)

    def handle_register_client(self, req, msg: p.RegisterClient):
        self.clients.add(req.identity, msg)
        worker = self.pool.workers.get(msg.worker_id)
        if worker is not None:
            worker.rpc_identity = req.identity
            worker.inbox = msg.inbox
        self.reply(req, p.RegisterClientReply(
            self.node_id, self.store.arena.path, self.store.arena.size, self.gcs_address,
            self.session_dir, self.node_ip, self.gcs_link.pub_address, os.getpid()))

    def handle_disconnect_client(self, req, msg: p.DisconnectClient):
        client = self.clients.of_worker(msg.worker_id)
        if client is not None:
            self._client_gone(client, "disconnected")

    def check_clients(self) -> None:
        """Drivers are not our children: notice their death by pid. Stop
        workers idle for long beyond the node's CPU count."""
        for client in self.clients.dead_drivers():
            self._client_gone(client, "died")
        idle = sorted((w for w in self.pool.workers.values() if w.state == IDLE and not w.owns),
                      key=lambda w: w.idle_since)
        surplus = len(idle) - max(self.num_cpus, 1)
        limit = time.monotonic() - config.idle_worker_timeout_s
        for worker in idle[:max(0, surplus)]:
            if worker.idle_since < limit:
                self.pool.kill(worker)

    def _client_gone(self, client: Client, how: str) -> None:
        if how == "died":
            self.clients.remove_sockets_of(client.worker_id)
        self.clients.remove(client)
        self.store.client_gone(client.identity)     # pins; objects it was writing
        self.store.free_owned_by(client.worker_id)
        self._report_worker_died(client, how)
        if client.kind == "driver":
            log.info("driver pid %d %s: ending job %s", client.pid, how, client.job_id.hex())
            self.tasks.drop_tasks_of(client.worker_id)
            for worker in list(self.pool.workers.values()):
                if worker.job_id == client.job_id and not _hosts_detached_actor(worker):
                    self.pool.kill(worker)
            self.gcs_link.send(p.FinishJob(client.job_id))

    def _report_worker_died(self, client: Client, how: str) -> None:
        """Tell the GCS a worker or driver of this node is gone: it ends the
        actors it owned and tells every node that waits on its objects."""
        what = "driver" if client.kind == "driver" else "worker"
        self.gcs_link.send(p.ReportWorkerDied(
            client.worker_id, self.node_id,
            f"the {what} (pid {client.pid}) on node {self.node_id.hex()[:12]} {how}"))

    # ---------------------------------------------------------------- tasks
    def handle_submit_task(self, req, msg: p.SubmitTask):
        spec = p.task_spec(msg.spec)
        if spec.kind == p.TASK_LEASE:       # task path: only a driver of this node leases
            client = self.clients.of_worker(spec.owner_address.worker_id)
            if client is None or client.kind != "driver" or client.identity != req.identity:
                self._refuse_lease(req, spec)
                return
        if spec.kind == p.TASK_ACTOR_CREATION and self.tasks.has_actor(spec.actor_id):
            # A GCS that restarted may send a creation again: one worker per actor.
            log.info("actor %s is already hosted or queued here: its creation task sent "
                     "again is ignored", spec.actor_id.hex()[:12])
            return
        self.tasks.submit(spec)

    def _refuse_lease(self, req, spec) -> None:
        """(leases) A lease asked for by a client that is not the driver of
        this node the spec names: refused, and the asker (if it registered)
        told so by a LeaseRefused at its own inbox, so it stops waiting."""
        asker = self.clients.get(req.identity)
        why = (f"node {self.node_id.hex()[:12]} leases workers only to the driver of this "
               f"node that asks for itself over its own raylet connection")
        log.warning("a lease asked for by %s: refused (%s)",
                    f"{asker.kind} pid {asker.pid}" if asker else repr(req.identity[:16]), why)
        if asker is not None and asker.inbox:
            self.sender.send(asker.inbox, p.TaskFailed(spec.task_id, p.LEASE_REFUSED, why))

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
        self.tasks.dispatch()

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
            self.tasks.dispatch()
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
        if not self.bundles.reserve(msg.pg_id, msg.index, msg.resources):
            return
        self.report()
        self.tasks.retry_infeasible()
        self.tasks.dispatch()

    def handle_return_bundle(self, req, msg: p.ReturnBundle):
        if not self.bundles.give_back(msg.pg_id, msg.index):
            return
        self.report()
        self.tasks.dispatch()

    def handle_kill_actor_worker(self, req, msg: p.KillActorWorker):
        for worker in self.pool.workers.values():
            if worker.task is not None and worker.task.kind == p.TASK_ACTOR_CREATION \
                    and worker.task.actor_id == msg.actor_id:
                self.pool.kill(worker)

    def handle_cancel_task(self, req, msg: p.CancelTask):
        if self.tasks.cancel_queued(msg.task_id):
            return
        for worker in self.pool.workers.values():
            if worker.task is not None and worker.task.task_id == msg.task_id:
                if worker.task.kind == p.TASK_LEASE and not msg.force:
                    self._end_lease(worker)
                    return
                if msg.force:
                    worker.cancelled = True
                    self.pool.kill(worker)
                elif worker.inbox:
                    self.sender.send(worker.inbox, p.CancelRunning(msg.task_id))
                return

    def _end_lease(self, worker) -> None:
        """(leases) The owner gave up a lease it never saw granted (its
        LeaseGranted was lost): tell the worker, as its owner would, to end
        it; it then says WorkerReady and the lease's resources are free."""
        lease = worker.task
        log.info("lease %s given up by its owner: worker pid %d ends it",
                 lease.task_id.hex()[:12], worker.pid)
        self.sender.send(actor_ipc(self.session_dir, worker.worker_id),
                         p.ReturnLease(lease.task_id))

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
        self.clients.remove_sockets_of(worker.worker_id)
        client = self.clients.of_worker(worker.worker_id)
        if client is not None:
            self._client_gone(client, "died")
        if spec is not None and spec.kind == p.TASK_ACTOR_CREATION:
            text = (f"the actor's worker (pid {worker.pid}) died ({_describe_exit(code)})"
                    if code != 0 else "the actor exited")
            log.info("actor %s: %s", spec.actor_id.hex()[:12], text)
            self.gcs_link.send(p.ReportActorDied(spec.actor_id, text, code == 0))
        elif spec is not None:
            if worker.cancelled:
                error, text = "TaskCancelledError", f"task {spec.function_name} was cancelled"
            else:
                error = "WorkerCrashedError"
                text = (f"the worker (pid {worker.pid}) running {spec.function_name} died "
                        f"({_describe_exit(code)})")
            log.warning(text)
            self.sender.send(self.endpoint_of(spec.owner), p.TaskFailed(spec.task_id, error, text))
        self.tasks.dispatch()
        if self.pool.live_task_workers() < self.num_cpus and not self.tasks.has_work():
            self.pool.start_worker()       # keep the pool warm

    # ---------------------------------------------------------------- store
    def _ask_to_let_go(self, identities) -> None:
        """(objects) The store is full: ask the local clients among these pin
        holders to stop keeping views they no longer read."""
        for identity in identities:
            client = self.clients.get(identity)
            if client is not None and client.inbox:
                self.sender.send(client.inbox, p.ReleaseKeptViews())

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

    def handle_create_object(self, req, msg: p.CreateObject):
        """Room for an object the caller writes then seals. A store full of
        pinned or half-written objects answers CREATE_FULL at once and the
        caller retries with backoff (the raylet never waits on a client)."""
        try:
            offset = self.store.create(msg.object_id, msg.size, msg.owner_id, req.identity)
        except ObjectStoreFullError as err:
            if not err.never_fits:
                self.store.log_full(f"creating {msg.object_id.hex()[:16]}", err)
            code = p.CREATE_NEVER_FITS if err.never_fits else p.CREATE_FULL
            self.reply(req, p.CreateObjectReply(code, str(err)))
            return
        except ObjectExistsError:
            self.reply(req, p.CreateObjectReply(p.CREATE_EXISTS, "exists"))
            return
        self.reply(req, p.CreateObjectReply(offset, ""))

    def handle_seal_object(self, req, msg: p.SealObject):
        """One-way: the object is written. Pins that waited for it are answered."""
        self.store.seal(msg.object_id, writer=req.identity)

    # -- objects (issue 13): blocks a client reserves and fills without asking
    def handle_reserve_objects(self, req, msg: p.ReserveObjects):
        try:
            offsets = self.store.reserve(msg.placeholder_ids, msg.size, req.identity)
        except ObjectStoreFullError as err:
            if not err.never_fits:
                self.store.log_full(f"reserving {msg.size} bytes", err)
            code = p.CREATE_NEVER_FITS if err.never_fits else p.CREATE_FULL
            self.reply(req, p.ReserveObjectsReply([], code, str(err)))
            return
        except ObjectExistsError as err:
            self.reply(req, p.ReserveObjectsReply([], p.CREATE_EXISTS, str(err)))
            return
        self.reply(req, p.ReserveObjectsReply(offsets, 0, ""))

    def handle_seal_reserved(self, req, msg: p.SealReserved):
        """One-way: a reserved block holds a complete object now."""
        self.store.seal_reserved(msg.placeholder_id, msg.object_id, msg.size,
                                 msg.owner_id or None, req.identity)

    def handle_release_reserved(self, req, msg: p.ReleaseReserved):
        self.store.release_reserved(msg.placeholder_ids, req.identity)

    def handle_pin_objects(self, req, msg: p.PinObjects):
        """Pin objects for the caller; a pin of an object still being written
        waits for its seal (seals are one-way, so they can arrive later), and
        one of an object on another node waits until it is pulled here."""
        self._pin_objects(req, msg.object_ids, msg.sources, msg.sizes)

    def _pin_objects(self, req, object_ids, sources, sizes) -> None:
        """Answer ``req`` with PinObjectsReply once every object is sealed
        here or known not to be (``sources``: where to pull each from, b""
        for nowhere)."""
        for object_id, source in zip(object_ids, sources):
            remote = bool(source) and source != self.node_id
            if self.store.is_being_created(object_id, made_here=not remote):
                self.store.when_sealed(object_id, lambda ok: self._pin_objects(
                    req, object_ids, sources, sizes))
                return
            if source and source != self.node_id and not self.store.contains(object_id):
                self.transfer.pull(object_id, source, lambda ok: self._pin_after_pull(
                    req, object_ids, sources, sizes, object_id, ok))
                return
        locations, spilled = self.store.pin_all(object_ids, req.identity)
        self.reply(req, p.PinObjectsReply(locations, spilled, [""] * len(locations)))

    def _pin_after_pull(self, req, object_ids, sources, sizes, object_id, ok) -> None:
        if ok:
            self._pin_objects(req, object_ids, sources, sizes)
            return
        i = object_ids.index(object_id)
        source = sources[i]
        size = sizes[i] if i < len(sizes) else 0
        size = size if isinstance(size, int) and size > 0 else 0
        if size and self.view.alive(source) and not self.store.has_room(size):
            # No room here now: the caller asks again later (it backs off).
            n = len(object_ids)
            why = (f"no room on node {self.node_id.hex()[:12]} to bring "
                   f"{size / 2**20:.1f} MiB of object {object_id.hex()} from node "
                   f"{source.hex()[:12]}: {self.store.busy_report()}")
            self.reply(req, p.PinObjectsReply([None] * n, [None] * n,
                                              [why if j == i else "" for j in range(n)]))
            return
        # answer without pulling again: the source is gone
        sources = [b"" if oid == object_id else src for oid, src in zip(object_ids, sources)]
        self._pin_objects(req, object_ids, sources, sizes)

    def handle_release_objects(self, req, msg: p.ReleaseObjects):
        for object_id in msg.object_ids:
            self.store.release(object_id, req.identity)

    def handle_free_objects(self, req, msg: p.FreeObjects):
        for object_id in msg.object_ids:
            self.store.free(object_id)

    def handle_get_store_stats(self, req, msg):
        self.reply(req, p.StoreStatsReply(self.store.stats()))

    def handle_list_store_objects(self, req, msg: p.ListStoreObjects):
        """What the store holds (``ray memory``), holders named as in
        full-store messages, and this node's clients (to name owners)."""
        records, total = self.store.list_objects(min(msg.limit, 100_000))
        objects = []
        for r in records:
            holders = ([p.PinHolder(self._describe_client(r["writer"]), 1)]
                       if r["state"] == "BEING_WRITTEN" else
                       [p.PinHolder(self._describe_client(c), n) for c, n in r["pins"].items()])
            objects.append(p.StoreObject(r["object_id"], r["size"], r["owner"] or b"",
                                         r["state"], holders, bool(r["primary"]),
                                         bool(r["freed"])))
        clients = [p.StoreClient(c.worker_id, c.pid, c.kind) for c in self.clients.all()]
        self.reply(req, p.StoreObjectsReply(objects, total, clients))

    # ---------------------------------------------------------------- misc
    def handle_log_lines(self, req, msg: p.LogLines):
        self.gcs_link.send(p.PublishLogs(msg.job_id, msg.pid, self.node_ip, msg.lines))

    def handle_ping(self, req, msg):
        self.reply(req, p.Ack())

    def _on_gcs_event(self, topic: bytes, event) -> None:
        if topic == p.TOPIC_RESOURCES:
            view = self.view.nodes.get(event.node_id)
            grew = view is not None and any(
                k not in view.total for k in event.total)
            self.view.on_resources(event)
            if grew and self.tasks.infeasible:
                self.tasks.retry_infeasible()
            if self.tasks.has_work():
                self.tasks.dispatch()          # work queued here may fit there now
        elif topic == p.TOPIC_NODE:
            self._on_node_event(event)

    def _on_node_event(self, event: p.NodeEvent) -> None:
        dead = self.view.on_node_event(event)
        if dead is not None:
            self.transfer.node_died(dead)
        elif self.tasks.infeasible:           # a new node may fit parked tasks
            self.tasks.retry_infeasible()
        self.tasks.dispatch()

    # -- storage: a GCS that restarted, or declared this node dead ----------------
    def _registration(self) -> p.RegisterNode:
        """What registers this node with the GCS (its id changes on a rejoin)."""
        return p.RegisterNode(
            self.node_id, self.tcp_endpoint, self.transfer.endpoint, self.node_ip,
            socket.gethostname(), os.getpid(), self.resources.total, self.store.arena.size,
            self.session_dir)

    def _registered_again(self) -> None:
        """The GCS took this node's registration: report what is free at once."""
        self._last_report = None

    def _on_gcs_cluster(self, nodes: list) -> None:
        """After a GCS restart: learn from its node rows what its event stream
        said meanwhile (nodes that died or joined)."""
        for node in nodes:
            known = self.view.nodes.get(node.node_id)
            if not node.alive and known is not None and known.alive:
                self._on_node_event(p.NodeEvent(p.NODE_REMOVED, node))
            elif node.alive and (known is None or not known.alive):
                self._on_node_event(p.NodeEvent(p.NODE_ADDED, node))

    def _rejoin(self) -> None:
        """The GCS declared this node dead (it missed heartbeats): its work
        was moved elsewhere. Start over as a new node."""
        old = self.node_id
        self.node_id = os.urandom(16)
        self.view.me = self.tasks.node_id = self.node_id
        log.warning("the GCS declared node %s dead; rejoining as node %s", old.hex()[:12],
                    self.node_id.hex()[:12])
        for worker in list(self.pool.workers.values()):
            self.pool.kill(worker)
        self.gcs_link.register()

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
                 "store_capacity": self.store.arena.size, "num_workers": len(self.pool.workers),
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
        if self._last_report and not self.gcs_link.health.reachable \
                and now - self._last_report[0] < UNREACHABLE_BEAT_S:
            return      # beats queue while the GCS is away: a few tell when it is back
        self._last_report = (now, state)
        beat = p.Heartbeat(self.node_id, self.resources.available, state[1],
                           self.resources.total, self.node_stats(now))
        self.gcs_link.beat(beat)

    def close(self) -> None:
        try:
            self.gcs.call(p.UnregisterNode(self.node_id), timeout=0.5)
        except Exception as err:    # noqa: BLE001 — the GCS times the node out instead
            log.info("could not unregister from the GCS at close: %s", err)
        self.pool.shutdown()
        for worker_id in [*self.pool.workers, *(c.worker_id for c in self.clients.all())]:
            self.clients.remove_sockets_of(worker_id)    # killed workers, dead drivers
        self.store.close()
        self.transfer.close()
        self.gcs_link.close()
        self.sender.close()
        self.gcs.close()
        self.router.close(linger=0)
        self.peer_router.close(linger=0)
        try:
            os.unlink(self.endpoint[len("ipc://"):])
        except OSError:
            pass
        super().close()


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



